#!/usr/bin/env bash
# The follow-up suite (robrank, T-PAMI 2024): ERS of vanilla / EST / ACT models, ACT training,
# and the ECCV paper's loss/metric study (§4). Every step resumes if interrupted.
#
#   scripts/robrank.sh STEP [STEP ...]
#   steps: study-vanilla study-est study-grid study-table act-fashion act-mnist
#          ers:NAME (ERS of RUNS/NAME.pt; rob28) ers-table
#   study-vanilla:N, study-est:N and study-grid:N do one study model N (ct et cc ec; a
#   study-grid name may end in -est), e.g. to run several at once on separate cores
#
# Environment (all optional): ADVRANK_DATA (default ../shared/data), RUNS (default runs/),
# RESULTS (default results/), DEVICE (auto), ERS_T (attacks per ERS attack, default 1000),
# STUDY_T (attacks per study cell, default 500), STUDY_EPOCHS (vanilla epochs, default 3),
# STUDY_EST_EPOCHS (EST fine-tuning epochs, default 1), STUDY_EST_STEPS (default 5) and
# STUDY_EST_STEP_SIZE (default 0.06: 5 steps travel eps = 0.3),
# ACT_EPOCHS (default 2), ACT_INIT (checkpoint to fine-tune, default RUNS/DATASET-c2f1.pt),
# ACT_STEPS (PGD steps per ACT batch, default 8), ACT_STEP_SIZE
# (default 12/255: 8 steps travel 96/255, as robrank's 32 steps of 3/255 do), BATCH (256).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVRANK_DATA=${ADVRANK_DATA:-../shared/data}
RUNS=${RUNS:-runs}; RESULTS=${RESULTS:-results}; DEVICE=${DEVICE:-auto}
ERS_T=${ERS_T:-1000}; STUDY_T=${STUDY_T:-500}; BATCH=${BATCH:-256}
STUDY_EPOCHS=${STUDY_EPOCHS:-3}; STUDY_EST_EPOCHS=${STUDY_EST_EPOCHS:-1}
STUDY_EST_STEPS=${STUDY_EST_STEPS:-5}; STUDY_EST_STEP_SIZE=${STUDY_EST_STEP_SIZE:-0.06}
ACT_EPOCHS=${ACT_EPOCHS:-2}; ACT_STEPS=${ACT_STEPS:-8}; ACT_STEP_SIZE=${ACT_STEP_SIZE:-12/255}
mkdir -p "$RUNS" "$RESULTS"

# The four (metric, loss) models of the study: name metric loss. "siamese" is the contrastive
# loss of the paper's released code (margins 0.2 cosine / 1.0 Euclidean).
STUDY=("ct cosine triplet" "et euclidean triplet" "cc cosine siamese" "ec euclidean siamese")

train() {  # out-folder checkpoint [train args]
  local dir=$1 ckpt=$2; shift 2
  mkdir -p "$dir"
  advrank train --device "$DEVICE" --out "$ckpt" --json --quiet "$@" > "$dir/train.json"
  advrank evaluate --checkpoint "$ckpt" --device "$DEVICE" --nmi --ks 1,2,4,8 --json \
    > "$dir/evaluate.json"
}

ckpt() {  # study name -> checkpoint (the cosine/triplet model is the shared vanilla one)
  if [[ $1 == ct ]]; then echo "$RUNS/mnist-c2f1.pt"; else echo "$RUNS/mnist-c2f1-$1.pt"; fi
}

study_specs() {  # the STUDY entries, or only the one named $1
  for spec in "${STUDY[@]}"; do
    [[ -z ${1:-} || $spec == "$1 "* ]] && echo "$spec"
  done
}

study_vanilla() {  # the cosine/triplet model is reproduce.sh's MNIST C2F1 (not retrained)
  while read -r name metric loss; do
    [[ $name == ct ]] && continue
    train "$RESULTS/loss-metric-mnist/$name" "$(ckpt "$name")" --dataset mnist \
      --arch c2f1 --metric "$metric" --loss "$loss" --epochs "$STUDY_EPOCHS" --seed 0
  done < <(study_specs "${1:-}")
}

study_est() {
  while read -r name _ _; do
    train "$RESULTS/loss-metric-mnist/$name-est" "$RUNS/mnist-c2f1-$name-est.pt" \
      --dataset mnist --init "$(ckpt "$name")" --defense est --defense-eps 0.3 \
      --defense-steps "$STUDY_EST_STEPS" --defense-step-size "$STUDY_EST_STEP_SIZE" \
      --epochs "$STUDY_EST_EPOCHS" --seed 0
  done < <(study_specs "${1:-}")
}

study_grid() {  # all eight models, or the one named $1 (e.g. cc or cc-est)
  local models=()
  if [[ -n ${1:-} ]]; then models=("$1"); else
    while read -r name _ _; do models+=("$name" "$name-est"); done < <(study_specs)
  fi
  for model in "${models[@]}"; do
    local path="$RUNS/mnist-c2f1-$model.pt"; [[ $model == ct ]] && path=$(ckpt ct)
    advrank grid --checkpoint "$path" --out "$RESULTS/loss-metric-mnist/$model" \
      --num-attacks "$STUDY_T" --ks 1 --eps 0.1,0.3 --batch-size "$BATCH" \
      --device "$DEVICE" --paper none --quiet > /dev/null
  done
}

act() {  # dataset; ACT_INIT overrides the checkpoint it fine-tunes (default: the vanilla one)
  train "$RESULTS/ers-$1/act" "$RUNS/$1-c2f1-act.pt" --dataset "$1" \
    --init "${ACT_INIT:-$RUNS/$1-c2f1.pt}" --defense act --defense-eps 77/255 \
    --defense-steps "$ACT_STEPS" --defense-step-size "$ACT_STEP_SIZE" \
    --epochs "$ACT_EPOCHS" --seed 0
}

ers() {  # checkpoint-name
  local dataset=${1%%-*}
  mkdir -p "$RESULTS/ers-$dataset"
  advrank evaluate --checkpoint "$RUNS/$1.pt" --device "$DEVICE" --nmi --ks 1,2,4,8 --json \
    > "$RESULTS/ers-$dataset/$1.evaluate.json"
  advrank robustness --checkpoint "$RUNS/$1.pt" --profile rob28 --out "$RESULTS/ers-$dataset/$1" \
    --num-attacks "$ERS_T" --batch-size "$BATCH" --device "$DEVICE" --json --quiet \
    > "$RESULTS/ers-$dataset/$1.json"
}

for step in "$@"; do
  case $step in
    study-vanilla) study_vanilla ;;
    study-vanilla:*) study_vanilla "${step#*:}" ;;
    study-est) study_est ;;
    study-est:*) study_est "${step#*:}" ;;
    study-grid) study_grid ;;
    study-grid:*) study_grid "${step#*:}" ;;
    study-table) python scripts/robrank_tables.py study "$RESULTS" ;;
    act-fashion) act fashion ;;
    act-mnist) act mnist ;;
    ers:*) ers "${step#ers:}" ;;
    ers-table) python scripts/robrank_tables.py ers "$RESULTS" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
