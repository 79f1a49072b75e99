# Sourced by tab_sota.sh and fashion_defenses.sh: a defense table's steps, printable.
#   run CMD... [">" FILE]   runs CMD (stdout to FILE), or prints its line when DRY=1
#   train_and_score DATASET DEFENSE ARCH PROFILE [extra train args]
#     trains RUNS/DATASET-ARCH-DEFENSE.pt and writes RESULTS/DATASET/DEFENSE/{train,evaluate,
#     robustness}.json (and robustness/, the ERS cells); every step resumes when rerun.
# Reads: DRY, RUNS, RESULTS, DEVICE, EPOCHS, BATCH, LR, EPS, STEPS, STEP_SIZE, METRIC, ERS_T,
# ATTACK_BATCH, ADVRANK.

run() {
  local out=""
  if [[ $# -ge 2 && ${*: -2:1} == ">" ]]; then out=${*: -1}; set -- "${@:1:$#-2}"; fi
  if [[ $DRY == 1 ]]; then echo "$*${out:+ > $out}"; return; fi
  if [[ -n $out ]]; then "$@" > "$out"; else "$@"; fi
}

train_and_score() {
  local data=$1 defense=$2 arch=$3 profile=$4; shift 4
  local dir=$RESULTS/$data/$defense ckpt=$RUNS/$data-$arch-$defense.pt defense_args=()
  [[ $defense != none ]] && defense_args=(--defense "$defense" --defense-eps "$EPS"
                                          --defense-steps "$STEPS" --defense-step-size "$STEP_SIZE")
  [[ $DRY == 1 ]] || mkdir -p "$dir" "$RUNS"
  run $ADVRANK train --dataset "$data" --arch "$arch" "$@" --loss triplet --metric "$METRIC" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" "${defense_args[@]}" --out "$ckpt" \
    --device "$DEVICE" --seed 0 --json --quiet ">" "$dir/train.json"
  run $ADVRANK evaluate --checkpoint "$ckpt" --ks 1,2,4,8 --device "$DEVICE" --json --quiet \
    ">" "$dir/evaluate.json"
  run $ADVRANK robustness --checkpoint "$ckpt" --profile "$profile" --out "$dir/robustness" \
    ${ERS_T:+--num-attacks "$ERS_T"} --batch-size "$ATTACK_BATCH" --device "$DEVICE" \
    --seed 0 --json --quiet ">" "$dir/robustness.json"
}
