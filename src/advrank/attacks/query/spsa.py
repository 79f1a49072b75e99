"""SPSA (Spall, 1992; as an attack: Uesato et al., 2018): the gradient estimated from
antithetic Rademacher pairs ``x ± delta v``, followed by an Adam step projected into the
ball; the best queried candidate is returned. ``population`` queries per step.

``delta`` and ``lr`` are lengths of :mod:`advrank.attacks.query.schedule` (a fraction of eps
with a floor in 8-bit levels); the defaults come from the sweep in results/query-sweep/.
``SPSA.legacy`` holds the options of the earlier default (delta = eps/4, lr = eps/10).
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


@OPTIMIZERS.register("spsa")
class SPSA(QueryOptimizer):
    """``population`` (even), ``delta`` (the perturbation size) and ``lr`` (Adam's step
    length), each in pixels or None (``*_scale`` of eps, at least ``*_floor`` 8-bit levels,
    halved every ``half_life`` queries when set), ``beta1``/``beta2`` (Adam's moment decays),
    ``stop`` (end an attack once its goal is visible)."""

    name = "spsa"
    params = {"population": 20, "delta": None, "lr": None,
              "delta_scale": 0.25, "delta_floor": 8.0, "lr_scale": 0.1, "lr_floor": 2.0,
              "beta1": 0.9, "beta2": 0.999, "half_life": None, "stop": True}
    #: the options of the default before the sweep (results published until then)
    legacy = {"population": 20, "delta_scale": 0.25, "delta_floor": 1.0, "lr_scale": 0.1,
              "lr_floor": 1.0, "beta1": 0.9, "beta2": 0.999, "half_life": None,
              "stop": False}
    description = "simultaneous perturbation (Rademacher pairs) with Adam steps"

    def validate(self, options):
        options["population"] = check_population(options["population"], even=True)
        check_lengths(options, ("delta", "lr"), "SPSA")
        for key in ("beta1", "beta2"):
            options[key] = check_beta(options[key], f"SPSA {key}")
        return options

    def _length(self, name: str, eps: float, spent: int) -> float:
        o = self.options
        return length(o[name], eps, o[f"{name}_scale"], o[f"{name}_floor"], o["half_life"],
                      spent)

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        x = best.x.clone()
        o = self.options
        p, spent = o["population"], 0
        moments = Moments(x, o["beta1"], o["beta2"])
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            delta, lr = self._length("delta", ball.eps, spent), self._length("lr", ball.eps,
                                                                             spent)
            u = noise((x.shape[0], p // 2, *x.shape[1:]), generator, x.device, "rademacher")
            g, done = antithetic_gradient(objective, ball, x, u, delta, active, best)
            step = moments.adam(g, done)
            keep = done.to(x.device).view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(keep, ball.clip(x - lr * step), x)
            spent += p
