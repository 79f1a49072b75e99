"""What NES and SPSA share: a step along a gradient estimated from antithetic pairs ``x ±
r u`` (:func:`~advrank.attacks.query.base.antithetic_gradient`), ``population`` queries per
step, projected into the ball; the best queried candidate is returned. A subclass names its
radius option (``radius``), its directions (``noise_kind``) and how the estimates become a
step (:meth:`moments`, :meth:`direction`)."""

from __future__ import annotations

from typing import ClassVar

import torch

from advrank.attacks.query.base import QueryOptimizer, antithetic_gradient, noise
from advrank.attacks.query.schedule import Moments, option_length


class AntitheticOptimizer(QueryOptimizer):
    """Base class of the antithetic-pair optimisers (see the module docstring)."""

    radius: ClassVar[str] = "sigma"
    noise_kind: ClassVar[str] = "normal"

    def moments(self, x: torch.Tensor) -> Moments:
        """The running moments of the gradient estimates for attacks ``x [B, ...]``."""
        raise NotImplementedError

    def direction(self, moments: Moments, g: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """The step direction ``[B, ...]`` from the estimates ``g`` of the attacks ``done``."""
        raise NotImplementedError

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        x = best.x.clone()
        p, spent, moments = self.options["population"], 0, self.moments(x)
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            radius = option_length(self.options, self.radius, ball.eps, spent)
            lr = option_length(self.options, "lr", ball.eps, spent)
            u = noise((x.shape[0], p // 2, *x.shape[1:]), generator, x.device, self.noise_kind)
            g, done = antithetic_gradient(objective, ball, x, u, radius, active, best)
            step = ball.clip(x - lr * self.direction(moments, g, done))
            x = torch.where(done.to(x.device).view(-1, *([1] * (x.dim() - 1))), step, x)
            spent += p
