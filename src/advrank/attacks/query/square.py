"""The Square attack's random search (Andriushchenko et al., ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"), L-inf, from the paper's
definition:

1. start at vertical stripes: each column of each channel at +eps or -eps at random (the
   paper's initialisation, taken as the current point whatever it scores; ``stripes``:
   ``always``, as the paper, ``better``, only when it scores at least as well as the clean
   picture (a ranking at large eps may lose every visible member to the stripes, and a walk
   from there sees nothing), or ``off``);
2. each step, draw a square window of side h = round(sqrt(p * H * W)) at a uniform position
   and, for each channel, one value rho from {-2 eps, +2 eps}; add rho to the window and
   project into the ball, which sets the window to ±eps (a window that would not change is
   drawn with the opposite sign, so no query repeats the current point);
3. keep the candidate when it scores better than the current point (``ties``: or as well,
   a walk across the plateaus of top-k feedback).

p starts at ``p_init`` and halves at the paper's iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 of 10,000, laid over ``horizon`` queries (the paper's 10,000 by default;
None: the budget, as the authors' code rescales it). A fixed horizon makes a run a prefix of
any longer one. With a ``start`` (transfer then query) the search starts there, not at
stripes. ``population`` windows are tried per step from the same current point (the paper's
is 1).
"""

from __future__ import annotations

import torch

from advrank.attacks.query.base import QueryOptimizer, check_population, noise
from advrank.core.checks import check_flag, check_number
from advrank.errors import AdvrankError
from advrank.registry import OPTIMIZERS

#: where the search starts: the paper's stripes whatever they score, only when not worse than
#: the clean picture, or the clean picture
STRIPES = ("always", "better", "off")
#: the Square attack's schedule: at these of 10,000 iterations the window's share halves
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init: float, step: int, steps: int) -> float:
    """The share of the picture a window covers at ``step`` of ``steps``."""
    at = int(step / max(1, steps) * 10_000)
    return p_init / 2 ** sum(at > h for h in HALVINGS)


def window_side(fraction: float, h: int, w: int) -> int:
    """The side of a square covering ``fraction`` of an ``h`` x ``w`` picture (1 to min(h, w))."""
    return int(min(h, w, max(1, round((fraction * h * w) ** 0.5))))


def square_masks(b: int, p: int, h: int, w: int, side: int, generator, device) -> torch.Tensor:
    """``[b, p, 1, h, w]`` boolean masks of random ``side`` x ``side`` windows."""
    r0 = torch.randint(0, h - side + 1, (b, p, 1), generator=generator).to(device)
    c0 = torch.randint(0, w - side + 1, (b, p, 1), generator=generator).to(device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_r = (rows >= r0) & (rows < r0 + side)  # [b, p, h]
    in_c = (cols >= c0) & (cols < c0 + side)  # [b, p, w]
    return (in_r[..., :, None] & in_c[..., None, :])[:, :, None]


def stripes(ball, generator) -> torch.Tensor:
    """``[B, C, H, W]``: the vertical-stripes vertex (each column and channel ±eps)."""
    b, c, _, w = ball.x0.shape
    sign = noise((b, c, 1, w), generator, ball.x0.device, "rademacher")
    return ball.project(ball.x0 + ball.eps * sign)


def windows(ball, current: torch.Tensor, mask: torch.Tensor, sign: torch.Tensor
            ) -> torch.Tensor:
    """``[B, P, C, H, W]``: ``current [B, C, H, W]`` with each window ``mask [B, P, 1, H, W]``
    set to ``eps * sign [B, P, C, 1, 1]`` and projected; a candidate equal to ``current``
    takes the opposite signs instead."""
    delta = (current - ball.x0)[:, None]
    cand = ball.project(ball.x0[:, None] + torch.where(mask, ball.eps * sign, delta))
    same = (cand == current[:, None]).flatten(2).all(-1)  # [B, P]
    if same.any():
        flipped = ball.project(ball.x0[:, None] + torch.where(mask, -ball.eps * sign, delta))
        cand = torch.where(same.to(cand.device)[:, :, None, None, None], flipped, cand)
    return cand


@OPTIMIZERS.register("square")
class Square(QueryOptimizer):
    """``p_init`` (the first window's share of the picture), ``horizon`` (queries the window
    schedule spans; None: the budget), ``stripes`` (``always``, ``better`` or ``off``: the
    start), ``population`` (windows per step), ``ties`` (accept a window that scores as well
    as the current point), ``stop`` (end an attack once its goal is visible)."""

    name = "square"
    params = {"p_init": 0.1, "horizon": 10_000, "stripes": "better", "population": 1,
              "ties": True, "stop": True}
    #: the paper's own settings (its MNIST p_init; stripes taken whatever they score)
    paper = {"p_init": 0.3, "stripes": "always", "ties": False}
    description = "the Square attack: stripes, then square windows of ±eps (L-inf)"

    def validate(self, options):
        check_number(options["p_init"], "square p_init", low=0.0, low_open=True, high=1.0)
        if options["horizon"] is not None:
            options["horizon"] = int(check_number(options["horizon"], "square horizon",
                                                  low=1, high=10**9, integer=True))
        if options["stripes"] not in STRIPES:
            raise AdvrankError(f"square stripes must be one of {', '.join(STRIPES)}, got "
                               f"{options['stripes']!r}")
        options["population"] = check_population(options["population"], even=False)
        check_flag(options["ties"], "square ties")
        check_flag(options["stop"], "square stop")
        return options

    def _init(self, objective, ball, best, start, generator):
        """The current point and its value ``[B]``: stripes (unless a start is given)."""
        cur, value = best.x.clone(), best.value.clone()
        active = objective.affords(1)
        how = self.options["stripes"]
        if start is not None or how == "off" or ball.eps == 0 or not active.any():
            return cur, value
        x = stripes(ball, generator)
        v = objective(x[:, None], active)
        best.update(x[:, None], v, met=objective.met)
        sent = torch.isfinite(v[:, 0]) & ((v[:, 0] <= value) if how == "better" else True)
        cur = torch.where(sent.to(cur.device).view(-1, *([1] * (cur.dim() - 1))), x, cur)
        return cur, torch.where(sent, v[:, 0], value)

    def run(self, objective, ball, start=None, generator=None):
        best = self.start(objective, ball, start)
        o = self.options
        cur, value = self._init(objective, ball, best, start, generator)
        b, c, h, w = ball.x0.shape
        p, spent = o["population"], 0
        horizon = o["horizon"] or int(objective.counter.remaining.max())
        while True:
            active = objective.affords(p)
            if not active.any():
                return best.x, best.value
            side = window_side(window_fraction(o["p_init"], spent, horizon), h, w)
            mask = square_masks(b, p, h, w, side, generator, ball.x0.device)
            sign = noise((b, p, c, 1, 1), generator, ball.x0.device, "rademacher")
            cand = windows(ball, cur, mask, sign)
            values = objective(cand, active)
            best.update(cand, values, met=objective.met)
            v, j = values.min(1)
            accept = ((v <= value) if o["ties"] else (v < value)) & torch.isfinite(v)
            pick = cand[torch.arange(b, device=cand.device), j.to(cand.device)]
            cur = torch.where(accept.to(cur.device).view(-1, 1, 1, 1), pick, cur)
            value = torch.where(accept, v, value)
            spent += p
