#!/usr/bin/env bash
# Reproduce the paper's tables with advrank's own commands; every step resumes if interrupted.
#
#   scripts/reproduce.sh STEP [STEP ...]
#   steps: mnist fashion mnist-defense fashion-defense curves curves-fashion transfer-models transfer
#          text-fashion (a clip-tiny dual encoder, text-query CA+/CA- beside picture queries)
#          transfer-no-resnet universal universal-own xi-means xi-means-fashion madry-digits bench
#          grid:NAME (the grid of RUNS/NAME.pt) qa:NAME (its QA columns, default options)
#          scale scale-10M scale-compile scale-gpus (issue 13's benchmarks) precision:NAME (Table 1
#          at eps 0.3 in fp32 and in bf16 for RUNS/NAME.pt, compared cell by cell)
#
# Environment (all optional): ADVRANK_DATA (data root, default ../shared/data), T (attacks per
# grid cell, default 1000), KS (w/m columns, default 1,2,5,10), DEVICE (auto), RUNS (checkpoints, default runs/), RESULTS (results/),
# DEF_EPOCHS (defense fine-tuning epochs, default 6), DEF_STEPS (PGD steps per defended batch,
# default empty = the paper's eta, 30 at eps 0.3; 10 is the cheaper CPU setting), TRANSFER_T (attacks per transfer cell,
# default 500), CURVE_T (attacks per curve point, default 100), BATCH (attacks per PGD batch,
# default 256; larger is faster on a GPU and gives the same numbers), EPS (eps rows of a qa:NAME
# step, default: the paper's).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVRANK_DATA=${ADVRANK_DATA:-../shared/data}
T=${T:-1000}; DEVICE=${DEVICE:-auto}; RUNS=${RUNS:-runs}; RESULTS=${RESULTS:-results}
DEF_EPOCHS=${DEF_EPOCHS:-6}; DEF_STEPS=${DEF_STEPS-}; TRANSFER_T=${TRANSFER_T:-500}
mkdir -p "$RUNS" "$RESULTS"

train() {  # name dataset arch epochs seed [extra args]
  local name=$1 dataset=$2 arch=$3 epochs=$4 seed=$5; shift 5
  mkdir -p "$RESULTS/$name"
  advrank train --dataset "$dataset" --arch "$arch" --epochs "$epochs" --seed "$seed" \
    --device "$DEVICE" --out "$RUNS/$name.pt" --resume --json --quiet "$@" \
    > "$RESULTS/$name/train.json"
  advrank evaluate --checkpoint "$RUNS/$name.pt" --device "$DEVICE" --json \
    > "$RESULTS/$name/evaluate.json"
}

grid() {  # name
  advrank grid --checkpoint "$RUNS/$1.pt" --out "$RESULTS/$1" --num-attacks "$T" \
    --ks "${KS:-1,2,5,10}" --batch-size "${BATCH:-256}" --device "$DEVICE" --quiet > /dev/null
}

defend() {  # name dataset vanilla-name
  local steps=(); [[ -n $DEF_STEPS ]] && steps=(--defense-steps "$DEF_STEPS")
  train "$1" "$2" c2f1 "$DEF_EPOCHS" 0 --defense est --defense-eps 0.3 \
    --init "$RUNS/$3.pt" "${steps[@]}"
}

for step in "$@"; do
  case $step in
    mnist) train mnist-c2f1 mnist c2f1 8 0 && grid mnist-c2f1 ;;
    fashion) train fashion-c2f1 fashion c2f1 6 0 && grid fashion-c2f1 ;;
    text-fashion) train fashion-clip-tiny fashion clip-tiny 3 0 \
      && python3 scripts/text_attacks.py --checkpoint "$RUNS/fashion-clip-tiny.pt" \
           --out "$RESULTS/text-fashion" --num-attacks 200 --device "$DEVICE" ;;
    mnist-defense) defend mnist-c2f1-est mnist mnist-c2f1 && grid mnist-c2f1-est ;;
    fashion-defense) defend fashion-c2f1-est fashion fashion-c2f1 && grid fashion-c2f1-est ;;
    curves) advrank curves --checkpoint "$RUNS/mnist-c2f1.pt" --checkpoint "$RUNS/mnist-c2f1-est.pt" \
              --out "$RESULTS/curves-mnist" --num-attacks "${CURVE_T:-100}" --device "$DEVICE" \
              --eps 0,0.05,0.1,0.2,0.3 --quiet > /dev/null ;;
    curves-fashion) advrank curves --checkpoint "$RUNS/fashion-c2f1.pt" \
              --checkpoint "$RUNS/fashion-c2f1-est.pt" --out "$RESULTS/curves-fashion" \
              --num-attacks "${CURVE_T:-100}" --device "$DEVICE" --eps 0,0.05,0.1,0.2,0.3 \
              --quiet > /dev/null ;;
    transfer-models)
      train mnist-lenet mnist lenet 4 0
      train mnist-c2f1-seed1 mnist c2f1 2 1
      train mnist-resnet18 mnist resnet18 1 0 ;;
    transfer)  # after transfer-models, mnist and mnist-defense
      advrank transfer-matrix --checkpoint LeNet="$RUNS/mnist-lenet.pt" \
        --checkpoint C2F1="$RUNS/mnist-c2f1.pt" --checkpoint Res18="$RUNS/mnist-resnet18.pt" \
        --checkpoint C2F1-seed1="$RUNS/mnist-c2f1-seed1.pt" \
        --checkpoint C2F1-defended="$RUNS/mnist-c2f1-est.pt" \
        --out "$RESULTS/transfer-mnist" --eps 0.3 --num-attacks "$TRANSFER_T" --device "$DEVICE" \
        --quiet > /dev/null ;;
    transfer-no-resnet)  # the same matrix without ResNet-18 (cheaper on a CPU)
      advrank transfer-matrix --checkpoint LeNet="$RUNS/mnist-lenet.pt" \
        --checkpoint C2F1="$RUNS/mnist-c2f1.pt" \
        --checkpoint C2F1-seed1="$RUNS/mnist-c2f1-seed1.pt" \
        --checkpoint C2F1-defended="$RUNS/mnist-c2f1-est.pt" \
        --out "$RESULTS/transfer-mnist-no-resnet" --eps 0.3 --num-attacks "$TRANSFER_T" \
        --device "$DEVICE" --quiet > /dev/null ;;
    universal)
      mkdir -p "$RESULTS/universal-mnist"
      for a in CA+ CA- QA+ QA-; do
        advrank universal --checkpoint "$RUNS/mnist-c2f1.pt" --attack "$a" --eps 0.3 \
          --device "$DEVICE" --out "$RESULTS/universal-mnist/$a" --json --quiet \
          > "$RESULTS/universal-mnist/$a.json"
      done ;;
    universal-own)  # the same, each member with its own Q/C by the §4 rules (--mode own)
      mkdir -p "$RESULTS/universal-mnist-own"
      for a in CA+ CA- QA+ QA-; do
        advrank universal --checkpoint "$RUNS/mnist-c2f1.pt" --attack "$a" --eps 0.3 --mode own \
          --device "$DEVICE" --out "$RESULTS/universal-mnist-own/$a" --json --quiet \
          > "$RESULTS/universal-mnist-own/$a.json"
      done ;;
    xi-means|xi-means-fashion)  # Eq. 12 read with means over C and C_SP: PGD's sign step
      # makes that the sum form with xi * m / G (G = 5); the QA cells at eps = 0.3 under it
      name0=mnist-c2f1; [[ $step == xi-means-fashion ]] && name0=fashion-c2f1
      mkdir -p "$RESULTS/$name0-xi-means"
      for m in 1 2 5 10; do
        for a in QA+ QA-; do
          base=1 name=QA-plus; [[ $a == QA- ]] && base=100 name=QA-minus
          xi=$(python3 -c "print($base * $m / 5)")
          advrank attack --checkpoint "$RUNS/$name0.pt" --attack "$a" --eps 0.3 --m "$m" \
            --xi "$xi" --num-attacks "$T" --batch-size "${BATCH:-256}" --device "$DEVICE" \
            --json --quiet > "$RESULTS/$name0-xi-means/$name-m$m.json.part"
          mv "$RESULTS/$name0-xi-means/$name-m$m.json.part" \
            "$RESULTS/$name0-xi-means/$name-m$m.json"
        done
      done ;;
    madry-digits)  # §3.3's remark: Madry-style ranking adversarial training vs EST, from scratch
      train digits-c2f1 digits c2f1 10 0
      train digits-c2f1-est digits c2f1 10 0 --defense est --defense-eps 0.3
      train digits-c2f1-madry digits c2f1 10 0 --defense madry --defense-eps 0.3 ;;
    grid:*) grid "${step#grid:}" ;;
    qa:*)  # the QA columns (Tables 1-3) with the default options: Eq. 12 averaged, as the
      # authors' code does; RUNS/NAME.pt -> RESULTS/NAME-qa
      name=${step#qa:}
      advrank grid --checkpoint "$RUNS/$name.pt" --out "$RESULTS/$name-qa" --attacks QA+,QA- \
        --num-attacks "$T" --ks "${KS:-1,2,5,10}" --batch-size "${BATCH:-256}" \
        ${EPS:+--eps "$EPS"} --device "$DEVICE" --quiet > /dev/null ;;
    bench)  # attack speed and memory (benchmarks/README.md), one file per device kind
      python3 benchmarks/bench_attack.py --device "$DEVICE" > "$RESULTS/bench_attack-$DEVICE.txt"
      python3 benchmarks/bench_attack.py --device "$DEVICE" --k 10 --memory-sizes "" \
        > "$RESULTS/bench_attack-$DEVICE-k10.txt" ;;
    scale)  # attacks/s and peak memory at |X| = 10k, 100k, 1M per precision (benchmarks/README.md)
      python3 benchmarks/bench_scale.py --device "$DEVICE" \
        --out "$RESULTS/bench_scale-$DEVICE.json" > "$RESULTS/bench_scale-$DEVICE.txt"
      for p in fp32 tf32 bf16; do  # the iteration / model ratios at batch 2000, |X| = 10k
        python3 benchmarks/bench_attack.py --device "$DEVICE" --batch 2000 --memory-sizes "" \
          --precision "$p" > "$RESULTS/bench_attack-$DEVICE-$p.txt"
      done ;;
    scale-10M)  # a 10M x 512 gallery, CA+ and QA+, the device's own memory budget
      python3 benchmarks/bench_scale.py --device "$DEVICE" --sizes 10000000 --dim 512 \
        --precisions fp32,bf16 --memory-budget auto --out "$RESULTS/bench_scale-$DEVICE-10M.json" \
        > "$RESULTS/bench_scale-$DEVICE-10M.txt" ;;
    scale-compile)  # the same with the comparison passes fused by torch.compile
      python3 benchmarks/bench_scale.py --device "$DEVICE" --precisions tf32,bf16 --compile \
        --out "$RESULTS/bench_scale-$DEVICE-compile.json" \
        > "$RESULTS/bench_scale-$DEVICE-compile.txt" ;;
    scale-gpus)  # 1 process, then one per GPU under torchrun: the speed-up per added GPU
      gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
      procs=1; for ((i = 2; i <= gpus; i *= 2)); do procs="$procs,$i"; done
      python3 benchmarks/bench_scale.py --device "$DEVICE" --sizes 1000000 --precisions bf16 \
        --processes "$procs" --out "$RESULTS/bench_scale-$DEVICE-gpus.json" \
        > "$RESULTS/bench_scale-$DEVICE-gpus.txt" ;;
    precision:*)  # Table 1 at eps 0.3 (16 columns, T attacks each) in fp32 and in bf16
      name=${step#precision:}
      for p in fp32 bf16; do
        advrank grid --checkpoint "$RUNS/$name.pt" --out "$RESULTS/$name-eps0.3-$p" \
          --eps 0.3 --num-attacks "$T" --ks "${KS:-1,2,5,10}" --precision "$p" \
          --batch-size "${BATCH:-256}" --device "$DEVICE" --quiet > /dev/null
      done
      python3 scripts/compare_precision.py "$RESULTS/$name-eps0.3-fp32" \
        "$RESULTS/$name-eps0.3-bf16" "$RESULTS/$name-precision" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
