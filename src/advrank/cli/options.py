"""Option parsing shared by every subcommand: one parser class whose errors are one line, one
validating type per kind of option, the common options, and JSON/text output."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from advrank.core.checks import check_int, check_number
from advrank.core.io import strict_json
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS, DISTANCES


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: every mistake becomes an :class:`AdvrankError`, which
    ``main`` prints as ``advrank: error: ...`` with exit status 2."""

    def error(self, message: str):
        raise AdvrankError(f"{self.prog.removeprefix('advrank ')}: {message}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless its help already says it, or there is none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] or \
                default is argparse.SUPPRESS or not action.option_strings or action.nargs == 0:
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


# ------------------------------------------------------------------------------- value types


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _number(text: str) -> float:
    """A finite number; "8/255" (a fraction) is accepted too."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number, got {_short(text)}") from None
    except OverflowError:  # a fraction too large for a float
        value = math.inf
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {_short(text)}")
    return value


def _in_range(value: float | int, check) -> float | int:
    """The library's validator of that kind of value (one place for ranges), as argparse's."""
    try:
        return check(value)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           what: str = "a number") -> Callable[[str], float]:
    """argparse type: a finite number (fractions like 8/255 accepted) in a range."""
    def parse(text: str) -> float:
        return _in_range(_number(text), lambda v: check_number(v, "the value", low=low,
                                                               high=high, low_open=low_open))

    parse.__name__ = what
    return parse


def integer(low: int = 1, high: int = 10**9, what: str = "integer") -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {_short(text)}") from None
        return _in_range(value, lambda v: check_int(v, "the value", low=low, high=high))

    parse.__name__ = what
    return parse


def listed(item: Callable[[str], Any], what: str) -> Callable[[str], list]:
    """argparse type: comma-separated values of ``item``, duplicates removed (order kept)."""
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return list(dict.fromkeys(item(p) for p in parts))

    parse.__name__ = what
    return parse


def path_value(text: str) -> str:
    """argparse type: a file or folder path; an empty one is refused (it would silently mean
    the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


eps_value = number(0.0, 1.0, what="eps")  # pixel units: 0.03 or 8/255
positive_int = integer(1)
seed_value = integer(0, 2**63 - 1, "seed")


def attack_name(text: str) -> str:
    """argparse type: a registered attack name (aliases such as the Unicode minus accepted)."""
    try:
        return ATTACKS.canonical(text.strip())
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None


# ------------------------------------------------------------------------- common options


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
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")


def add_size(p: argparse.ArgumentParser, default: int | Sequence[int] | None = 1,
             multiple: bool = False) -> None:
    """The size of Q (w, CA) or C (m, QA): ``--k`` in every command, ``--w``/``--m`` accepted
    as spellings checked against the attack kind."""
    kind = listed(positive_int, "positive integers") if multiple else positive_int
    names = ["--k", "--ks"] if multiple else ["--k"]
    what = "comma-separated sizes" if multiple else "size"
    p.add_argument(*names, dest="k", type=kind, default=None, metavar="K",
                   help=f"{what} of Q (w, for CA) or C (m, for QA) (default: "
                        f"{','.join(map(str, default)) if multiple else default})")
    p.add_argument("--w", dest="w", type=kind, default=None, help="--k for CA attacks")
    p.add_argument("--m", dest="m", type=kind, default=None, help="--k for QA attacks")
    p.set_defaults(k_default=default)


def resolve_size(args, attacks: Sequence[str]):
    """The one size value of ``--k``/``--w``/``--m``; ``--w`` for a QA attack (or ``--m`` for
    CA) is refused rather than silently used."""
    given = {name: getattr(args, name) for name in ("k", "w", "m")
             if getattr(args, name) is not None}
    if len(given) > 1:
        raise AdvrankError(f"give the size once: --{' and --'.join(given)} were both given")
    if not given:
        return args.k_default
    (name, value), = given.items()
    if name != "k":
        for attack in attacks:
            size_name = ATTACKS.get(attack).size_name
            if size_name != name:
                raise AdvrankError(f"--{name} does not apply to {attack} (its size is "
                                   f"{size_name or 'not named'}; --k works for every attack)")
    return value


# --------------------------------------------------------------------------------- output


def emit(args, obj: dict, text: str) -> None:
    """One strict JSON object (``--json``) or the text, on stdout (rank 0 alone under
    torchrun: every process holds the same result)."""
    from advrank.core import distributed

    if not distributed.is_main():
        return
    if getattr(args, "json", False):
        print(strict_json(obj))
    else:
        print(text)


def log(args) -> Callable[[str], None]:
    """Progress lines on stderr unless ``--quiet``."""
    from advrank.core import distributed

    if getattr(args, "quiet", False) or not distributed.is_main():
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr)


def kind_options(args) -> dict[str, Any]:
    """The attack-kind options given on the command line (None = the kind's default)."""
    return {"xi": getattr(args, "xi", None), "g": getattr(args, "G", None),
            "sp_reduction": getattr(args, "sp_reduction", None)}


def add_kind_options(p: argparse.ArgumentParser) -> None:
    """The hyper-parameters of the query attacks (refused for kinds that do not take them)."""
    p.add_argument("--xi", type=number(0.0, 1e6), default=None,
                   help="SP weight for QA (default: the paper's, 1 for QA+ and 100 for QA-)")
    p.add_argument("--G", type=integer(0, 10_000), default=None,
                   help="size of C_SP for the SP term of QA (default: 5)")
    p.add_argument("--sp-reduction", default=None, choices=("mean", "sum"),
                   help="QA, Eq. 12: average the hinge terms over C and C_SP as the authors' "
                        "code does (default: mean, the reading that reproduces the paper's "
                        "tables) or sum them as Eq. 12 is printed")


def memory_size(text: str):
    """argparse type: ``auto`` (None: from the device) or a size such as 4GiB."""
    from advrank.core.execution import parse_bytes

    if text.strip().lower() == "auto":
        return None
    try:
        return parse_bytes(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def policy_from_args(args):
    """The :class:`~advrank.core.execution.ExecutionPolicy` of ``add_execution``'s options."""
    from advrank.core.execution import ExecutionPolicy

    return ExecutionPolicy(getattr(args, "precision", "fp32"),
                           getattr(args, "memory_budget", None),
                           bool(getattr(args, "compile", False)))


# --------------------------------------------------------------------- what to attack


def _model_source(text: str) -> str:
    """argparse type: ``SOURCE:ARGUMENT`` with a registered source (checked before any work)."""
    from advrank.models.sources import parse_source

    try:
        parse_source(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _floats(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers, repeats kept (``0.5,0.5,0.5``)."""
    return tuple(_number(part) for part in text.split(","))


def add_target_options(p: argparse.ArgumentParser, cache: bool = False) -> None:
    """What is attacked: ``--checkpoint FILE`` (advrank's own model, its test set unless
    ``--data``), or ``--model SOURCE --data SOURCE`` with the source's options."""
    from advrank.registry import MODEL_SOURCES

    sources = ", ".join(f"{n}:{MODEL_SOURCES.entry(n).info.get('argument', 'NAME')}"
                        for n in MODEL_SOURCES.names())
    g = p.add_argument_group("model and data (give --checkpoint, or --model with --data)")
    g.add_argument("--checkpoint", default=None, type=path_value, help="an advrank checkpoint")
    g.add_argument("--model", type=_model_source, default=None, metavar="SOURCE",
                   help=f"an outside model: {sources}")
    g.add_argument("--weights", default=None, type=path_value,
                   help="--model's weights: a state_dict .pt/.pth (read with weights_only) or "
                        ".safetensors (default: random weights, for testing only)")
    g.add_argument("--metric", default=None, metavar="{" + ",".join(DISTANCES.names()) + "}",
                   help="--model's ranking distance (default: cosine)")
    g.add_argument("--data", default=None, metavar="SOURCE",
                   help="the collection X: imagefolder:PATH (a sub-folder per class), "
                        "csv:FILE (path,label), or a dataset name (default for --checkpoint: "
                        "its test set)")
    g.add_argument("--layer", default=None,
                   help="embed with this layer's pooled output instead of the pooled features")
    g.add_argument("--embed-dim", type=integer(1, 65_536), default=None,
                   help="add a linear projection head of this size")
    g.add_argument("--input-size", type=integer(8, 4096), default=None,
                   help="override the model's input size (H = W pixels)")
    g.add_argument("--mean", type=_floats, default=None,
                   help="override the model's input mean, e.g. 0.5,0.5,0.5")
    g.add_argument("--std", type=_floats, default=None,
                   help="override the model's input std, e.g. 0.5,0.5,0.5")
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
    if cache:
        g.add_argument("--cache-dir", default=None,
                       help="where the collection's embeddings are cached (default: OUT/cache)")
    else:
        g.add_argument("--cache-dir", default=None,
                       help="cache the collection's embeddings in this folder")


def target_spec(args, cache_dir: str | None = None):
    """The :class:`~advrank.experiments.target.TargetSpec` of the parsed options, validated
    (exactly one of --checkpoint and --model; source options only with --model)."""
    from advrank.experiments.target import TargetSpec

    return TargetSpec(
        checkpoint=args.checkpoint, model=args.model, data=args.data, metric=args.metric,
        weights=args.weights, layer=args.layer, embed_dim=args.embed_dim,
        input_size=args.input_size, mean=args.mean, std=args.std,
        cache_dir=args.cache_dir or cache_dir, workers=args.workers,
        query_fraction=args.query_fraction, max_unreadable=args.max_unreadable,
        allow_outside_root=args.allow_outside_root).validate()


def load_target_from_args(args, cache_dir: str | None = None, split: str = "test", check=None):
    """:func:`~advrank.experiments.target.load_target` for the parsed options; ``check(|X|)``
    refuses options that do not fit the collection before it is embedded."""
    from advrank.experiments.target import load_target

    say = log(args)
    return load_target(target_spec(args, cache_dir), args.device, args.data_root, args.download,
                       split=split, progress=not args.quiet, check=check,
                       log=lambda m: say(f"advrank: {m}"))


def index_spec(text: str) -> str:
    """argparse type: an index preset (exact, flat, hnsw, ivfpq) or a FAISS factory string."""
    from advrank.core.index import check_index_spec

    try:
        return check_index_spec(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_index(p: argparse.ArgumentParser, default: str | None = None, what: str = "") -> None:
    """``--index``: the nearest-neighbour search (see advrank/core/index.py)."""
    p.add_argument("--index", type=index_spec, default=default, metavar="INDEX",
                   help="nearest-neighbour search: exact, flat (FAISS brute force), hnsw "
                        "(HNSW32), ivfpq (IVF,PQ sized from the gallery) or a FAISS factory "
                        f"string such as IVF64,Flat{what}")


def index_from_args(args, target):
    """The ``--index`` search over the target's gallery (None without ``--index``), saved in
    ``--cache-dir`` when one is given."""
    spec = getattr(args, "index", None)
    if spec is None:
        return None
    from advrank.core.index import build_index

    return build_index(target.gallery.embeddings, target.meta["metric"], spec,
                       getattr(args, "cache_dir", None), target.fingerprint,
                       lambda m: log(args)(f"advrank: {m}"))
