"""The threat model every attack states: L-inf ball of radius eps intersected with [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

from advrank.core.checks import check_flag, check_number
from advrank.errors import AdvrankError


def paper_step_size(eps: float) -> float:
    """§4: alpha = min(max(eps / 10, 1 / 255), 0.01)."""
    return min(max(eps / 10.0, 1.0 / 255.0), 0.01)


def paper_steps(eps: float) -> int:
    """§4: eta = min(max(10, 2 eps / alpha), 30) PGD iterations."""
    return int(min(max(10.0, 2.0 * eps / paper_step_size(eps)), 30.0))


MAX_STEPS = 100_000  # far beyond any sensible PGD run; refuses typos such as 1e9


@dataclass(frozen=True)
class LinfThreatModel:
    """``||r||_inf <= eps`` and ``x + r in [0, 1]``, explored by ``steps`` sign-gradient steps.

    ``step_size``/``steps`` default to the paper's alpha and eta for this eps; PGD starts at the
    clean input unless ``random_start`` (uniform in the ball), as the paper does.
    """

    eps: float
    step_size: float | None = None
    steps: int | None = None
    random_start: bool = False
    norm: str = "Linf"

    def __post_init__(self):
        try:
            check_number(self.eps, "eps (pixel units)", low=0.0, high=1.0)
            if self.step_size is not None:
                check_number(self.step_size, "step size", low=0.0, low_open=True, high=1.0)
            if self.steps is not None:
                check_number(self.steps, "steps", low=0, high=MAX_STEPS, integer=True)
        except AdvrankError as exc:
            raise AdvrankError(f"threat model: {exc}") from None
        check_flag(self.random_start, "random_start")
        if self.norm != "Linf":
            raise AdvrankError(f"only the Linf threat model is implemented, got {self.norm!r}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else paper_step_size(self.eps)

    @property
    def eta(self) -> int:
        return int(self.steps) if self.steps is not None else paper_steps(self.eps)

    def describe(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "step_size": self.alpha, "steps": self.eta,
                "random_start": self.random_start}
