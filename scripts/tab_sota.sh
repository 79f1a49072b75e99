#!/usr/bin/env bash
# The CVPR 2022 state-of-the-art table (Zhou & Patel, "Enhancing Adversarial Robustness for
# Deep Metric Learning", tab-sota): CUB, Cars, SOP x none / EST / ACT / HM / HM&ICS, ResNet-18
# from ImageNet weights, triplet loss, eps 8/255; R@1 and robrank's ERS (rob224 profile) per
# model. Meant for a GPU machine that has the data; every step resumes if interrupted.
#
#   scripts/tab_sota.sh [--dry-run] [DATASET ...]     (datasets: cub cars sop; default all)
#
# --dry-run prints the commands (one per line) instead of running them.
#
# The recipe (robrank's configs_rank.py for rres18 with a p-triplet loss, which the CVPR 2022
# code reuses; override through the environment):
#   EPOCHS=75        robrank's maxepoch 150, halved for SPC-2 triplet batches
#   BATCH=56         robrank's batch for p-losses (28 classes x 2)
#   LR=1e-5          Adam, as robrank (its weight decay 4e-4 and frozen batch-norm are not
#                    advrank options: a known difference)
#   EPS=8/255        training and attack budget (rob224)
#   STEPS=32         PGD steps per training batch (robrank's advtrain_pgditer; 8 is the
#                    cheaper setting robrank's notes allow)
#   STEP_SIZE=1/255  robrank's advtrain_alpha
#   METRIC=cosine    ranking by cosine = ranking by normalised Euclidean (robrank's "N")
#   DEFENSES="none est act hm hm-ics"
#   ERS_T            attacks per ERS attack (default: the whole test set, as robrank)
# Other environment: ADVRANK_DATA (default ../shared/data), RUNS (runs/tab-sota),
# RESULTS (results/tab-sota), DEVICE (auto), ATTACK_BATCH (PGD batch of the ERS attacks, 256).
# Outputs: RESULTS/DATASET/DEFENSE/{train,evaluate,robustness}.json, robustness/ (ERS cells),
# and RESULTS/tab-sota.md (the table), RESULTS/recipe.txt (the settings used).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
DATASETS=("$@"); [[ ${#DATASETS[@]} -eq 0 ]] && DATASETS=(cub cars sop)
for d in "${DATASETS[@]}"; do
  [[ $d =~ ^(cub|cars|sop)$ ]] || { echo "tab_sota.sh: unknown dataset $d (cub cars sop)" >&2; exit 2; }
done

export ADVRANK_DATA=${ADVRANK_DATA:-../shared/data}
RUNS=${RUNS:-runs/tab-sota}; RESULTS=${RESULTS:-results/tab-sota}; DEVICE=${DEVICE:-auto}
EPOCHS=${EPOCHS:-75}; BATCH=${BATCH:-56}; LR=${LR:-1e-5}; EPS=${EPS:-8/255}
STEPS=${STEPS:-32}; STEP_SIZE=${STEP_SIZE:-1/255}; METRIC=${METRIC:-cosine}
DEFENSES=${DEFENSES:-none est act hm hm-ics}; ERS_T=${ERS_T:-}; ATTACK_BATCH=${ATTACK_BATCH:-256}
ADVRANK=${ADVRANK:-advrank}

source scripts/defense_runs.sh

if [[ $DRY == 0 ]]; then
  mkdir -p "$RESULTS"
  printf 'EPOCHS=%s BATCH=%s LR=%s EPS=%s STEPS=%s STEP_SIZE=%s METRIC=%s ERS_T=%s DEFENSES="%s"\n' \
    "$EPOCHS" "$BATCH" "$LR" "$EPS" "$STEPS" "$STEP_SIZE" "$METRIC" "${ERS_T:-all}" \
    "$DEFENSES" > "$RESULTS/recipe.txt"
fi
for data in "${DATASETS[@]}"; do
  for defense in $DEFENSES; do
    train_and_score "$data" "$defense" resnet18 rob224 --pretrained
  done
done
run python3 scripts/defense_table.py "$RESULTS" "${DATASETS[@]}" --out "$RESULTS/tab-sota.md"
