#!/usr/bin/env bash
# Run ON THE DEVICE (the `device` tool, from the repository root, with `.gpu` carried; see
# prepare.sh): the CUDA tests, the scan benchmark and the decode throughput table, into $OUT.
set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site && cp -r .gpu/src/mamba_ssm /tmp/site/
# mamba-ssm's own __init__ imports its Mamba-1 CUDA extension; the SSD chunk scan needs none.
echo '__version__ = "2.3.2.post1"' > /tmp/site/mamba_ssm/__init__.py
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log" | tail -25
timeout 90 python3 tests/gpu/scan_bench.py "$OUT/scan_bench.json" 2>&1 | tail -12
python3 tests/gpu/make_model.py /tmp/smol .gpu/tokenizer 2>&1 | tail -2
timeout 240 python3 -m harness.cli bench runtime --model /tmp/smol --device cuda --dtype bf16 \
    --batch 1,16 --new-tokens 128 --repeats 5 --json "$OUT/bench_runtime_cuda.json" 2>&1 | tail -8
timeout 200 python3 -m harness.cli bench throughput --model /tmp/smol --device cuda --dtype bf16 \
    --with-hybrids --contexts 2048,8192,16384 --batch 1,16 --new-tokens 32 --repeats 5 \
    --json "$OUT/throughput_cuda.json" --md "$OUT/throughput_cuda.md" 2>&1 | grep -v "it/s\]$" | tail -25
