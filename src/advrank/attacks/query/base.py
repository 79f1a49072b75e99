"""What every query-only optimiser shares: the threat model as a projection (a
:class:`~advrank.attacks.threat.Ball` from ``LinfThreatModel.ball``, with the 8-bit grid of an
upload), the objective it minimises (:class:`CountedObjective`, every evaluation counted
against the per-attack budget; it and :class:`Best` live with the budget's ledger in
:mod:`advrank.attacks.query.budget`) and the calling convention (:class:`QueryOptimizer`).

An optimiser minimises ``objective(x [B, P, C, H, W], active [B]) -> [B, P]`` for B attacks
at once, P candidates each (its population), over the ball around ``x0 [B, C, H, W]``; values
are +inf where the budget did not let a candidate be sent. It stops an attack when its budget
cannot pay for another round and returns the best candidate it queried, so what it returns
was seen by the oracle. Hyper-parameters go to the constructor, data to :meth:`run`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from advrank.attacks.query.budget import Best, CountedObjective
from advrank.attacks.threat import GRID, Ball
from advrank.core.checks import check_number
from advrank.errors import AdvrankError
from advrank.registry import OPTIMIZERS


class QueryOptimizer:
    """Base class: ``params`` (defaults) validated by :meth:`validate`; :meth:`run`."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **params: Any):
        unknown = {k for k, v in params.items() if v is not None} - set(self.params)
        if unknown:
            raise AdvrankError(f"optimizer {self.name} takes no {', '.join(sorted(unknown))} "
                               f"option (it takes: {', '.join(self.params) or 'none'})")
        merged = {**self.params, **{k: v for k, v in params.items() if v is not None}}
        self.options = self.validate(merged)

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        return options

    def start(self, objective: CountedObjective, ball: Ball,
              start: torch.Tensor | None) -> Best:
        """The first candidate (``start`` projected into the ball, else the clean picture's
        own upload), queried once: the best so far."""
        x = ball.project(ball.x0 if start is None else start.to(ball.x0.device))
        return Best(x, objective(x[:, None])[:, 0])

    def run(self, objective: CountedObjective, ball: Ball, start: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimise ``objective`` over ``ball``, from ``start [B, C, H, W]`` (e.g. a transfer
        attack's output) or the clean picture: ``(best candidate [B, C, H, W], value [B])``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"optimizer": self.name, **self.options}


def get_optimizer(name: str | QueryOptimizer, **params: Any) -> QueryOptimizer:
    """An optimiser by registered name with its hyper-parameters (an instance passes)."""
    if isinstance(name, QueryOptimizer):
        return name
    return OPTIMIZERS.get(name)(**params)


def noise(shape, generator: torch.Generator | None, device, kind: str = "normal"):
    """Gaussian or Rademacher directions drawn on the CPU generator (reproducible whatever
    the device), moved to ``device``."""
    if kind == "normal":
        return torch.randn(shape, generator=generator).to(device)
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).float().to(device)


def antithetic_gradient(objective: CountedObjective, ball: Ball, x: torch.Tensor,
                        u: torch.Tensor, sigma: float, active: torch.Tensor,
                        best: Best) -> tuple[torch.Tensor, torch.Tensor]:
    """The finite-difference gradient estimate of ``objective`` at ``x [B, ...]`` from the
    antithetic pairs ``x ± sigma u`` (``u [B, h, ...]``; 2h queries per attack), the queried
    candidates projected (so each is a valid attack and may become ``best``). Returns
    ``(g [B, ...], done [B])``: done where every candidate of the attack was sent."""
    h = u.shape[1]
    cand = ball.project(x[:, None] + sigma * torch.cat([u, -u], 1))
    values = objective(cand, active)
    best.update(cand, values)
    done = torch.isfinite(values).all(1)
    diff = torch.where(done[:, None], values[:, :h] - values[:, h:], 0.0).to(x.device)
    g = (diff.view(*diff.shape, *([1] * (u.dim() - 2))) * u).mean(1) / (2 * sigma)
    return g, done


def relative(value: float | None, eps: float, fraction: float) -> float:
    """A step length in pixels: ``value``, or ``fraction * eps`` when None (at least one
    8-bit level, so steps move on the grid)."""
    return float(value) if value is not None else max(fraction * eps, 1.0 / GRID)


def check_population(value: Any, even: bool) -> int:
    check_number(value, "population", low=1, high=100_000, integer=True)
    if even and value % 2:
        raise AdvrankError(f"the population of an antithetic estimate must be even, got "
                           f"{value}")
    return int(value)


def check_antithetic(options: dict[str, Any], sizes: tuple[str, ...], owner: str
                     ) -> dict[str, Any]:
    """The options of an antithetic-pair estimator (NES, SPSA), checked in place: an even
    ``population``, and each of ``sizes`` (radii and step lengths, in pixels) None (a fraction
    of eps) or in (0, 1]."""
    options["population"] = check_population(options["population"], even=True)
    for key in sizes:
        if options[key] is not None:
            check_number(options[key], f"{owner} {key}", low=0.0, low_open=True, high=1.0)
    return options
