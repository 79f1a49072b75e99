"""SPSA (Spall, 1992; as an attack: Uesato et al., 2018): the gradient estimated from
antithetic Rademacher pairs ``x ± delta v``, followed by an Adam step projected into the
ball; the best queried candidate is returned. ``population`` queries per step.

``delta`` and ``lr`` are lengths of :mod:`advrank.attacks.query.schedule` (a fraction of eps
with a floor in 8-bit levels); the defaults come from the sweep in results/query-sweep/.
``SPSA.legacy`` holds the options of the earlier default (delta = eps/4, lr = eps/10).
"""

from __future__ import annotations

from advrank.attacks.query.antithetic import AntitheticOptimizer
from advrank.attacks.query.base import check_population
from advrank.attacks.query.schedule import Moments, check_beta, check_lengths
from advrank.registry import OPTIMIZERS


@OPTIMIZERS.register("spsa")
class SPSA(AntitheticOptimizer):
    """``population`` (even), ``delta`` (the perturbation size) and ``lr`` (Adam's step
    length), each in pixels or None (``*_scale`` of eps, at least ``*_floor`` 8-bit levels,
    halved every ``half_life`` queries when set), ``beta1``/``beta2`` (Adam's moment decays),
    ``stop`` (end an attack once its goal is visible)."""

    name = "spsa"
    radius, noise_kind = "delta", "rademacher"
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

    def moments(self, x):
        return Moments(x, self.options["beta1"], self.options["beta2"])

    def direction(self, moments, g, done):
        return moments.adam(g, done)
