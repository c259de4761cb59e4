#!/usr/bin/env bash
# Everything issue 13 asks of a GPU, in one go (under 8 minutes on an H100): the CUDA tests, the offline
# comparison with CTranslate2 at batch 32 (beam 4 and greedy, float16), the batch-1 step against its
# memory-bandwidth floor (eager and compiled: CUDA graphs), and the serving sweep. The compiled step is
# timed at batch 1 only: compiling a graph per row bucket for a whole offline run takes longer than a
# lease (model/compiled_step.py). Results land in
# benchmarks/results (named after the GPU) and, when $OUT is set (the device tool), are copied there.
#
#   benchmarks/gpu.sh              on a GPU machine
#   benchmarks/gpu.sh --dry-run    the same steps on this machine's CPU, tiny and short: checks the script
#
# It runs the same code as on the CPU, the device switched by what torch finds. Python packages the GPU
# image lacks are installed from .gpu-wheels/ when that folder is there (built beside a checkout with
# `pip download -d .gpu-wheels --python-version 3.12 --only-binary=:all: ...`, carried with the call); a
# step whose dependencies are missing (CTranslate2 needs CUDA 12's cuBLAS) is recorded as failed and the
# script goes on. Each step has a time limit, so the whole fits the lease.
set -u
cd "$(dirname "$0")/.."
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
PY=${PYTHON:-python3}
results=benchmarks/results
[ "$dry_run" = 1 ] && results=$(mktemp -d /tmp/mtserve-gpu-dry-run.XXXX)  # a check's numbers are no results
log=$results/gpu-run.log
mkdir -p "$results"
: > "$log"
say() { echo "== $*" | tee -a "$log"; }
step() {  # step SECONDS NAME COMMAND...: run with a time limit, log it, never stop the script
    local seconds=$1 name=$2
    shift 2
    say "$name: $*"
    local started=$SECONDS
    timeout "$seconds" "$@" 2>&1 | tail -n 60 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    say "$name: exit $rc after $((SECONDS - started)) s"
}

say "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; } 2>&1 | tee -a "$log"
if [ -d .gpu-wheels ]; then
    step 120 "install" $PY -m pip install -q --no-index --find-links .gpu-wheels --no-deps -e . \
        $(ls .gpu-wheels | sed -n 's/^\([A-Za-z0-9_.]*\)-[0-9].*/\1/p' | sort -u)
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD

if [ "$dry_run" = 1 ]; then
    sizes=(--shape tiny --sentences 48 --repeats 1)
    serving=(--requests 32 --sentences 48 --concurrency 1 16)
else
    sizes=(--sentences 500 --repeats 2)
    serving=(--requests 256 --concurrency 1 4 16 64 256)
fi

step 180 "CUDA tests" $PY -m pytest -q -p no:cacheprovider tests/model/test_devices.py tests/model/test_compiled_step.py
step 240 "offline, beam 4 and greedy, batch 32" $PY -m benchmarks.offline --models base default --beams 4 1 \
    --batch-size 32 --early-stopping --engines mtserve ctranslate2 "${sizes[@]}" --out "$results"
step 120 "batch-1 step vs its bandwidth floor" $PY -m benchmarks.step --models base default --compiled --steps 100 \
    --out "$results"
step 150 "serving sweep, greedy, against the CTranslate2 peer" $PY -m benchmarks.serving --ct2-peer \
    --max-length 64 "${serving[@]}" --out "$results"

if [ -n "${OUT:-}" ]; then  # the device tool brings back what is under $OUT (8 files at most)
    cp "$log" "$results"/*-offline-early-stopping.md "$results"/*-step.md \
        "$results"/*-serving-ct2-peer-greedy.md "$OUT"/ 2>/dev/null
fi
say "done in $SECONDS s; results in $results"
