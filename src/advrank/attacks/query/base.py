"""What every query-only optimiser shares: the threat model as a projection (:class:`Ball`,
with the 8-bit grid of an upload), the objective it minimises (:class:`CountedObjective`, every
evaluation counted against the per-attack budget) and the calling convention
(:class:`QueryOptimizer`).

An optimiser minimises ``objective(x [B, P, C, H, W], active [B]) -> [B, P]`` for B attacks
at once, P candidates each (its population), over the ball around ``x0 [B, C, H, W]``; values
are +inf where the budget did not let a candidate be sent. It stops an attack when its budget
cannot pay for another round and returns the best candidate it queried, so what it returns
was seen by the oracle. Hyper-parameters go to the constructor, data to :meth:`run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from advrank.core.checks import check_finite, check_number
from advrank.errors import AdvrankError
from advrank.oracles.base import QueryCounter, granted
from advrank.registry import OPTIMIZERS

GRID = 255.0  # 8-bit samples


class Ball:
    """``{x : ||x - x0||_inf <= eps} ∩ [0, 1]``, on the 8-bit grid when ``eight_bit`` (the
    bounds rounded inwards, so a quantised candidate still lies in the ball; where no grid
    value does, the picture's own 8-bit upload is the only candidate)."""

    def __init__(self, x0: torch.Tensor, eps: float, eight_bit: bool = False):
        check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
        self.x0, self.eps, self.eight_bit = x0.detach(), float(eps), bool(eight_bit)
        lo, hi = (x0 - eps).clamp_min(0.0), (x0 + eps).clamp_max(1.0)
        if self.eight_bit:
            lo, hi = torch.ceil(lo * GRID - 1e-4) / GRID, torch.floor(hi * GRID + 1e-4) / GRID
            own = torch.round(x0 * GRID) / GRID
            empty = lo > hi
            lo, hi = torch.where(empty, own, lo), torch.where(empty, own, hi)
        self.lo, self.hi = lo, hi

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = x.dim() - self.lo.dim()  # candidates [B, P, ...] around x0 [B, ...]
        shape = (self.lo.shape[0],) + (1,) * extra + tuple(self.lo.shape[1:])
        return self.lo.reshape(shape), self.hi.reshape(shape)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``[B, ...]`` or ``[B, P, ...]``) clipped into the ball (off the grid)."""
        lo, hi = self._bounds(x)
        return torch.max(torch.min(x, hi), lo)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the ball and, when ``eight_bit``, rounded to the grid: a
        candidate that may be sent."""
        x = self.clip(x)
        return self.clip(torch.round(x * GRID) / GRID) if self.eight_bit else x


class CountedObjective:
    """``evaluate(x [N, C, H, W], rows [N]) -> [N]`` (rows: each candidate's attack) as an
    optimiser's objective over ``[B, P, ...]``, each request first granted by ``counter``.
    ``evaluate`` may also return ``(values [N], met [N] bool)``: where the kind's score sees
    the attack's goal in the answer (early stop). ``met [B, P]`` then holds the last call's,
    ``reached [B]`` every attack that has met its goal, which :meth:`affords` stops; unless
    ``stopping`` is False (an optimiser without early stop sets it so): then no answer counts
    as meeting a goal."""

    def __init__(self, evaluate: Callable[[torch.Tensor, torch.Tensor], Any],
                 counter: QueryCounter):
        self.evaluate, self.counter = evaluate, counter
        self.stopping = True
        self.reached = torch.zeros(counter.used.shape, dtype=torch.bool)
        self.met = torch.zeros(counter.used.shape[0], 0, dtype=torch.bool)

    def __call__(self, x: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        flat, rows, sent = granted(self.counter, x, active)
        out = torch.full(sent.shape, math.inf)
        self.met = torch.zeros(sent.shape, dtype=torch.bool)
        if rows.numel():
            got = self.evaluate(flat, rows)
            values, met = got if isinstance(got, tuple) else (got, None)
            out[sent] = check_finite(values.detach().float().cpu(), "the query-only objective")
            if met is not None and self.stopping:
                self.met[sent] = met.detach().bool().cpu()
                self.reached |= self.met.any(1)
        return out

    def affords(self, cost: int) -> torch.Tensor:
        """``[B]``: the attacks whose budget pays for ``cost`` more queries and whose goal is
        not met yet."""
        return (self.counter.remaining >= cost) & ~self.reached


class Best:
    """The best candidate queried so far per attack: ``x [B, ...]``, its value ``[B]`` and
    ``met [B]`` (it meets the attack's goal: such a candidate beats any that does not)."""

    def __init__(self, x: torch.Tensor, value: torch.Tensor, met: torch.Tensor | None = None):
        self.x, self.value = x.clone(), value.clone()
        self.met = torch.zeros(value.shape, dtype=torch.bool) if met is None else met.clone()

    def update(self, cand: torch.Tensor, values: torch.Tensor, ties: bool = False,
               met: torch.Tensor | None = None) -> None:
        """Keep each attack's best of ``cand [B, P, ...]`` (``values [B, P]``) when it beats
        the best so far (or equals it, with ``ties``); with ``met [B, P]``, a candidate that
        meets the goal comes first, then the lower value."""
        hit = torch.zeros(values.shape, dtype=torch.bool) if met is None else met.cpu()
        any_hit = hit.any(1) if hit.numel() else torch.zeros(values.shape[0], dtype=torch.bool)
        v, j = torch.where(any_hit[:, None] & ~hit, math.inf, values).min(1)
        better = (v <= self.value) if ties else (v < self.value)
        better &= torch.isfinite(v) & (any_hit | ~self.met)
        better |= any_hit & ~self.met
        pick = cand[torch.arange(cand.shape[0], device=cand.device), j.to(cand.device)]
        mask = better.to(cand.device).view(-1, *([1] * (cand.dim() - 2)))
        self.x = torch.where(mask, pick, self.x)
        self.value = torch.where(better, v, self.value)
        self.met |= better & any_hit


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

    @property
    def early_stop(self) -> bool:
        """Whether an attack stops once its goal is visible in the feedback (option
        ``stop``): the caller then hands the kind's goal to the objective."""
        return bool(self.options.get("stop", False))

    def start(self, objective: CountedObjective, ball: Ball,
              start: torch.Tensor | None) -> Best:
        """The first candidate (``start`` projected into the ball, else the clean picture's
        own upload), queried once: the best so far. The objective learns whether this
        optimiser stops at a goal."""
        objective.stopping = self.early_stop
        x = ball.project(ball.x0 if start is None else start.to(ball.x0.device))
        value = objective(x[:, None])[:, 0]
        return Best(x, value, objective.met[:, 0] if objective.met.numel() else None)

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
    best.update(cand, values, met=objective.met)
    done = torch.isfinite(values).all(1)
    diff = torch.where(done[:, None], values[:, :h] - values[:, h:], 0.0).to(x.device)
    g = (diff.view(*diff.shape, *([1] * (u.dim() - 2))) * u).mean(1) / (2 * sigma)
    return g, done


def check_population(value: Any, even: bool) -> int:
    check_number(value, "population", low=1, high=100_000, integer=True)
    if even and value % 2:
        raise AdvrankError(f"the population of an antithetic estimate must be even, got "
                           f"{value}")
    return int(value)
