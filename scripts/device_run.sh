#!/usr/bin/env bash
# Run reproduce.sh steps on a lent GPU machine that has torch but no network and no advrank.
#
#   scripts/device_run.sh SECONDS STEP [STEP ...]
#
# Issue 13 (scale), from this machine: scripts/device_pack.sh MNIST runs/mnist-c2f1.pt, then
# with the device tool (carry .gpu and .whl), one call each (each under 10 minutes):
#   DEVICE=cuda scripts/device_run.sh 570 scale
#   DEVICE=cuda scripts/device_run.sh 570 scale-10M scale-compile
#   DEVICE=cuda T=10000 BATCH=2000 scripts/device_run.sh 570 precision:mnist-c2f1 cuda-tests
# (scale-gpus where several GPUs are lent). The benchmarks need no data: only the
# precision step reads MNIST and the checkpoint.
#
# The step cuda-tests runs tests/experiments/test_cuda.py. Expects, in the repo copy
# (scripts/device_pack.sh makes them): .whl/ (pytorch-metric-learning wheel),
# .gpu/<dataset>/*.gz (raw MNIST / Fashion-MNIST files, gzipped to travel), .gpu/runs/*.pt
# (checkpoints to start from) and optionally .gpu/git (a copy of .git).
# Each step gets what is left of SECONDS (steps resume, so a cut-off step loses little); the
# results and logs end up in $OUT/results.tgz, the new checkpoints (without optimiser state)
# in $OUT/*.pt.
set -uo pipefail
cd "$(dirname "$0")/.."
budget=$1; shift
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -c "import sys; from advrank.cli import main; sys.exit(main())" "$@"\n' \
  > /tmp/bin/advrank
chmod +x /tmp/bin/advrank
export PATH=/tmp/bin:$PATH ADVRANK_DATA=/tmp/data RUNS=/tmp/runs RESULTS=/tmp/results DEVICE=${DEVICE:-cuda}
for dir in .gpu/*/; do
  name=$(basename "$dir")
  [[ $name == runs || $name == git ]] && continue
  target=/tmp/data/$name/raw; mkdir -p "$target"
  for f in "$dir"*.gz; do gunzip -c "$f" > "$target/$(basename "$f" .gz)"; done
done
mkdir -p "$RUNS" "$RESULTS"
# .git cannot travel; a copy in .gpu/git lets results record the commit they came from
[[ -d .gpu/git ]] && export GIT_DIR=$PWD/.gpu/git GIT_WORK_TREE=$PWD
cp .gpu/runs/*.pt "$RUNS/" 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$RESULTS/gpu.txt"
git rev-parse HEAD >> "$RESULTS/gpu.txt" 2>&1
before=$(ls "$RUNS")

for step in "$@"; do
  left=$((budget - ($(date +%s) - start)))
  if ((left < 10)); then echo "== skip $step (time is up)"; continue; fi
  echo "== $step (up to ${left}s)"
  t0=$(date +%s)
  if [[ $step == cuda-tests ]]; then  # the GPU-only tests (skipped in CI)
    timeout "$left" python3 -m pytest -q -p no:cacheprovider tests/experiments/test_cuda.py \
      2>&1 | tail -n 20
  else
    timeout "$left" scripts/reproduce.sh "$step" 2>&1 | tail -n 20
  fi
  echo "== $step: rc ${PIPESTATUS[0]}, $(($(date +%s) - t0))s"
done

for ckpt in "$RUNS"/*.pt; do  # new checkpoints come back without optimiser state
  grep -qx "$(basename "$ckpt")" <<< "$before" || advrank export --checkpoint "$ckpt" \
    --out "$OUT/$(basename "$ckpt")"
done
tar czf "$OUT/results.tgz" -C "$RESULTS" .
ls -la "$OUT"
