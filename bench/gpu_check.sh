#!/usr/bin/env bash
# The GPU measurement of issue 12 (item 3) as ONE script for a lent GPU machine, under 10 minutes:
#   1. the test suite's CUDA-capable tests (every runner test parametrized over cpu/cuda),
#   2. bench_tag on the GPU (every shipped model, decode included, ratios vs musicnn-msd),
#   3. bench_arch at 1, 64, 512, 4096 streams on the GPU,
#   4. bench_latency --search on the GPU for every shipped model.
# Usage (from the repository root, in an environment with a CUDA build of torch and streamtag installed,
# e.g. `pip install torch` then `pip install -e .[test]` or the wheel):
#   bash bench/gpu_check.sh            # writes the logs under ${OUT:-gpu-check}/ and prints a summary
# Each step has its own time limit so that one slow step cannot eat the others' time; a step that fails is
# reported and the next one still runs. Record the figures in docs/performance.md with the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
"$PY" - <<'PY' | tee "$OUT/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch: install a CUDA build of torch"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu_check: no usable GPU; nothing measured"; exit 2; }

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "gpu_check: $name rc=$rc in $((SECONDS - start)) s (log $OUT/$name.log)"
  tail -n 12 "$OUT/$name.log"
}

step tests 120 "$PY" -m pytest -q -m "" -k cuda tests/test_runner.py
step bench_tag 100 "$PY" bench/bench_tag.py --files 4 --device cuda
step bench_arch 120 "$PY" bench/bench_arch.py --device cuda --streams 1 64 512 4096 --repeats 5
step bench_latency 240 "$PY" bench/bench_latency.py --search --models all --device cuda --seconds 5 --budget 30 --runs 3
