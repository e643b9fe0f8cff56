#!/usr/bin/env bash
# The device check, in one call: the GPU path proven on an H200. Run ON THE DEVICE from
# the repository root with `.gpu` carried (see prepare.sh):  bash tests/gpu/run.sh
# Rehearse HERE on CPU with tiny shapes, same steps:          bash tests/gpu/run.sh --dry
# Writes into $OUT (at most 8 files): run.log (every step's rc and seconds), pytest_cuda.log,
# bench_runtime.json, paper_shapes.json, throughput.{json,md}, smoke_runs.tgz (the gpu-smoke
# run folder, its torchrun re-run, gate outputs). Each step gets at most its own limit and what
# is left of BUDGET_S, highest value first, so a slow step never starves the ones after it.
# The limits come from the H200 runs in results/gpu/check-2026-12-04: every step together
# needs more than one 10-minute call (CUDA-graph and Triton compiles dominate), so split the
# work over calls with ONLY="test_cuda bench_runtime" and so on.
set -u
export PYTHONUNBUFFERED=1
DRY=0; [ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-540}
START=$(date +%s)
LOG="$OUT/run.log"; : > "$LOG"
PY=python3
if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    DEVICE=cpu; DTYPE=fp32; PROFILE=smoke; MODEL=tiny-random; CONTEXTS=128,256; BATCH=1,2
    export RAD_CACHE_DIR=${RAD_CACHE_DIR:-$PWD/.cache}
    export RAD_DATA_DIR=${RAD_DATA_DIR:-$PWD/../shared/data}
else
    DEVICE=cuda; DTYPE=bf16; PROFILE=gpu-smoke; MODEL=/tmp/smol; CONTEXTS=2048,8192,16384
    BATCH=1,16
    # Dependencies the image lacks, as wheels; mamba-ssm as source (its __init__ imports the
    # Mamba-1 CUDA extension, which the SSD chunk scan does not need).
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .gpu/whl/*.whl 2>&1 | tail -3
    cp -r .gpu/src/mamba_ssm /tmp/site/
    echo '__version__ = "2.3.2.post1"' > /tmp/site/mamba_ssm/__init__.py
    export PYTHONPATH=/tmp/site:$PWD
    export RAD_CACHE_DIR=/tmp/radcache RAD_DATA_DIR=$PWD/.gpu/data HF_HUB_OFFLINE=1
    mkdir -p $RAD_CACHE_DIR/teachers/smollm2-135m-instruct
    cp .gpu/tokenizer/* $RAD_CACHE_DIR/teachers/smollm2-135m-instruct/
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, what is left), record rc and seconds.
# ONLY="name ..." runs just those steps (a rerun after a partial device run).
step() {
    local name=$1 limit=$2; shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then echo "STEP $name: skipped (budget spent)" | tee -a "$LOG"; return; fi
    local t0=$(date +%s)
    echo "=== $name (limit ${limit}s)" >> "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "STEP $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}
RAD="$PY -m harness.cli"

# 1. correctness on the device (compiled vs eager, the kernel scan, distillation CUDA vs CPU)
step test_cuda 300 bash -c "$PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    2>&1 | tee '$OUT/pytest_cuda.log' | tail -30"
# 2. decode speed of the SmolLM2-shaped model: eager, compiled (CUDA graphs), HF
if [ "$DRY" = 0 ]; then $PY tests/gpu/make_model.py /tmp/smol .gpu/tokenizer >> "$LOG" 2>&1; fi
step bench_runtime 150 $RAD bench runtime --model $MODEL --device $DEVICE --dtype $DTYPE \
    --batch $BATCH --new-tokens 64 --repeats 3 --json "$OUT/bench_runtime.json"
# 3. the paper profile's shapes: memory and step time against the dry run's estimate
step paper_shapes 240 $PY tests/gpu/paper_shapes.py "$OUT/paper_shapes.json" \
    $([ "$DRY" = 1 ] && echo --dry)
# 4. the smoke profile end to end, gated against itself; under torchrun (NCCL / gloo), gated
#    against the one-process run (determinism and the distributed path)
#    (eager decoding: a graph per model and shape would take the budget; test_cuda and
#    bench_runtime check the compiled step)
rm -rf /tmp/smoke1 /tmp/smoke2
export RAD_COMPILE=off
step smoke 150 $RAD reproduce --profile $PROFILE --out /tmp/smoke1 --allow-code-execution
step gate_self 20 $RAD gate --baseline /tmp/smoke1/results.json --current /tmp/smoke1/results.json
step smoke_torchrun 150 $PY -m torch.distributed.run --nproc-per-node 1 -m harness.cli \
    reproduce --profile $PROFILE --out /tmp/smoke2 --allow-code-execution
step gate_torchrun 20 $RAD gate --baseline /tmp/smoke1/results.json \
    --current /tmp/smoke2/results.json
step compare_torchrun 20 $PY -c "
import json, sys
timing = ('tok_s', 'wall_s', 'speedup')  # measured times differ run to run; the rest may not
def facts(c):
    return (c['layers'], c.get('items'), {k: v for k, v in c['metrics'].items()
                                          if not any(t in k for t in timing)})
a, b = ({(c['method'], c['seed']): facts(c)
         for c in json.load(open(f'/tmp/smoke{i}/results.json'))['cells']} for i in (1, 2))
diff = sorted(k for k in a if a[k] != b.get(k))
print(len(a), 'cells; torchrun cells that differ from one process:', diff or 'none')
sys.exit(1 if diff or a.keys() != b.keys() else 0)"
unset RAD_COMPILE
tar -czf "$OUT/smoke_runs.tgz" --exclude=steps -C /tmp smoke1 smoke2 2>/dev/null
# 5. prefill/decode throughput of the teacher beside its 50% hybrid and full SSM
step throughput 120 $RAD bench throughput --model $MODEL --device $DEVICE --dtype $DTYPE \
    --with-hybrids --contexts $CONTEXTS --batch $BATCH --new-tokens 32 --repeats 3 \
    --json "$OUT/throughput.json" --md "$OUT/throughput.md"
echo "total $(( $(date +%s) - START ))s" | tee -a "$LOG"
grep "^STEP" "$LOG"
