#!/usr/bin/env bash
# Issue 18, the upload pipeline: white-box CA+ and QA+ ranks as a deployed search sees them,
# after an 8-bit PNG or a JPEG (quality 75) round trip, attacked on float pixels or through
# the pipeline; and the same attacks measured through an HNSW index beside exact search.
# Every grid resumes if interrupted; summary.md collects the figures.
#
#   scripts/pipeline_study.sh [mnist] [fashion]        (default: both)
#
# Writes RESULTS/pipeline-DATASET/{png,png-through,jpeg75,jpeg75-through,hnsw}/ (grids) and
# RESULTS/pipeline-DATASET/summary.md. Checkpoints: RUNS/DATASET-c2f1.pt.
# Environment (all optional): ADVRANK_DATA (default ../shared/data), RUNS (runs/), RESULTS
# (results/), DEVICE (auto), T (attacks per cell, default 500), KS (w/m, default 1), BATCH
# (default 256), EPS_MNIST (default 0.3), EPS_FASHION (default 0.3: the paper's largest
# Fashion row, as for MNIST), JPEG (quality, default 75), ADVRANK (the command, default advrank).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVRANK_DATA=${ADVRANK_DATA:-../shared/data}
RUNS=${RUNS:-runs}; RESULTS=${RESULTS:-results}; DEVICE=${DEVICE:-auto}; T=${T:-500}
KS=${KS:-1}; BATCH=${BATCH:-256}; JPEG=${JPEG:-75}; ADVRANK=${ADVRANK:-advrank}

grid() {  # checkpoint out-folder eps [grid options]
  local ckpt=$1 out=$2 eps=$3; shift 3
  $ADVRANK grid --checkpoint "$ckpt" --out "$out" --attacks CA+,QA+ --eps-values "$eps" \
    --ks "$KS" --num-attacks "$T" --batch-size "$BATCH" --device "$DEVICE" --quiet "$@" \
    > /dev/null
}

summary() {  # study folder -> study folder/summary.md
  python3 - "$1" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
lines = [f"# {root.name}: ranks as a deployed search sees them", "",
         "Mean normalized rank (%) after attack ± standard error; T attacks per cell. "
         "float: the model sees the attacker's float pixels (the paper's setting); "
         "after pipeline: the adversarial picture saved as PNG/JPEG and decoded again.", "",
         "| setting | attack | k | eps | T | before | float | after pipeline |",
         "|---|---|---|---|---|---|---|---|"]
index_lines = ["", "## exact search vs the index (top-100 ranks, depth 100)", "",
               "| setting | attack | k | eps | exact rank_topk | index rank_topk | "
               "exact in_topk | index in_topk |", "|---|---|---|---|---|---|---|---|"]
for d in sorted(p for p in root.iterdir() if (p / "results.json").exists()):
    res = json.loads((d / "results.json").read_text())
    for c in sorted(res["cells"].values(), key=lambda c: (c["attack"], c["k"], c["eps"])):
        pipe = c.get("rank_pipeline_after")
        lines.append(
            f"| {d.name} | {c['attack']} | {c['k']} | {c['eps']:g} | {c['num_attacks']} | "
            f"{c['rank_before']:.1f} | {c['rank_after']:.1f} ± {c['rank_after_se']:.1f} | "
            + ("–" if pipe is None else f"{pipe:.1f} ± {c['rank_pipeline_after_se']:.1f}")
            + " |")
        if "rank_topk_index_after" in c:
            index_lines.append(
                f"| {d.name} ({res['config']['index']}) | {c['attack']} | {c['k']} | "
                f"{c['eps']:g} | {c['rank_topk_exact_after']:.1f} | "
                f"{c['rank_topk_index_after']:.1f} | {c['in_topk_exact_after']:.1f} | "
                f"{c['in_topk_index_after']:.1f} |")
text = "\n".join(lines + (index_lines if len(index_lines) > 4 else [])) + "\n"
(root / "summary.md").write_text(text)
print(text)
EOF
}

study() {  # dataset eps
  local ckpt="$RUNS/$1-c2f1.pt" out="$RESULTS/pipeline-$1" eps=$2
  [[ -f $ckpt ]] || { echo "no checkpoint $ckpt (scripts/reproduce.sh $1)" >&2; exit 2; }
  mkdir -p "$out"
  grid "$ckpt" "$out/png" "$eps" --pipeline png
  grid "$ckpt" "$out/png-through" "$eps" --pipeline png --through-pipeline
  grid "$ckpt" "$out/jpeg$JPEG" "$eps" --pipeline "jpeg:$JPEG"
  grid "$ckpt" "$out/jpeg$JPEG-through" "$eps" --pipeline "jpeg:$JPEG" --through-pipeline
  grid "$ckpt" "$out/hnsw" "$eps" --index hnsw
  summary "$out"
}

steps=("$@"); [[ ${#steps[@]} -gt 0 ]] || steps=(mnist fashion)
for step in "${steps[@]}"; do
  case $step in
    mnist) study mnist "${EPS_MNIST:-0.3}" ;;
    fashion) study fashion "${EPS_FASHION:-0.3}" ;;
    *) echo "unknown step $step (mnist, fashion)" >&2; exit 2 ;;
  esac
done
