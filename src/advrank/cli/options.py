"""Option parsing shared by every subcommand: one parser class whose errors are one line, one
validating type per kind of option, the common options, and JSON/text output."""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
        where = self.prog.removeprefix("advrank").strip()  # the subcommand, if any
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands and "COMMAND" in message:  # `advrank` alone: say what to type
            message = (f"give a command: {', '.join(commands[0].choices)} "
                       "(advrank COMMAND --help for each)")
        raise AdvrankError(f"{where}: {message}" if where else message)


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


def eps_list(text: str) -> list[float]:
    """argparse type: one eps or comma-separated ones, in [0, 1] pixel units (``8/255`` or
    ``0.03``), with a hint for the common slip of giving grey levels (``8``)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected one or comma-separated eps values, got "
                                         f"{text!r}")
    out = []
    for part in parts:
        value = _number(part)
        if not 0.0 <= value <= 1.0:
            hint = f" (in [0, 1] pixel units: write {part}/255 for {part} grey levels)" \
                if 1.0 < value <= 255.0 else " (it is in [0, 1] pixel units)"
            raise argparse.ArgumentTypeError(f"eps must lie in [0, 1], got {part!r}{hint}")
        out.append(value)
    return list(dict.fromkeys(out))


eps_list.__name__ = "eps"


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


def format_eps(eps: float) -> str:
    """eps as logs show it: ``2/255`` where eps is an exact multiple of 1/255 (what users
    type), else ``0.03``."""
    from advrank.core.checks import format_eps as fmt

    return fmt(eps)


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


def num_attacks_for(num_attacks: int | None, n: int) -> int:
    """T for ``--num-attacks`` on an n-item collection, without the note (for checks)."""
    from advrank.attacks.selection import num_attacks_for as rule

    return rule(num_attacks, n)


def num_attacks_from_args(args, n: int) -> int:
    """T for ``--num-attacks`` on an n-item collection (the note goes to stderr)."""
    from advrank.attacks.selection import num_attacks_for

    say = log(args)
    return num_attacks_for(args.num_attacks, n, lambda m: say(f"advrank: note: {m}"))


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
    add_json(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or logs on stderr")


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json`` alone (a command with no device, seed or progress, e.g. ``export``)."""
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_common_no_data(p: argparse.ArgumentParser) -> None:
    """:func:`add_common` for a command that reads no dataset folder (``demo``)."""
    add_common(p, data=False)


def _paragraphs(doc: str | None) -> list[str]:
    """A docstring's paragraphs as ``--help`` shows them (raw): each on one line, for the
    terminal to wrap."""
    return [" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc or "").split("\n\n")]


@dataclass(frozen=True)
class Command:
    """One subcommand, declared: its ``name``, the function it ``run`` s, and ``options(p)``,
    which adds its own options in the order ``--help`` lists them (composed from the shared
    groups of this module). The docstring of ``options`` is the command's text: its first
    paragraph the one-line help, the others the description (unless ``description`` is
    given). The parser itself, the shared ``common`` options after the command's own and the
    function to run come from :meth:`add_to`, once for every command."""

    name: str
    run: Callable[[argparse.Namespace], None]
    options: Callable[[argparse.ArgumentParser], None]
    description: str | None = None
    common: Callable[[argparse.ArgumentParser], None] = add_common

    def add_to(self, sub, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
        """The command's parser, added to the ``add_subparsers`` action ``sub``."""
        summary, *text = _paragraphs(self.options.__doc__)
        p = sub.add_parser(self.name, help=summary, formatter_class=formatter,
                           description=self.description or "\n\n".join(text))
        self.options(p)
        self.common(p)
        p.set_defaults(func=self.run)
        return p


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


def _kind_dest(name: str) -> str:
    return f"kind_option_{name}"


def kind_options(args) -> dict[str, Any]:
    """The attack-kind options given on the command line (None = the kind's default), by
    parameter name, for every parameter ``add_kind_options`` made a flag for."""
    return {name: getattr(args, _kind_dest(name)) for name in getattr(args, "kind_params", ())}


def _param_type(param) -> Callable[[str], Any]:
    """argparse type: the declaration's own parsing and range check."""
    def parse(text: str) -> Any:
        try:
            return param.parse(text)
        except AdvrankError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = param.type.__name__
    return parse


def add_kind_options(p: argparse.ArgumentParser) -> None:
    """One flag per distinct hyper-parameter name across the registered attack kinds
    (``--xi``, ``--top-fraction``...), generated from the kinds' :class:`Param` declarations:
    a plugin kind's parameters appear with no CLI edit. A flag given for a kind that does not
    take it is refused when the kind is made (before any work)."""
    from advrank.attacks.params import collect

    found = collect([ATTACKS.get(name) for name in ATTACKS.names()])
    g = p.add_argument_group("attack-kind parameters (each applies to the kinds named)")
    for name, (param, kinds) in found.items():
        g.add_argument(*param.flags, dest=_kind_dest(name), type=_param_type(param),
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


def model_label(path, meta: dict) -> str:
    """How text output names a model: its file name and what it is (two c2f1/cosine
    checkpoints stay apart), e.g. ``robust.pt (c2f1/cosine)``."""
    from pathlib import Path

    return f"{Path(str(path)).name} ({meta.get('arch', '?')}/{meta.get('metric', '?')})"


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


def _label(text: str) -> tuple[str | None, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``; anything else (a path holding "=" in a folder
    name, a source such as ``timm:x``) -> ``(None, text)``."""
    name, sep, value = text.partition("=")
    if sep and name and value and not any(c in name for c in "/\\:"):
        return name, value
    return None, text


def _labelled(kind: Callable[[str], Any], form: str | None = None) -> Callable[[str], tuple]:
    """argparse type: ``[NAME=]VALUE`` with VALUE of ``kind``; ``form`` (checkpoint or model)
    tags the forms of one model, kept in command-line order."""
    def parse(text: str) -> tuple:
        name, value = _label(text)
        return (name, kind(value)) if form is None else (form, name, kind(value))

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


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
            g.add_argument(name, type=_labelled(kind, form), action="append",
                           help=help + ("; repeat for each model" if form else
                                        " (NAME=: for that model alone)"),
                           **({"dest": "targets"} if form else {}), **kw)
        else:
            g.add_argument(name, type=kind, help=help, **kw)

    one("--checkpoint", path_value, "an advrank checkpoint", "checkpoint", default=None)
    one("--model", _model_source, f"an outside model: {sources}", "model", default=None,
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
    one("--mean", _floats, "override the model's input mean, e.g. 0.5,0.5,0.5", default=None)
    one("--std", _floats, "override the model's input std, e.g. 0.5,0.5,0.5", default=None)
    _add_collection_options(g, cache)
    p.set_defaults(model_options=tuple(own))


def target_specs(args, cache_dir: str | None = None) -> list[tuple[str | None, Any]]:
    """The ``(NAME or None, TargetSpec)`` of each model of ``add_target_options(labelled=True)``,
    in command-line order, validated; a plain per-model option applies to every ``--model``,
    ``NAME=VALUE`` to that model alone (and wins over the plain one)."""
    from advrank.experiments.target import TargetSpec

    given = getattr(args, "targets", None) or []
    if not given:
        raise AdvrankError("give a model: --checkpoint FILE or --model SOURCE (with --data)")
    names = [name for _, name, _ in given if name is not None]
    if len(set(names)) != len(names):
        raise AdvrankError(f"model names must be distinct, got {', '.join(names)}")
    own: list[dict[str, Any]] = [{} for _ in given]
    for key in args.model_options:
        values = sorted(getattr(args, key) or [], key=lambda v: v[0] is not None)
        seen: set = set()
        for name, value in values:  # plain values first, named ones override them
            option = f"--{key.replace('_', '-')}"
            if name in seen:
                raise AdvrankError(f"{option} is given twice for "
                                   + (f"model {name}" if name else "every model"))
            if name is None and not any(form == "model" for form, _, _ in given):
                raise AdvrankError(f"{option} applies to --model, not to --checkpoint (a "
                                   "checkpoint carries its own weights, metric and input size)")
            if name is not None and name not in names:
                raise AdvrankError(f"{option} {name}=...: no model is named {name} (the models: "
                                   f"{', '.join(names) or 'none named'})")
            seen.add(name)
            for i, (form, label, _) in enumerate(given):
                if label == name or (name is None and form == "model"):
                    own[i][key] = value
    shared = {"data": args.data, "cache_dir": args.cache_dir or cache_dir,
              "workers": args.workers, "query_fraction": args.query_fraction,
              "max_unreadable": args.max_unreadable}
    return [(label, TargetSpec(**{form: value}, **shared, **own[i]).validate())
            for i, (form, label, value) in enumerate(given)]


def target_spec(args, cache_dir: str | None = None):
    """The :class:`~advrank.experiments.target.TargetSpec` of the parsed options, validated
    (exactly one of --checkpoint and --model; source options only with --model)."""
    from advrank.experiments.target import TargetSpec

    return TargetSpec(
        checkpoint=args.checkpoint, model=args.model, data=args.data, metric=args.metric,
        weights=args.weights, pretrained=args.pretrained, layer=args.layer,
        embed_dim=args.embed_dim,
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


#: ``add_index``'s note for the attacking commands
BESIDE_EXACT = ", measured beside exact search (whose ranks stay the headline)"


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


# ------------------------------------------------------------------- query-only attacks


def _as_type(check: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """argparse type from a library validator (its AdvrankError as argparse's message)."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except AdvrankError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


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
    g.add_argument("--oracle", type=_as_type(oracle_spec, "oracle"), default=None,
                   metavar="{local[:INDEX],http://HOST:PORT}",
                   help=f"attack through this search instead of with gradients ({oracles}); "
                        "the attacks are still drawn from and measured on the local gallery")
    g.add_argument("--feedback", type=_as_type(parse_feedback, "feedback"), default=None,
                   metavar="{full,topk:K,topk-scores:K}",
                   help="what the attacker sees: the full ranking (a simulation, the upper "
                        "bound), the top K ids with scores, or the top K ids (default: full)")
    g.add_argument("--query-budget", type=integer(1, 10**9), default=None, metavar="B",
                   help="queries per attack; none past it is sent (default: 1000)")
    g.add_argument("--optimizer", type=_as_type(optimizer_name, "optimizer"), default=None,
                   metavar="{" + ",".join(OPTIMIZERS.names()) + "}",
                   help="the query-only optimiser (default: random, Square-style random search)")
    g.add_argument("--schema", type=_as_type(schema_spec, "schema"), default=None,
                   metavar="NAME[:ARG]",
                   help="how the endpoint is asked and read: advrank (advrank serve, the "
                        "default) or json:FILE (a JSON search API described in FILE)")
    g.add_argument("--endpoint-differs", action="store_true",
                   help="the endpoint (--oracle http://...) is expected to differ from the "
                        "local copy: its calibration figures are recorded instead of refused")


QUERY_DEFAULTS = {"feedback": "full", "query_budget": 1000, "optimizer": "random"}
# ------------------------------------------------------------------------ upload pipeline


def pipeline_spec(text: str) -> str:
    """argparse type: an upload pipeline spec (none, png, jpeg:Q), in its canonical spelling."""
    from advrank.core.pipeline import get_pipeline

    try:
        return get_pipeline(text).spec
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def upload_threat(args, eps: float = 0.0):
    """The threat model at ``eps`` with ``add_pipeline``'s options (validated before any
    work: --through-pipeline needs --pipeline)."""
    from advrank.attacks.threat import LinfThreatModel

    return LinfThreatModel(eps, getattr(args, "step_size", None), getattr(args, "steps", None),
                           bool(getattr(args, "random_start", False)),
                           pipeline=getattr(args, "pipeline", None),
                           through_pipeline=bool(getattr(args, "through_pipeline", False)))
