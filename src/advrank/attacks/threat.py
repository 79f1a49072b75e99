"""The threat model every attack states: L-inf ball of radius eps intersected with [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

from advrank.errors import AdvrankError


def paper_step_size(eps: float) -> float:
    """§4: alpha = min(max(eps / 10, 1 / 255), 0.01)."""
    return min(max(eps / 10.0, 1.0 / 255.0), 0.01)


def paper_steps(eps: float) -> int:
    """§4: eta = min(max(10, 2 eps / alpha), 30) PGD iterations."""
    return int(min(max(10.0, 2.0 * eps / paper_step_size(eps)), 30.0))


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
        if not 0.0 <= self.eps <= 1.0:
            raise AdvrankError(f"eps must lie in [0, 1] (pixel units), got {self.eps}")
        if self.step_size is not None and self.step_size <= 0:
            raise AdvrankError(f"step size must be positive, got {self.step_size}")
        if self.steps is not None and self.steps < 0:
            raise AdvrankError(f"steps must be >= 0, got {self.steps}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else paper_step_size(self.eps)

    @property
    def eta(self) -> int:
        return self.steps if self.steps is not None else paper_steps(self.eps)

    def describe(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "step_size": self.alpha, "steps": self.eta,
                "random_start": self.random_start}
