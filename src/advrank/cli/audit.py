"""``advrank audit``: parse, declare an :class:`~advrank.experiments.audit.AuditJob`, run it."""

from __future__ import annotations

from advrank.cli.catalog import (
    add_catalog_options,
    catalog_token,
    check_catalog_link,
    refuse_without_catalog,
)
from advrank.cli.declare import (
    kind_options,
    loader_from_args,
    resolve_size,
    spec_from_args,
)
from advrank.cli.endpoint import add_endpoint_options, cmd_endpoint_audit
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
from advrank.cli.values import format_eps, integer, number, path_value, positive_int
from advrank.errors import AdvrankError
from advrank.experiments.audit import (
    AUDIT_ATTACKS,
    DEFAULT_AUDIT_EPS,
    QUICK_EPS,
    QUICK_MINUTES,
    AuditConfig,
    AuditJob,
)
from advrank.experiments.audit.settings import CATALOG_UPLOADS


def audit_catalog_token(args) -> str | None:
    """The catalog's token (``--token-file`` or ``--token``; None without ``--catalog``);
    its options refused in one line without ``--catalog``, or with no local model to attack
    in the lab."""
    if refuse_without_catalog(args):
        return None
    if args.checkpoint is None and args.model is None:
        raise AdvrankError("--catalog attacks the local model in the lab first: give "
                           "--checkpoint or --model")
    check_catalog_link(args)
    return catalog_token(args)


def cmd_audit(args) -> None:
    token = audit_catalog_token(args)
    if args.oracle is not None and args.checkpoint is None and args.model is None:
        return cmd_endpoint_audit(args)
    if args.schema is not None or (args.optimizer and len(args.optimizer) > 1):
        raise AdvrankError("--schema and several optimizers apply to the audit of an endpoint "
                           "alone (--oracle with no --checkpoint or --model)")
    if args.endpoint_differs and args.oracle is None:
        raise AdvrankError("--endpoint-differs applies to an endpoint (--oracle "
                           "http://HOST:PORT)")
    k = resolve_size(args, args.attacks)
    eps = args.eps or ([QUICK_EPS] if args.quick is not None else list(DEFAULT_AUDIT_EPS))
    config = AuditConfig(eps_values=eps, attacks=args.attacks, k=k,
                         num_attacks=args.num_attacks, seed=args.seed,
                         batch_size=args.batch_size, steps=args.steps,
                         step_size=args.step_size, examples=args.examples, top=args.top,
                         max_queries=args.max_queries, options=kind_options(args),
                         pipeline=args.pipeline, through_pipeline=args.through_pipeline,
                         query_budget=args.query_budget, feedback=args.feedback,
                         optimizer=(args.optimizer or ["random"])[0], oracle=args.oracle,
                         endpoint_differs=args.endpoint_differs, quick=args.quick,
                         queries=args.queries, catalog=args.catalog,
                         upload_budget=args.upload_budget or CATALOG_UPLOADS)
    summary = AuditJob(spec_from_args(args), args.out, config, loader_from_args(args),
                       index=args.index, transfer_from=args.transfer_from,
                       force=args.force, token=token).run()
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
        from advrank.reports.tables import deployed_markdown, deployed_sentences, id_ranges

        lines.append("deployed view:\n" + deployed_markdown(summary["deployed"]).rstrip())
        if summary["deployed"].get("catalog"):
            cat = summary["deployed"]["catalog"]
            lines.append(f"{cat['note']} Uploaded and deleted: ids "
                         f"{id_ranges(cat['uploaded_ids'])}.")
        lines += deployed_sentences(summary["verdict"].get("deployed"))
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
    default_eps = ",".join(format_eps(e) for e in DEFAULT_AUDIT_EPS)
    add_eps(p, multiple=True, default=None,
            default_text=f"{default_eps}; with --quick: {format_eps(QUICK_EPS)}")
    p.add_argument("--quick", type=number(0.0, 24 * 60, low_open=True), nargs="?",
                   const=QUICK_MINUTES, default=None, metavar="MINUTES",
                   help="a quick look that fits any collection: one eps (8/255 unless --eps), "
                        "T per cell sized from |X| and timed probes to fit MINUTES (default "
                        f"when given without a value: {QUICK_MINUTES:g}); --num-attacks caps T")
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
    add_endpoint_options(p)
    p.add_argument("--transfer-from", type=path_value, default=None, metavar="CHECKPOINT",
                   help="add transfer rows to the deployed view: the white-box attacks made on "
                        "this model (on the same collection), ranked by the audited one")
    add_queries(p)
    add_catalog_options(p, audit=True)


COMMANDS = (
    Command("audit", cmd_audit, _audit_options,
            description="Measure retrieval quality (Recall@K, mAP), run the ranking attacks "
                        "(CA+, CA-, QA+, QA-) and the embedding shift (ES) at a few eps, and "
                        "write OUT/report.html (self-contained: tables, plots, example panels) "
                        "and OUT/report.json. eps is in [0, 1] pixel units of the model's input "
                        "image (after resizing/cropping). It prints its estimated time (each kind "
                        "of cell priced from a timed probe of it) before the attacks start and "
                        "shows one progress bar whose time left is corrected as cells finish; "
                        "for a quick look add --quick. Rerunning the same command resumes; "
                        "Ctrl-C writes a partial report first.\n\n"
                        "  advrank audit --model timm:resnet50 --weights my.safetensors \\\n"
                        "      --data imagefolder:photos/ --out audit/ --quick\n"
                        "  advrank audit --checkpoint mnist.pt --eps 0.03,0.1,0.3 --out audit/\n\n"
                        "With --oracle URL and no model, the audit of an endpoint alone: "
                        "query-only attacks on the pictures of --data, every figure read from "
                        "the endpoint's answers:\n\n"
                        "  advrank audit --oracle http://127.0.0.1:8000 --data "
                        "imagefolder:photos/ --out audit/"),
)
