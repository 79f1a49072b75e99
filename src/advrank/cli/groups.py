"""The option groups every subcommand composes its options from (``add_*``): the common
options, eps and the PGD steps, sizes, attack kinds and their parameters, the model and data,
the index, the query-only attack and the upload pipeline."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, cast

from advrank.cli.values import (
    as_type,
    attack_name,
    eps_list,
    float_list,
    format_eps,
    index_spec,
    integer,
    labelled_type,
    listed,
    memory_size,
    model_source,
    number,
    param_type,
    path_value,
    pipeline_spec,
    positive_int,
    query_set_value,
    seed_value,
)
from advrank.registry import ATTACKS, DISTANCES


class _OneEps(argparse.Action):
    """``--eps`` of a command that runs one eps: the shared list syntax, one value kept."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) != 1:
            parser.error(f"{option_string}: this command runs one eps, got {len(values)} "
                         "(grid, curves and audit take a list)")
        setattr(namespace, self.dest, values[0])


class _DeprecatedEps(argparse.Action):
    """``--eps-values`` (the old spelling, space- or comma-separated): same values as
    ``--eps``, with a one-line note (``main`` prints the parsed ``deprecations`` on stderr,
    unless ``--quiet``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        notes = list(getattr(namespace, "deprecations", None) or [])
        note = f"advrank: note: {option_string} is deprecated; use --eps (same values)"
        namespace.deprecations = list(dict.fromkeys([*notes, note]))
        setattr(namespace, self.dest, list(dict.fromkeys(e for part in values for e in part)))


def add_eps(p: argparse.ArgumentParser, multiple: bool, default: Any = None,
            required: bool = False, what: str = "L-inf budget",
            default_text: str | None = None) -> None:
    """``--eps``: one spelling, one syntax (a value or a comma list, in [0, 1] pixel units, 8/255
    or 0.03) in every command; commands that run one eps keep one value. Commands that take
    several also accept the old ``--eps-values``, with a deprecation note."""
    shown = default_text or (default if not isinstance(default, (list, tuple)) else
                             ",".join(format_eps(e) for e in default))
    text = (f"{what}{'s' if multiple else ''} in [0, 1] pixel units, e.g. "
            f"{'2/255,8/255 or 0.1,0.3' if multiple else '8/255 or 0.3'}"
            + (f" (default: {shown})" if shown is not None else ""))
    p.add_argument("--eps", dest="eps", type=eps_list, default=default, required=required,
                   action=None if multiple else _OneEps, metavar="EPS[,EPS...]"
                   if multiple else "EPS", help=text)
    if multiple:
        p.add_argument("--eps-values", dest="eps", type=eps_list, nargs="+",
                       action=_DeprecatedEps, help=argparse.SUPPRESS)


def add_num_attacks(p: argparse.ArgumentParser, what: str = "attacks") -> None:
    """``--num-attacks``: T, one default rule everywhere: min(1000, |X|), with a note on
    stderr when the collection caps it (see :func:`~advrank.attacks.selection.num_attacks_for`)."""
    from advrank.attacks.selection import DEFAULT_NUM_ATTACKS

    p.add_argument("--num-attacks", type=positive_int, default=None, metavar="T",
                   help=f"T {what} (default: min({DEFAULT_NUM_ATTACKS}, |X|), with a note when "
                        "|X| caps it); a T above |X| is refused")


def add_batch_size(p: argparse.ArgumentParser) -> None:
    """``--batch-size``: attacks per PGD batch, the same default in every attacking command."""
    p.add_argument("--batch-size", type=integer(1, 1_000_000), default=BATCH_SIZE,
                   help="attacks per PGD batch (results do not depend on it); split further "
                        "when it does not fit the memory")


#: attacks per PGD batch, every command
BATCH_SIZE = 256


def add_common(p: argparse.ArgumentParser, data: bool = True) -> None:
    """``--device``, ``--seed``, ``--json``, ``--quiet`` (and the data options)."""
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, or cuda[:i]")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed; same seed, same run")
    if data:
        p.add_argument("--data-root", type=path_value, default=None,
                       help="folder holding the datasets (default: $ADVRANK_DATA, else ./data)")
        p.add_argument("--download", action="store_true",
                       help="let torchvision download missing MNIST/Fashion-MNIST files (online)")
    add_json(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json`` alone (a command with no device, seed or progress, e.g. ``export``)."""
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_common_no_data(p: argparse.ArgumentParser) -> None:
    """:func:`add_common` for a command that reads no dataset folder (``demo``)."""
    add_common(p, data=False)


def add_size(p: argparse.ArgumentParser, default: int | Sequence[int] | None = 1,
             multiple: bool = False) -> None:
    """The size of Q (w, CA) or C (m, QA): ``--k`` in every command, ``--w``/``--m`` accepted
    as spellings checked against the attack kind."""
    kind = listed(positive_int, "positive integers") if multiple else positive_int
    names = ["--k", "--ks"] if multiple else ["--k"]
    what = "comma-separated sizes" if multiple else "size"
    shown = ",".join(map(str, cast(Sequence[int], default))) if multiple else default
    p.add_argument(*names, dest="k", type=kind, default=None, metavar="K",
                   help=f"{what} of Q (w, for CA) or C (m, for QA) (default: {shown})")
    p.add_argument("--w", dest="w", type=kind, default=None, help="--k for CA attacks")
    p.add_argument("--m", dest="m", type=kind, default=None, help="--k for QA attacks")
    p.set_defaults(k_default=default)


def kind_dest(name: str) -> str:
    return f"kind_option_{name}"


def add_kind_options(p: argparse.ArgumentParser) -> None:
    """One flag per distinct hyper-parameter name across the registered attack kinds
    (``--xi``, ``--top-fraction``...), generated from the kinds' :class:`Param` declarations:
    a plugin kind's parameters appear with no CLI edit. A flag given for a kind that does not
    take it is refused when the kind is made (before any work)."""
    from advrank.attacks.params import collect

    found = collect([ATTACKS.get(name) for name in ATTACKS.names()])
    g = p.add_argument_group("attack-kind parameters (each applies to the kinds named)")
    for name, (param, kinds) in found.items():
        g.add_argument(*param.flags, dest=kind_dest(name), type=param_type(param),
                       default=None, choices=None, metavar=_param_metavar(param),
                       help=f"{', '.join(kinds)}: {param.describe()}".replace("%", "%%"))
    p.set_defaults(kind_params=tuple(found))


def _param_metavar(param) -> str:
    if param.choices:
        return "{" + ",".join(param.choices) + "}"
    return {bool: "{true,false}", int: "N", float: "X", str: "TEXT"}[param.type]


def attack_help(what: str = "the attack kind") -> str:
    """``--attack``'s help: every registered kind with its own one-line description."""
    def line(kind) -> str:
        return kind.description or (kind.__doc__ or "-").strip().splitlines()[0]

    kinds = "; ".join(f"{n}: {line(ATTACKS.get(n))}" for n in ATTACKS.names())
    return f"{what} ({kinds})".replace("%", "%%")


def attack_metavar() -> str:
    """``{CA+,CA-,...}``: the registered attack kinds (plugins' included)."""
    return "{" + ",".join(ATTACKS.names()) + "}"


def add_attack(p: argparse.ArgumentParser) -> None:
    """``--attack``: the one attack kind of a command that runs one."""
    p.add_argument("--attack", required=True, type=attack_name, metavar=attack_metavar(),
                   help=attack_help())


def add_attacks(p: argparse.ArgumentParser, default: Sequence[str] = ("CA+", "CA-", "QA+", "QA-"),
                what: str = "comma-separated attack kinds") -> None:
    """``--attacks``: the attack kinds of a command that runs several (default: the paper's)."""
    p.add_argument("--attacks", type=listed(attack_name, "attack names"), default=list(default),
                   help=attack_help(what))


def add_steps(p: argparse.ArgumentParser) -> None:
    """``--steps`` and ``--step-size`` of PGD, with the paper's defaults."""
    p.add_argument("--steps", type=integer(0, 100_000), default=None,
                   help="PGD iterations (default: paper, min(max(10, 2 eps / alpha), 30))")
    p.add_argument("--step-size", type=number(0.0, 1.0, low_open=True), default=None,
                   help="PGD step (default: paper, min(max(eps / 10, 1/255), 0.01))")


def add_threat(p: argparse.ArgumentParser, eps_required: bool = True,
               eps_default: float | None = None) -> None:
    """The threat model of a command that runs one eps: ``--eps``, the PGD steps and
    ``--random-start``."""
    add_eps(p, multiple=False, default=eps_default, required=eps_required)
    add_steps(p)
    p.add_argument("--random-start", action="store_true",
                   help="start PGD at a uniform point of the ball (paper: no)")


def add_execution(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--memory-budget`` and ``--compile`` (see core/execution.py)."""
    from advrank.core.execution import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="arithmetic of the attack's distance products (and, for bf16, the "
                        "model): fp32 reproduces the paper; tf32 and bf16 are faster on a GPU; "
                        "ranks are always measured in fp32")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="memory the attack may use, e.g. 4GiB (default: auto, 80%% of the "
                        "GPU's free memory or half the available RAM); batches that do not fit "
                        "run in sub-batches with the same results")
    p.add_argument("--compile", action="store_true",
                   help="fuse the per-step comparison passes with torch.compile (GPU, large "
                        "galleries; compiles once per shape)")


def _add_collection_options(g, cache: bool) -> None:
    """How the collection X is read and embedded (shared by every model of a command)."""
    g.add_argument("--query-fraction", type=number(0.0, 1.0, low_open=True), default=None,
                   help="measure retrieval with a deterministic, stratified query split of "
                        "this fraction of each class (queries vs the rest)")
    g.add_argument("--max-unreadable", type=number(0.0, 1.0), default=0.01,
                   help="skip (and report) undecodable pictures up to this fraction of the "
                        "collection; more is an error")
    g.add_argument("--workers", type=integer(0, 256), default=0,
                   help="processes decoding pictures while embedding")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="read pictures whose real path leaves the collection's folder (links, "
                        "CSV paths); by default they are skipped and counted")
    g.add_argument("--cache-dir", default=None,
                   help="where the collection's embeddings are cached (default: OUT/cache)"
                   if cache else "cache the collection's embeddings in this folder")


def add_target_options(p: argparse.ArgumentParser, cache: bool = False,
                       labelled: bool = False) -> None:
    """What is attacked: ``--checkpoint FILE`` (advrank's own model, its test set unless
    ``--data``), or ``--model SOURCE --data SOURCE`` with the source's options. ``labelled``:
    several models, each ``--checkpoint [NAME=]FILE`` or ``--model [NAME=]SOURCE`` (repeat),
    their own options as ``--weights NAME=FILE`` and the like (see :func:`target_specs`)."""
    from advrank.registry import MODEL_SOURCES

    sources = ", ".join(f"{n}:{MODEL_SOURCES.entry(n).info.get('argument', 'NAME')}"
                        for n in MODEL_SOURCES.names())
    g = p.add_argument_group("model and data (give --checkpoint, or --model with --data)")

    own: list[str] = []  # the options that describe one model (NAME= with several)

    def one(name: str, kind, help: str, form: str | None = None, **kw) -> None:
        if form is None:
            own.append(name.lstrip("-").replace("-", "_"))
        if labelled:
            kw["metavar"] = f"[NAME=]{kw.get('metavar') or name.lstrip('-').upper()}"
            g.add_argument(name, type=labelled_type(kind, form), action="append",
                           help=help + ("; repeat for each model" if form else
                                        " (NAME=: for that model alone)"),
                           **({"dest": "targets"} if form else {}), **kw)  # type: ignore[arg-type]
        else:
            g.add_argument(name, type=kind, help=help, **kw)

    one("--checkpoint", path_value, "an advrank checkpoint", "checkpoint", default=None)
    one("--model", model_source, f"an outside model: {sources}", "model", default=None,
        metavar="SOURCE")
    one("--weights", path_value, "--model's weights: a state_dict .pt/.pth (read with "
        "weights_only) or .safetensors (default: random weights, for testing only)",
        default=None)
    one("--pretrained", str, "--model's published weights, as its library loads them: "
        "torchvision's weights enum (DEFAULT or a member), timm's pretrained_cfg (Hugging Face "
        "hub or torch hub file), open_clip's TAG; from the library's cache or downloaded into "
        "it", default=None, metavar="TAG",
        **({} if labelled else {"nargs": "?", "const": "DEFAULT"}))
    one("--metric", str, "--model's ranking distance (default: cosine)", default=None,
        metavar="{" + ",".join(DISTANCES.names()) + "}")
    g.add_argument("--data", default=None, metavar="SOURCE",
                   help="the collection X: imagefolder:PATH (a sub-folder per class), "
                        "csv:FILE (path,label), or a dataset name (default for --checkpoint: "
                        "its test set)")
    one("--layer", str, "embed with this layer's pooled output instead of the pooled features",
        default=None)
    one("--embed-dim", integer(1, 65_536), "add a linear projection head of this size",
        default=None)
    one("--input-size", integer(8, 4096), "override the model's input size (H = W pixels)",
        default=None)
    one("--mean", float_list, "override the model's input mean, e.g. 0.5,0.5,0.5", default=None)
    one("--std", float_list, "override the model's input std, e.g. 0.5,0.5,0.5", default=None)
    _add_collection_options(g, cache)
    p.set_defaults(model_options=tuple(own))


BESIDE_EXACT = ", measured beside exact search (whose ranks stay the headline)"


def add_index(p: argparse.ArgumentParser, default: str | None = None, what: str = "") -> None:
    """``--index``: the nearest-neighbour search (see advrank/core/index.py)."""
    p.add_argument("--index", type=index_spec, default=default, metavar="INDEX",
                   help="nearest-neighbour search: exact, flat (FAISS brute force), hnsw "
                        "(HNSW32), ivfpq (IVF,PQ sized from the gallery) or a FAISS factory "
                        f"string such as IVF64,Flat{what}")


def add_queries(p: argparse.ArgumentParser) -> None:
    """``--queries``: a text query set for the candidate attacks and retrieval quality (the
    model needs a text tower)."""
    p.add_argument("--queries", type=query_set_value, default=None, metavar="SET",
                   help="text queries (a model with a text tower: open_clip:ARCH, clip-tiny): "
                        "text:FILE (one per line, a class after a tab) or prompts:TEMPLATE "
                        "(one per class, e.g. 'prompts:a photo of a {}'; several joined by |)")


def add_query_options(p: argparse.ArgumentParser) -> None:
    """``--oracle``, ``--feedback``, ``--query-budget``, ``--optimizer``: a query-only attack
    through a search's answers (choices from the ORACLES and OPTIMIZERS registries)."""
    from advrank.oracles import parse_feedback, split_oracle_spec
    from advrank.registry import OPTIMIZERS, ORACLES

    def oracle_spec(text: str) -> str:
        split_oracle_spec(text)
        return text.strip()

    def optimizer_name(text: str) -> str:
        return OPTIMIZERS.canonical(text.strip())

    def schema_spec(text: str) -> str:
        from advrank.oracles.schemas import get_schema

        get_schema(text)  # a missing or bad description file: refused at parsing
        return text.strip()

    oracles = ", ".join(f"{n}:{ORACLES.entry(n).info.get('argument', '')}"
                        for n in ORACLES.names())
    g = p.add_argument_group("query-only attack (black-box: the search's answers, no gradients)")
    g.add_argument("--oracle", type=as_type(oracle_spec, "oracle"), default=None,
                   metavar="{local[:INDEX],http://HOST:PORT}",
                   help=f"attack through this search instead of with gradients ({oracles}); "
                        "the attacks are still drawn from and measured on the local gallery")
    g.add_argument("--feedback", type=as_type(parse_feedback, "feedback"), default=None,
                   metavar="{full,topk:K,topk-scores:K}",
                   help="what the attacker sees: the full ranking (a simulation, the upper "
                        "bound), the top K ids with scores, or the top K ids (default: full)")
    g.add_argument("--query-budget", type=integer(1, 10**9), default=None, metavar="B",
                   help="queries per attack; none past it is sent (default: 1000)")
    g.add_argument("--optimizer", type=as_type(optimizer_name, "optimizer"), default=None,
                   metavar="{" + ",".join(OPTIMIZERS.names()) + "}",
                   help="the query-only optimiser (default: random, Square-style random search)")
    g.add_argument("--schema", type=as_type(schema_spec, "schema"), default=None,
                   metavar="NAME[:ARG]",
                   help="how the endpoint is asked and read: advrank (advrank serve, the "
                        "default) or json:FILE (a JSON search API described in FILE)")
    g.add_argument("--endpoint-differs", action="store_true",
                   help="the endpoint (--oracle http://...) is expected to differ from the "
                        "local copy: its calibration figures are recorded instead of refused")


QUERY_DEFAULTS = {"feedback": "full", "query_budget": 1000, "optimizer": "random"}


def add_pipeline(p: argparse.ArgumentParser) -> None:
    """``--pipeline`` and ``--through-pipeline`` (see advrank/core/pipeline.py)."""
    from advrank.registry import PIPELINES

    p.add_argument("--pipeline", type=pipeline_spec, default=None, metavar="PIPELINE",
                   help="the upload pipeline of a deployed search: the adversarial images are "
                        "measured after it too (figures *_pipeline): "
                        f"{', '.join(PIPELINES.names())} (jpeg:Q, Q in 1..100, e.g. jpeg:75)")
    p.add_argument("--through-pipeline", action="store_true",
                   help="attack through the pipeline (its differentiable approximation: "
                        "straight-through rounding, a DCT-domain JPEG) instead of on float "
                        "pixels")
