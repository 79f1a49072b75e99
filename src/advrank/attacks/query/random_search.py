"""Random search in the manner of the Square attack (Andriushchenko et al., 2020): start at a
vertex of the ball (random vertical stripes of ±eps, kept only when better than the start),
then each step set a random square window of the perturbation to ±eps (one random sign per
channel), keeping the change when the oracle scores it better. The window shrinks on the
Square attack's schedule, spread over the budget. ``population`` candidates per step.

The paper's Square attack itself (stripes taken whatever they score, windows never repeating
the current point, a schedule that need not follow the budget, early stop) is ``square``
(:mod:`advrank.attacks.query.square`); this one stays as it was, so that the results published
with it (the default optimiser before the sweep) reproduce."""

from __future__ import annotations

import torch

from advrank.attacks.query.base import Best, QueryOptimizer, check_population, noise
from advrank.attacks.query.square import square_masks, window_fraction
from advrank.core.checks import check_flag, check_number
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("random", aliases=("random-search",))
class RandomSearch(QueryOptimizer):
    """``p_init`` (the first window's share of the picture), ``population`` (windows tried
    per step), ``stripes`` (try the vertical-stripes start) and ``ties`` (accept a window
    that scores as well as the current one: a walk across the plateaus of top-k feedback)."""

    name = "random"
    params = {"p_init": 0.1, "population": 1, "stripes": True, "ties": True}
    description = "random search with shrinking square windows at the ball's vertices"

    def validate(self, options):
        check_number(options["p_init"], "p_init", low=0.0, low_open=True, high=1.0)
        options["population"] = check_population(options["population"], even=False)
        check_flag(options["stripes"], "stripes")
        check_flag(options["ties"], "ties")
        return options

    def _stripes(self, objective, ball, best: Best, generator) -> None:
        x0 = ball.x0
        b, c, _, w = x0.shape
        sign = noise((b, 1, c, 1, w), generator, x0.device, "rademacher")
        cand = ball.project(x0[:, None] + ball.eps * sign)
        best.update(cand, objective(cand, objective.affords(1)))

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        o = self.options
        if o["stripes"] and ball.eps > 0:
            self._stripes(objective, ball, best, generator)
        x0, p = ball.x0, o["population"]
        b, c, h, w = x0.shape
        steps = int(objective.counter.remaining.max()) // p
        step = 0
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            frac = window_fraction(o["p_init"], step, steps)
            side = int(min(h, w, max(1, round((frac * h * w) ** 0.5))))
            mask = square_masks(b, p, h, w, side, generator, x0.device)
            sign = noise((b, p, c, 1, 1), generator, x0.device, "rademacher")
            delta = best.x - x0
            cand = ball.project(x0[:, None] + torch.where(mask, ball.eps * sign,
                                                          delta[:, None]))
            best.update(cand, objective(cand, active), ties=o["ties"])
            step += 1
