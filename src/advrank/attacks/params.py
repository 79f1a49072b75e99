"""The hyper-parameters an attack kind declares, once: name, type, default, help and range.

A kind lists them as ``parameters = (Param(...), ...)``; from that one declaration come

* the constructor's keywords and their checks (``ATTACKS.get("QA-")(xi=100)``);
* the kind's ``options``, which every result records (so the store's identity holds them);
* the command line's flags (``--xi``, ``--top-fraction``...; see ``advrank.cli.groups``),
  so a plugin kind's parameters appear in ``--help`` with no CLI edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advrank.core.checks import check_choice, check_flag, check_number
from advrank.errors import AdvrankError

#: the value types a parameter may have
PARAM_TYPES = (bool, int, float, str)
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of an attack kind.

    ``type``: bool, int, float or str; ``default``: its value when not given (None: the kind
    resolves it in ``validate``, e.g. QA's per-direction xi); ``low``/``high`` (inclusive
    unless ``low_open``) bound a number; ``choices`` restrict a str; ``flag``: the command-line
    name when ``--name-with-dashes`` would clash with another option; ``aliases``: further
    flag spellings (``--G`` for ``g``)."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name.isidentifier():
            raise AdvrankError(f"parameter name {self.name!r} is not an identifier")
        if self.type not in PARAM_TYPES:
            raise AdvrankError(f"parameter {self.name}: type must be one of bool, int, float, "
                               f"str, got {self.type!r}")

    @property
    def flags(self) -> list[str]:
        """The command-line spellings: ``--flag`` (default ``--name-with-dashes``), aliases."""
        return [f"--{self.flag or self.name.replace('_', '-')}",
                *(f"--{a}" for a in self.aliases)]

    def check(self, value: Any, owner: str = "") -> Any:
        """``value`` checked against the declaration (None passes: the kind's default)."""
        if value is None:
            return None
        what = f"{owner} {self.name}" if owner else self.name
        if self.type is bool:
            return check_flag(value, what)
        if self.type is str:
            if self.choices is not None:
                return check_choice(value, what, self.choices)
            if not isinstance(value, str):
                raise AdvrankError(f"{what} must be a string, got {value!r}")
            return value
        return check_number(value, what, low=self.low, high=self.high,
                            low_open=self.low_open, integer=self.type is int)

    def parse(self, text: str) -> Any:
        """The value of a command-line word, checked (bool: true/false, yes/no, 1/0)."""
        text = text.strip()
        if self.type is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise AdvrankError(f"expected true or false, got {text!r}")
            return text.lower() in _TRUE
        if self.type is str:
            return self.check(text)
        try:
            from fractions import Fraction

            value = self.type(Fraction(text)) if "/" in text else self.type(text)
        except (ValueError, ZeroDivisionError):
            kind = "an integer" if self.type is int else "a number"
            raise AdvrankError(f"expected {kind}, got {text!r}") from None
        return self.check(value)

    def describe(self) -> str:
        """``help`` with the allowed values and the default, as ``--help`` shows it."""
        allowed = ""
        if self.choices:
            allowed = f"; one of {', '.join(self.choices)}"
        elif self.type is bool:
            allowed = "; true or false"
        default = "" if self.default is None or "default" in self.help else \
            f" (default: {self.default})"
        return f"{self.help}{allowed}{default}"


#: the '-' attacks' pool (CA-, QA-; CA+ and QA+ accept it and ignore it, as they always have)
TOP_FRACTION = Param("top_fraction", float, 0.01,
                     "share of the ranking list the '-' attacks draw their targets from (the "
                     "paper's top 1%: 0.01)", low=0.0, high=1.0, low_open=True)


def params_from_defaults(defaults: dict[str, Any]) -> tuple[Param, ...]:
    """Declarations for an old-style ``params = {name: default}`` dict (plugins written before
    :class:`Param`): the type is the default's (str when the default is None)."""
    out = []
    for name, default in defaults.items():
        kind = type(default) if type(default) in PARAM_TYPES else str
        out.append(Param(name, kind, default, f"{name} (no description)"))
    return tuple(out)


def collect(kinds: Sequence[Any]) -> dict[str, tuple[Param, list[str]]]:
    """Every distinct parameter name across ``kinds`` (attack classes): its first declaration
    and the names of the kinds that take it, in registration order."""
    found: dict[str, tuple[Param, list[str]]] = {}
    for kind in kinds:
        for p in kind.parameters:
            found.setdefault(p.name, (p, []))[1].append(kind.name)
    return found


__all__ = ["PARAM_TYPES", "TOP_FRACTION", "Param", "collect", "params_from_defaults"]
