"""The CLI's value types: one validating argparse type per kind of option value (numbers and
ranges, eps, paths, attack names, index and pipeline specs...), each a library validator's
AdvrankError turned into argparse's one-line message."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from advrank.core.checks import check_int, check_number
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS


def shorten(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def parse_number(text: str) -> float:
    """A finite number; "8/255" (a fraction) is accepted too."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number, got {shorten(text)}") from None
    except OverflowError:  # a fraction too large for a float
        value = math.inf
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {shorten(text)}")
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
        return _in_range(parse_number(text), lambda v: check_number(v, "the value", low=low,
                                                               high=high, low_open=low_open))

    parse.__name__ = what
    return parse


def integer(low: int = 1, high: int = 10**9, what: str = "integer") -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {shorten(text)}") from None
        return int(_in_range(value, lambda v: check_int(v, "the value", low=low, high=high)))

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


def query_set_value(text: str) -> str:
    """argparse type: a text query set, ``text:FILE`` (the file must exist) or
    ``prompts:TEMPLATE`` (one ``{}`` per template)."""
    from advrank.data.texts import parse_query_spec

    try:
        parse_query_spec(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
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
        value = parse_number(part)
        if not 0.0 <= value <= 1.0:
            hint = f" (in [0, 1] pixel units: write {part}/255 for {part} grey levels)" \
                if 1.0 < value <= 255.0 else " (it is in [0, 1] pixel units)"
            raise argparse.ArgumentTypeError(f"eps must lie in [0, 1], got {part!r}{hint}")
        out.append(value)
    return list(dict.fromkeys(out))


eps_list.__name__ = "eps"


def format_eps(eps: float) -> str:
    """eps as logs show it: ``2/255`` where eps is an exact multiple of 1/255 (what users
    type), else ``0.03``."""
    from advrank.core.checks import format_eps as fmt

    return fmt(eps)


def attack_name(text: str) -> str:
    """argparse type: a registered attack name (aliases such as the Unicode minus accepted)."""
    try:
        return ATTACKS.canonical(text.strip())
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("the value ")) from None


def param_type(param) -> Callable[[str], Any]:
    """argparse type: the declaration's own parsing and range check."""
    def parse(text: str) -> Any:
        try:
            return param.parse(text)
        except AdvrankError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = param.type.__name__
    return parse


def memory_size(text: str):
    """argparse type: ``auto`` (None: from the device) or a size such as 4GiB."""
    from advrank.core.execution import parse_bytes

    if text.strip().lower() == "auto":
        return None
    try:
        return parse_bytes(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_source(text: str) -> str:
    """argparse type: ``SOURCE:ARGUMENT`` with a registered source (checked before any work)."""
    from advrank.models.sources import parse_source

    try:
        parse_source(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers, repeats kept (``0.5,0.5,0.5``)."""
    return tuple(parse_number(part) for part in text.split(","))


def _label(text: str) -> tuple[str | None, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``; anything else (a path holding "=" in a folder
    name, a source such as ``timm:x``) -> ``(None, text)``."""
    name, sep, value = text.partition("=")
    if sep and name and value and not any(c in name for c in "/\\:"):
        return name, value
    return None, text


def labelled_type(kind: Callable[[str], Any], form: str | None = None) -> Callable[[str], tuple]:
    """argparse type: ``[NAME=]VALUE`` with VALUE of ``kind``; ``form`` (checkpoint or model)
    tags the forms of one model, kept in command-line order."""
    def parse(text: str) -> tuple:
        name, value = _label(text)
        return (name, kind(value)) if form is None else (form, name, kind(value))

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def index_spec(text: str) -> str:
    """argparse type: an index preset (exact, flat, hnsw, ivfpq) or a FAISS factory string."""
    from advrank.core.index import check_index_spec

    try:
        return check_index_spec(text)
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def as_type(check: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """argparse type from a library validator (its AdvrankError as argparse's message)."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except AdvrankError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


def pipeline_spec(text: str) -> str:
    """argparse type: an upload pipeline spec (none, png, jpeg:Q), in its canonical spelling."""
    from advrank.core.pipeline import get_pipeline

    try:
        return get_pipeline(text).spec
    except AdvrankError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
