#!/usr/bin/env bash
# Issue #15's GPU check, one run: the CUDA tests, then the real-size models and a profile of one traced
# GPT-2 step, for a baseline tree and this version, side by side on the same machine. Results in $OUT.
#
#   benchmarks/gpu_check.sh NEW_TREE BASE_TREE [WHEEL_DIR]       # on the GPU machine
#   benchmarks/gpu_check.sh NEW_TREE BASE_TREE "" --cpu-dry-run  # here: tiny models on the CPU, seconds
#
# The device has no `graphviz` Python package: WHEEL_DIR holds its pure-Python wheel, installed to /tmp/site.
# Preparing the trees in the checkout the device tool sends (here /work/main), then `run` with carry [".gpuwork"]:
#   mkdir -p .gpuwork/base .gpuwork/new .gpuwork/whl && echo /.gpuwork/ >> .git/info/exclude
#   git archive BASE_COMMIT | tar -x -C .gpuwork/base
#   (cd NEW_WORKTREE && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C .gpuwork/new
#   python3 -m pip download --no-deps graphviz==0.21 -d .gpuwork/whl
#   OUT=$OUT bash .gpuwork/new/benchmarks/gpu_check.sh .gpuwork/new .gpuwork/base .gpuwork/whl   (on the device, ~4 min)
set -u -o pipefail
NEW=$(realpath "$1"); BASE=$(realpath "$2"); WHL=${3:-}; MODE=${4:-}
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if [ -n "$WHL" ] && ! python3 -c "import graphviz" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHL"/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if [ "$MODE" = "--cpu-dry-run" ]; then DEV=(--device cpu --tiny); REPEATS=2; else DEV=(--device cuda); REPEATS=5; fi
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/log.txt"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__)"; } | tee -a "$OUT/log.txt"

log "CUDA tests (new)"
(cd "$NEW" && PYTHONPATH="$NEW:${PYTHONPATH:-}" timeout 80 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1) | tee "$OUT/tests.txt" | tail -5

for v in base new; do
  src=$BASE; [ $v = new ] && src=$NEW
  log "real-size models ($v)"
  # The benchmark and its models are the new tree's; --src picks the gradtrace measured.
  (cd "$NEW" && PYTHONPATH="$NEW:${PYTHONPATH:-}" timeout 130 python3 benchmarks/bench.py "${DEV[@]}" --real --capture-only \
      --repeats $REPEATS --src "$src" 2>&1) | grep -v USDT | tee "$OUT/bench_$v.txt"
done
for v in base new; do
  src=$BASE; [ $v = new ] && src=$NEW
  log "profile of one traced GPT-2 step ($v)"
  (cd "$NEW" && PYTHONPATH="$NEW:${PYTHONPATH:-}" timeout 50 python3 benchmarks/gpu_profile.py "${DEV[@]}" --src "$src" 2>&1) \
      | grep -v USDT > "$OUT/profile_$v.txt"; head -18 "$OUT/profile_$v.txt"
done
log "done"
