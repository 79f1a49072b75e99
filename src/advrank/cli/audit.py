"""``advrank audit``: parse, declare an :class:`~advrank.experiments.audit.AuditJob`, run it."""

from __future__ import annotations

from advrank.cli.declare import (
    kind_options,
    loader_from_args,
    resolve_size,
    spec_from_args,
)
from advrank.cli.groups import (
    BESIDE_EXACT,
    add_attacks,
    add_batch_size,
    add_eps,
    add_index,
    add_kind_options,
    add_num_attacks,
    add_pipeline,
    add_queries,
    add_size,
    add_steps,
    add_target_options,
)
from advrank.cli.parsing import Command, emit
from advrank.cli.values import format_eps, integer, path_value, positive_int
from advrank.experiments.audit import (
    AUDIT_ATTACKS,
    DEFAULT_AUDIT_EPS,
    FAST_SETTING,
    AuditConfig,
    AuditJob,
)


def cmd_audit(args) -> None:
    k = resolve_size(args, args.attacks)
    config = AuditConfig(eps_values=args.eps, attacks=args.attacks, k=k,
                         num_attacks=args.num_attacks, seed=args.seed,
                         batch_size=args.batch_size, steps=args.steps,
                         step_size=args.step_size, examples=args.examples, top=args.top,
                         max_queries=args.max_queries, options=kind_options(args),
                         pipeline=args.pipeline, through_pipeline=args.through_pipeline,
                         query_budget=args.query_budget, feedback=args.feedback,
                         queries=args.queries)
    summary = AuditJob(spec_from_args(args), args.out, config, loader_from_args(args),
                       index=args.index, transfer_from=args.transfer_from,
                       force=args.force).run()
    lines = [f"{summary['gallery_size']} images: R@1 {summary['recall@1']:.1f}%  "
             f"mAP {summary['map']:.1f}%"
             + (f"  ({summary['unreadable_images']} unreadable skipped)"
                if summary["unreadable_images"] else "")]
    for row in summary["attacks"]:
        lines.append(f"{row['attack']:>4} eps={format_eps(row['eps'])}: rank "
                     f"{row['rank_before']:.1f}% -> {row['rank_after']:.1f}%" + (
                         f" (after {config.pipeline}: {row['rank_pipeline_before']:.1f}% -> "
                         f"{row['rank_pipeline_after']:.1f}%)" if "rank_pipeline_after" in row
                         else ""))
    if summary.get("text"):
        lines += text_lines(summary["text"])
    if summary["deployed"]:
        from advrank.reports.tables import deployed_markdown

        lines.append("deployed view:\n" + deployed_markdown(summary["deployed"]).rstrip())
    lines.append(f"wrote {summary['report_html']} and {summary['report_json']}")
    emit(args, summary, "\n".join(lines))


def text_lines(text: dict) -> list[str]:
    """The text section in the command's output: retrieval quality and one line per cell."""
    r = text["retrieval"]
    lines = [f"text queries {text['text_queries']} ({text['query_texts']} texts): text-to-image "
             f"R@1 {r['recall@1']:.1f}%  mAP {r['map']:.1f}%"]
    lines += [f"{row['attack']:>4} eps={format_eps(row['eps'])} (text queries): rank "
              f"{row['rank_before']:.1f}% -> {row['rank_after']:.1f}%" for row in text["attacks"]]
    return lines


def _audit_options(p) -> None:
    """audit a retrieval model on an image collection: report.html + .json"""
    add_target_options(p, cache=True)
    p.add_argument("--out", required=True, help="output folder")
    add_eps(p, multiple=True, default=list(DEFAULT_AUDIT_EPS))
    add_attacks(p, AUDIT_ATTACKS, "comma-separated attack kinds, each scored by ranks")
    add_size(p, default=1)
    add_num_attacks(p, "attacks per (attack, eps) cell")
    add_steps(p)
    add_batch_size(p)
    p.add_argument("--examples", type=integer(0, 20), default=1,
                   help="example panels per attack (at the largest eps)")
    p.add_argument("--top", type=integer(1, 50), default=5,
                   help="results shown per ranking list in the panels")
    p.add_argument("--max-queries", type=positive_int, default=5000,
                   help="queries used to measure Recall@K/mAP (a seeded sample of X when larger)")
    p.add_argument("--force", action="store_true",
                   help="overwrite a report.html in --out that no report.json belongs to, and "
                        "start over instead of resuming")
    add_kind_options(p)
    add_index(p, what=BESIDE_EXACT)
    add_pipeline(p)
    p.add_argument("--query-budget", type=integer(1, 10**9), default=None, metavar="B",
                   help="add query-only rows to the deployed view: B queries per attack "
                        "through the local oracle, for each query-only kind at each eps > 0 "
                        "(default: off)")
    p.add_argument("--feedback", default=None, metavar="{full,topk:K,topk-scores:K}",
                   help="what the query-only attacks see (default: full)")
    p.add_argument("--transfer-from", type=path_value, default=None, metavar="CHECKPOINT",
                   help="add transfer rows to the deployed view: the white-box attacks made on "
                        "this model (on the same collection), ranked by the audited one")
    add_queries(p)


COMMANDS = (
    Command("audit", cmd_audit, _audit_options,
            description="Measure retrieval quality (Recall@K, mAP), run the ranking attacks "
                        "(CA+, CA-, QA+, QA-) and the embedding shift (ES) at a few eps, and "
                        "write OUT/report.html (self-contained: tables, plots, example panels) "
                        "and OUT/report.json. eps is in [0, 1] pixel units of the model's input "
                        "image (after resizing/cropping). It prints its estimated time (from one "
                        "timed forward+backward pass) before the attacks start and shows one "
                        f"progress bar; for a quick look add {FAST_SETTING}. Rerunning the same "
                        "command resumes.\n\n"
                        "  advrank audit --model timm:resnet50 --weights my.safetensors \\\n"
                        "      --data imagefolder:photos/ --out audit/\n"
                        "  advrank audit --checkpoint mnist.pt --eps 0.03,0.1,0.3 --out audit/"),
)
