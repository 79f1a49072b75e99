"""Step lengths, search radii and moments shared by the query-only optimisers.

A length is a fraction of eps with a floor in 8-bit levels, ``max(scale * eps, floor / 255)``,
optionally halved every ``half_life`` queries (down to the floor again). One formula in eps
alone cannot serve from 1/255 to 0.3: at eps = 4/255 a tenth of eps is under half an 8-bit
level, which an upload rounds away and a top-k list never notices, while a fixed 2/255 (what
advorder uses) crawls at eps = 0.3. The scales, floors and half-lives that the optimisers
default to were chosen by measurement (``scripts/query_sweep.py``, results/query-sweep/).

Every schedule here depends on the queries spent so far, never on the budget, so a run is a
prefix of any longer one (what query checkpoints rely on).
"""

from __future__ import annotations

from typing import Any

import torch

from advrank.core.checks import check_flag, check_number
from advrank.errors import AdvrankError

LEVEL = 1.0 / 255.0  # one 8-bit level, in pixels


def length(value: float | None, eps: float, scale: float, floor: float,
           half_life: int | None = None, spent: int = 0) -> float:
    """A length in pixels: ``value`` when given (fixed), else ``max(scale * eps * 0.5 **
    (spent / half_life), floor / 255)``."""
    if value is not None:
        return float(value)
    decay = 1.0 if half_life is None else 0.5 ** (spent / half_life)
    return max(scale * eps * decay, floor * LEVEL)


def option_length(options: dict, name: str, eps: float, spent: int) -> float:
    """:func:`length` of the option ``name`` of an optimiser's ``options`` (its value, its
    ``NAME_scale`` and ``NAME_floor``, the shared ``half_life``) after ``spent`` queries."""
    return length(options[name], eps, options[f"{name}_scale"], options[f"{name}_floor"],
                  options["half_life"], spent)


def check_lengths(options: dict[str, Any], names: tuple[str, ...], owner: str) -> None:
    """Check in place, for each ``name`` of ``names``: ``name`` (None or a length in (0, 1]
    pixels), ``name_scale`` (a fraction of eps in (0, 4]) and ``name_floor`` (8-bit levels in
    [0, 255]); and ``half_life`` (None or queries >= 1) and ``stop`` (a bool) when present."""
    for name in names:
        if options[name] is not None:
            check_number(options[name], f"{owner} {name}", low=0.0, low_open=True, high=1.0)
        check_number(options[f"{name}_scale"], f"{owner} {name}_scale", low=0.0,
                     low_open=True, high=4.0)
        check_number(options[f"{name}_floor"], f"{owner} {name}_floor (8-bit levels)",
                     low=0.0, high=255.0)
    if options.get("half_life") is not None:
        options["half_life"] = int(check_number(options["half_life"], f"{owner} half_life "
                                                "(queries)", low=1, high=10**9, integer=True))
    if "stop" in options:
        check_flag(options["stop"], f"{owner} stop")


def check_beta(value: Any, name: str) -> float:
    """A moment decay in [0, 1)."""
    return float(check_number(value, name, low=0.0, high=1.0, high_open=True))


class Moments:
    """Per-attack Adam moments of gradient estimates ``g [B, ...]``: the first (``beta1``) and
    second (``beta2``) moment with bias correction, each attack counting its own steps, so an
    attack whose round was not sent whole keeps its state."""

    def __init__(self, like: torch.Tensor, beta1: float, beta2: float = 0.999):
        if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
            raise AdvrankError(f"moment decays must lie in [0, 1), got {beta1}, {beta2}")
        self.beta1, self.beta2 = beta1, beta2
        self.m, self.v = torch.zeros_like(like), torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], device=like.device)

    def _keep(self, keep: torch.Tensor) -> torch.Tensor:
        return keep.to(self.m.device).view(-1, *([1] * (self.m.dim() - 1)))

    def momentum(self, g: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The first moment after ``g`` (where ``keep [B]``): ``g`` itself when beta1 = 0.
        Its sign is Adam's sign step too (the bias correction and the second moment are
        positive), so a sign optimiser needs no more."""
        if self.beta1 == 0.0:
            self.m = torch.where(self._keep(keep), g, self.m)
        else:
            b = self.beta1
            self.m = torch.where(self._keep(keep), b * self.m + (1 - b) * g, self.m)
        return self.m

    def adam(self, g: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Adam's direction ``m_hat / (sqrt(v_hat) + 1e-12)`` after ``g`` (where ``keep``)."""
        k = self._keep(keep)
        b1, b2 = self.beta1, self.beta2
        self.t = self.t + keep.to(self.t.device).float()
        self.m = torch.where(k, b1 * self.m + (1 - b1) * g, self.m)
        self.v = torch.where(k, b2 * self.v + (1 - b2) * g * g, self.v)
        tt = self.t.clamp_min(1).view(-1, *([1] * (self.m.dim() - 1)))
        return (self.m / (1 - b1**tt)) / ((self.v / (1 - b2**tt)).sqrt() + 1e-12)
