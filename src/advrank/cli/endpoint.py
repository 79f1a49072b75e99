"""``advrank audit --oracle URL --data DIR`` with no model: the audit of an endpoint alone
(:mod:`advrank.experiments.audit.endpoint`). The command parses, declares and runs."""

from __future__ import annotations

from advrank.cli.parsing import emit, log
from advrank.cli.values import as_type, format_eps
from advrank.errors import AdvrankError

#: options of the model audit that an endpoint audit has no use for (flag, attribute)
WHITE_BOX_ONLY = (("--steps", "steps"), ("--step-size", "step_size"), ("--index", "index"),
                  ("--transfer-from", "transfer_from"), ("--query-fraction", "query_fraction"),
                  ("--weights", "weights"), ("--pretrained", "pretrained"),
                  ("--metric", "metric"), ("--layer", "layer"), ("--embed-dim", "embed_dim"),
                  ("--input-size", "input_size"), ("--mean", "mean"), ("--std", "std"),
                  ("--quick", "quick"))


def add_endpoint_options(p) -> None:
    """``--oracle``, ``--optimizer``, ``--schema`` and ``--endpoint-differs`` of the audit."""
    from advrank.oracles import split_oracle_spec
    from advrank.registry import OPTIMIZERS

    def oracle_spec(text: str) -> str:
        split_oracle_spec(text)
        return text.strip()

    def optimizers(text: str) -> list[str]:
        names = [OPTIMIZERS.canonical(t.strip()) for t in text.split(",") if t.strip()]
        if not names:
            raise AdvrankError(f"give at least one optimizer, got {text!r}")
        return list(dict.fromkeys(names))

    g = p.add_argument_group("an endpoint (--oracle): alone, or the deployed view's query rows")
    g.add_argument("--oracle", type=as_type(oracle_spec, "oracle"), default=None,
                   metavar="http://HOST:PORT",
                   help="with no model: audit this endpoint with the pictures of --data "
                        "(query-only attacks, every figure read from its answers); with a "
                        "model: the deployed view's query-only rows go through it, calibrated "
                        "against the model first")
    g.add_argument("--optimizer", type=as_type(optimizers, "optimizers"), default=None,
                   metavar="{" + ",".join(OPTIMIZERS.names()) + "}[,...]",
                   help="the query-only optimisers (an endpoint alone: each runs every cell; "
                        "the deployed view: one; default: random)")
    g.add_argument("--schema", default=None, metavar="NAME[:ARG]",
                   help="how the endpoint is asked and read (default: advrank)")
    g.add_argument("--endpoint-differs", action="store_true",
                   help="the endpoint is expected to differ (from the model, or between two "
                        "answers to one picture): its calibration is recorded instead of "
                        "refused and its figures stand alone")


def endpoint_config(args):
    """The :class:`EndpointAuditConfig` of the parsed options (white-box ones refused)."""
    from advrank.cli.declare import kind_options, resolve_size
    from advrank.experiments.audit import AUDIT_ATTACKS, DEFAULT_AUDIT_EPS
    from advrank.experiments.audit.endpoint import ENDPOINT_ATTACKS, EndpointAuditConfig

    given = [flag for flag, name in WHITE_BOX_ONLY if getattr(args, name, None) is not None]
    if args.through_pipeline:
        given.append("--through-pipeline")
    if given:
        raise AdvrankError(f"{', '.join(given)} apply to a model's audit; an endpoint alone "
                           "(--oracle, no model) is attacked through its answers")
    if args.data is None:
        raise AdvrankError("an endpoint audit attacks pictures: give --data imagefolder:DIR "
                           "(or csv:FILE)")
    attacks = list(ENDPOINT_ATTACKS) if args.attacks == list(AUDIT_ATTACKS) else args.attacks
    k = resolve_size(args, attacks)
    sized = any(getattr(args, name) is not None for name in ("k", "w", "m"))
    return EndpointAuditConfig(
        eps_values=args.eps or list(DEFAULT_AUDIT_EPS), attacks=attacks, k=k,
        order_k=k if sized and k >= 2 else 5,
        num_attacks=args.num_attacks, seed=args.seed, batch_size=args.batch_size,
        query_budget=args.query_budget or 1000, feedback=args.feedback or "topk:10",
        optimizers=args.optimizer or ["random"], top=args.top, examples=args.examples > 0,
        pipeline=None if args.pipeline in (None, "none") else args.pipeline,
        options=kind_options(args))


def cmd_endpoint_audit(args) -> None:
    from advrank.experiments.audit.endpoint import EndpointAuditJob

    config = endpoint_config(args)
    job = EndpointAuditJob(args.oracle, args.data, args.out, config, schema=args.schema,
                           data_root=args.data_root, allow_outside_root=args.allow_outside_root,
                           progress=not args.quiet, log=log(args), force=args.force,
                           endpoint_differs=args.endpoint_differs)
    summary = job.run()
    ev, v = summary["evaluation"], summary["verdict"]
    view = "its exact ranks" if ev["censored_at"] is None else f"its top {ev['censored_at']}"
    lines = [f"endpoint {summary['endpoint']['url']}: {summary['gallery_size']} items, "
             f"{summary['queries']} pictures attacked; figures read from {view} (k = "
             f"{ev['k']}, {ev['evaluation_queries']} evaluation queries)"]
    for row in summary["rows"]:
        head = row["topk_headline"]
        lines.append(f"{row['attack']:>5} eps={format_eps(row['eps'])} {row['optimizer']}: "
                     f"{head} {row[f'{head}_before']:.2f} -> {row[f'{head}_after']:.2f} "
                     f"({row['queries_used']:.0f} queries per attack)")
    lines.append("verdict: " + ("vulnerable" if v["vulnerable"] else "no attack moved the top "
                                f"k by {v['threshold']:.0f} points"))
    lines.append(f"wrote {summary['report_html']} and {summary['report_json']}")
    emit(args, summary, "\n".join(lines))
