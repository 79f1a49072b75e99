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

from advrank.attacks.query.antithetic import AntitheticOptimizer
from advrank.attacks.query.base import check_population
from advrank.attacks.query.schedule import Moments, check_beta, check_lengths
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("nes")
class NES(AntitheticOptimizer):
    """``population`` (even: population / 2 antithetic pairs); the search radius ``sigma``
    and the sign-step length ``lr`` (pixels; None: ``*_scale`` of eps, at least ``*_floor``
    8-bit levels, halved every ``half_life`` queries when set); ``momentum`` (the decay of the
    gradient estimates' running mean whose sign is the step; 0: the estimate's own sign);
    ``stop`` (end an attack once its goal is visible)."""

    name = "nes"
    radius = "sigma"
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

    def moments(self, x):
        return Moments(x, self.options["momentum"])

    def direction(self, moments, g, done):
        return moments.momentum(g, done).sign()
