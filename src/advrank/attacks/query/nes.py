"""NES (Ilyas et al., 2018): the gradient estimated from antithetic Gaussian pairs
``x ± sigma u``, then a sign (PGD-style) step projected into the ball; the best queried
candidate is returned. ``population`` queries per step."""

from __future__ import annotations

import torch

from advrank.attacks.query.base import (
    QueryOptimizer,
    antithetic_gradient,
    check_antithetic,
    noise,
    relative,
)
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("nes")
class NES(QueryOptimizer):
    """``population`` (even: population / 2 antithetic pairs), ``sigma`` (search radius, in
    pixels; default eps / 4) and ``lr`` (sign-step length; default eps / 10)."""

    name = "nes"
    params = {"population": 20, "sigma": None, "lr": None}
    description = "natural evolution strategies, antithetic Gaussian pairs and sign steps"

    def validate(self, options):
        return check_antithetic(options, ("sigma", "lr"), "NES")

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        x = best.x.clone()
        p = self.options["population"]
        sigma = relative(self.options["sigma"], ball.eps, 0.25)
        lr = relative(self.options["lr"], ball.eps, 0.1)
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            u = noise((x.shape[0], p // 2, *x.shape[1:]), generator, x.device)
            g, done = antithetic_gradient(objective, ball, x, u, sigma, active, best)
            step = ball.clip(x - lr * g.sign())
            x = torch.where(done.to(x.device).view(-1, *([1] * (x.dim() - 1))), step, x)
