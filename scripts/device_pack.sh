#!/usr/bin/env bash
# Pack what scripts/device_run.sh needs on a bare, offline GPU machine into .whl/ and .gpu/
# (both ignored by git; name them in the device tool's `carry`). The working tree that travels
# is limited (64 MiB here), so pack one dataset at a time.
#
#   scripts/device_pack.sh DATASET [CHECKPOINT ...]     DATASET: MNIST or FashionMNIST
#
# Raw files come from $ADVRANK_DATA (default ../shared/data) and travel gzipped; checkpoints
# travel as weights-only copies (advrank export); .gpu/git is a copy of .git so that results
# record their commit.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1; shift
data=${ADVRANK_DATA:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .gpu && mkdir -p ".gpu/$dataset" .gpu/runs .whl
for f in "$data/$dataset/raw/"*-ubyte; do gzip -c "$f" > ".gpu/$dataset/$(basename "$f").gz"; done
for ckpt in "$@"; do advrank export --checkpoint "$ckpt" --out ".gpu/runs/$(basename "$ckpt")"; done
cp -r .git .gpu/git
ls .whl/pytorch_metric_learning-*.whl > /dev/null 2>&1 || python3 -m pip download -q --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "pytorch-metric-learning==2.9.0"
du -sh .gpu .whl
