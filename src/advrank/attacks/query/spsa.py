"""SPSA (Spall, 1992; as an attack: Uesato et al., 2018): the gradient estimated from
antithetic Rademacher pairs ``x ± delta v``, followed by an Adam step projected into the
ball; the best queried candidate is returned. ``population`` queries per step."""

from __future__ import annotations

import torch

from advrank.attacks.query.base import (
    QueryOptimizer,
    antithetic_gradient,
    check_antithetic,
    noise,
    relative,
)
from advrank.core.checks import check_number
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("spsa")
class SPSA(QueryOptimizer):
    """``population`` (even), ``delta`` (perturbation size in pixels; default eps / 4), ``lr``
    (Adam step length; default eps / 10), ``beta1``/``beta2`` (Adam's moment decays)."""

    name = "spsa"
    params = {"population": 20, "delta": None, "lr": None, "beta1": 0.9, "beta2": 0.999}
    description = "simultaneous perturbation (Rademacher pairs) with Adam steps"

    def validate(self, options):
        check_antithetic(options, ("delta", "lr"), "SPSA")
        for key in ("beta1", "beta2"):
            check_number(options[key], f"SPSA {key}", low=0.0, high=1.0, high_open=True)
        return options

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        x = best.x.clone()
        o = self.options
        p, b1, b2 = o["population"], o["beta1"], o["beta2"]
        delta = relative(o["delta"], ball.eps, 0.25)
        lr = relative(o["lr"], ball.eps, 0.1)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        t = torch.zeros(x.shape[0], device=x.device)  # Adam's step count, per attack
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            u = noise((x.shape[0], p // 2, *x.shape[1:]), generator, x.device, "rademacher")
            g, done = antithetic_gradient(objective, ball, x, u, delta, active, best)
            keep = done.to(x.device).view(-1, *([1] * (x.dim() - 1)))
            t = t + done.to(t.device).float()
            m = torch.where(keep, b1 * m + (1 - b1) * g, m)
            v = torch.where(keep, b2 * v + (1 - b2) * g * g, v)
            tt = t.clamp_min(1).view(-1, *([1] * (x.dim() - 1)))
            step = (m / (1 - b1**tt)) / ((v / (1 - b2**tt)).sqrt() + 1e-12)
            x = torch.where(keep, ball.clip(x - lr * step), x)
