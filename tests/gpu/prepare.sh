#!/usr/bin/env bash
# Run HERE (with network to the package registries) before a device check: fills .gpu/ (git
# ignores it; carry it with the `device` tool, `carry: [".gpu"]`, well under 64 MiB) with what the
# device lacks: mamba-ssm's Python/Triton source (its CUDA extension needs a long build and the
# SSD chunk scan does not use it) and the embedded teacher's tokenizer files.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/src .gpu/tokenizer
"$PY" -m pip download -q --no-deps --no-binary :all: mamba-ssm==2.3.2.post1 -d .gpu/sdist
tar -xzf .gpu/sdist/mamba_ssm-*.tar.gz -C .gpu/sdist
cp -r .gpu/sdist/mamba_ssm-*/mamba_ssm .gpu/src/ && rm -rf .gpu/sdist
# The teacher's tokenizer, converted once into the cache by any command that loads it.
"$PY" -c "from harness.models import resolve_model_folder as r; print(r('smollm2-135m-instruct'))" \
    > .gpu/teacher_folder
cp "$(cat .gpu/teacher_folder)"/tokenizer* "$(cat .gpu/teacher_folder)"/special_tokens* \
    .gpu/tokenizer/ 2>/dev/null || true
du -sh .gpu
