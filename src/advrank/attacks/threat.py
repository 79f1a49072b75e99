"""The threat model every attack states: L-inf ball of radius eps intersected with [0, 1], and
the upload pipeline (:mod:`advrank.core.pipeline`) the perturbed picture goes through before a
deployed search embeds it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advrank.core.checks import check_flag, check_number
from advrank.core.pipeline import ImagePipeline, NoPipeline, get_pipeline
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

    ``pipeline`` (an :class:`~advrank.core.pipeline.ImagePipeline` or its spec, ``png``,
    ``jpeg:75``): what a deployed search does to the picture before embedding it; the
    protocol measures the adversarial images after it too. ``through_pipeline``: PGD attacks
    the model behind the pipeline's differentiable approximation instead of the bare model.
    """

    eps: float
    step_size: float | None = None
    steps: int | None = None
    random_start: bool = False
    norm: str = "Linf"
    pipeline: ImagePipeline | str | None = None
    through_pipeline: bool = False

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
        pipeline = get_pipeline(self.pipeline)
        # "none" is no pipeline: the same threat model (and results) as the paper's
        object.__setattr__(self, "pipeline", None if isinstance(pipeline, NoPipeline)
                           else pipeline)
        check_flag(self.through_pipeline, "through_pipeline")
        if self.through_pipeline and self.pipeline is None:
            raise AdvrankError("attacking through the pipeline needs a pipeline (png, jpeg:Q)")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else paper_step_size(self.eps)

    @property
    def eta(self) -> int:
        return int(self.steps) if self.steps is not None else paper_steps(self.eps)

    def attacked_input(self, images: torch.Tensor) -> torch.Tensor:
        """What PGD feeds the model for ``images [B, C, H, W]``: the pipeline's differentiable
        approximation when attacking through it, else the images themselves."""
        return self.pipeline.differentiable(images) if self.through_pipeline else images

    def describe(self) -> dict:
        out = {"norm": self.norm, "eps": self.eps, "step_size": self.alpha, "steps": self.eta,
               "random_start": self.random_start}
        if self.pipeline is not None:  # absent in the paper's setting: earlier results match
            out.update(pipeline=self.pipeline.spec, through_pipeline=self.through_pipeline)
        return out
