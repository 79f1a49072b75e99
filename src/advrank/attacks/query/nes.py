"""NES (Ilyas et al., 2018): the gradient estimated from antithetic Gaussian pairs
``x ± sigma u``, then a sign (PGD-style) step along its momentum, projected into the ball; the
best queried candidate is returned. ``population`` queries per step.

The radius and the step are lengths of :mod:`advrank.attacks.query.schedule` (a fraction of
eps with a floor in 8-bit levels, optionally halved over the queries spent); the defaults come
from the sweep in results/query-sweep/. ``NES.legacy`` holds the options of the earlier default
(sigma = eps/4, step = eps/10, each at least one level, no momentum, no early stop), which the
published results before the sweep used.
"""

from __future__ import annotations

import torch

from advrank.attacks.query.base import (
    QueryOptimizer,
    antithetic_gradient,
    check_population,
    noise,
)
from advrank.attacks.query.schedule import Moments, check_beta, check_lengths, length
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("nes")
class NES(QueryOptimizer):
    """``population`` (even: population / 2 antithetic pairs); the search radius ``sigma``
    and the sign-step length ``lr`` (pixels; None: ``*_scale`` of eps, at least ``*_floor``
    8-bit levels, halved every ``half_life`` queries when set); ``momentum`` (the decay of the
    gradient estimates' running mean whose sign is the step; 0: the estimate's own sign);
    ``stop`` (end an attack once its goal is visible)."""

    name = "nes"
    params = {"population": 20, "sigma": None, "lr": None,
              "sigma_scale": 0.25, "sigma_floor": 4.0, "lr_scale": 0.1, "lr_floor": 2.0,
              "momentum": 0.5, "half_life": None, "stop": True}
    #: the options of the default before the sweep (results published until then)
    legacy = {"population": 20, "sigma_scale": 0.25, "sigma_floor": 1.0, "lr_scale": 0.1,
              "lr_floor": 1.0, "momentum": 0.0, "half_life": None, "stop": False}
    description = "natural evolution strategies, antithetic Gaussian pairs and sign steps"

    def validate(self, options):
        options["population"] = check_population(options["population"], even=True)
        check_lengths(options, ("sigma", "lr"), "NES")
        options["momentum"] = check_beta(options["momentum"], "NES momentum")
        return options

    def _length(self, name: str, eps: float, spent: int) -> float:
        o = self.options
        return length(o[name], eps, o[f"{name}_scale"], o[f"{name}_floor"], o["half_life"],
                      spent)

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        x = best.x.clone()
        p = self.options["population"]
        moments, spent = Moments(x, self.options["momentum"]), 0
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            sigma, lr = self._length("sigma", ball.eps, spent), self._length("lr", ball.eps,
                                                                             spent)
            u = noise((x.shape[0], p // 2, *x.shape[1:]), generator, x.device)
            g, done = antithetic_gradient(objective, ball, x, u, sigma, active, best)
            step = ball.clip(x - lr * moments.momentum(g, done).sign())
            x = torch.where(done.to(x.device).view(-1, *([1] * (x.dim() - 1))), step, x)
            spent += p
