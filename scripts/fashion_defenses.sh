#!/usr/bin/env bash
# The Fashion-MNIST C2F1 defense table: vanilla, EST, ACT, HM, HM&ICS trained with the same
# budget (same epochs, batch, learning rate and seed; the four defenses the same PGD steps,
# step size and eps per batch), each measured by R@1, robrank's ten raw scores and ERS with its
# bootstrap 95% interval (rob28: eps 77/255, T attacks per attack). Every step resumes.
#
#   scripts/fashion_defenses.sh [--dry-run]
#
# --dry-run prints the commands (one per line) instead of running them.
#
# The budget (robrank's rc2f2 with a p-triplet loss; override through the environment):
#   EPOCHS=8         robrank's maxepoch 16, halved for SPC-2 triplet batches
#   BATCH=128  LR=1e-3 (Adam)
#   EPS=77/255       training budget = the rob28 attack budget
#   STEPS=32  STEP_SIZE=3/255   robrank's advtrain_pgditer / advtrain_alpha (STEPS=8
#                    STEP_SIZE=12/255 travels as far for a quarter of the cost)
#   METRIC=cosine    ERS_T=1000 (attacks per ERS attack; at least 500 for the table)
#   INIT=            a checkpoint every defense (vanilla included) fine-tunes from for EPOCHS
#                    more epochs: the same added budget for each, at a CPU's cost
#   DEFENSES="none est act hm hm-ics"   DATASET=fashion (digits: a seconds-long smoke run)
# Other environment: ADVRANK_DATA (default ../shared/data), RUNS (runs/fashion-defenses),
# RESULTS (results/fashion-defenses), DEVICE (auto), ATTACK_BATCH (256).
# Outputs: RESULTS/DATASET/DEFENSE/{train,evaluate,robustness}.json, robustness/ (the cells),
# RESULTS/table.md (R@1, the ten raw scores, ERS [95% CI]), RESULTS/recipe.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
[[ $# -eq 0 ]] || { echo "fashion_defenses.sh: unexpected argument $1 (only --dry-run)" >&2; exit 2; }

export ADVRANK_DATA=${ADVRANK_DATA:-../shared/data}
RUNS=${RUNS:-runs/fashion-defenses}; RESULTS=${RESULTS:-results/fashion-defenses}
DEVICE=${DEVICE:-auto}; DATASET=${DATASET:-fashion}
EPOCHS=${EPOCHS:-8}; BATCH=${BATCH:-128}; LR=${LR:-1e-3}; EPS=${EPS:-77/255}
STEPS=${STEPS:-32}; STEP_SIZE=${STEP_SIZE:-3/255}; METRIC=${METRIC:-cosine}
DEFENSES=${DEFENSES:-none est act hm hm-ics}; ERS_T=${ERS_T:-1000}; ATTACK_BATCH=${ATTACK_BATCH:-256}
INIT=${INIT:-}
ADVRANK=${ADVRANK:-advrank}

source scripts/defense_runs.sh

if [[ $DRY == 0 ]]; then
  mkdir -p "$RESULTS"
  printf 'DATASET=%s EPOCHS=%s BATCH=%s LR=%s EPS=%s STEPS=%s STEP_SIZE=%s METRIC=%s ERS_T=%s DEFENSES="%s" INIT=%s\n' \
    "$DATASET" "$EPOCHS" "$BATCH" "$LR" "$EPS" "$STEPS" "$STEP_SIZE" "$METRIC" "$ERS_T" \
    "$DEFENSES" "$INIT" > "$RESULTS/recipe.txt"
fi
for defense in $DEFENSES; do
  train_and_score "$DATASET" "$defense" c2f1 rob28 ${INIT:+--init "$INIT"}
done
run python3 scripts/defense_table.py "$RESULTS" "$DATASET" --scores --out "$RESULTS/table.md"
