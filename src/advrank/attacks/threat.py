"""The threat model every attack states: L-inf ball of radius eps intersected with [0, 1], and
the upload pipeline (:mod:`advrank.core.pipeline`) the perturbed picture goes through before a
deployed search embeds it. One object for white-box and query-only attacks: PGD reads its
steps, a query-only optimiser its :class:`Ball` (on the 8-bit grid when the search takes
uploaded pictures), and every result records :meth:`LinfThreatModel.describe`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

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
GRID = 255.0  # 8-bit samples


class Ball:
    """``{x : ||x - x0||_inf <= eps} ∩ [0, 1]``, on the 8-bit grid when ``eight_bit`` (the
    bounds rounded inwards, so a quantised candidate still lies in the ball; where no grid
    value does, the picture's own 8-bit upload is the only candidate)."""

    def __init__(self, x0: torch.Tensor, eps: float, eight_bit: bool = False):
        check_number(eps, "eps (pixel units)", low=0.0, high=1.0)
        self.x0, self.eps, self.eight_bit = x0.detach(), float(eps), bool(eight_bit)
        lo, hi = (x0 - eps).clamp_min(0.0), (x0 + eps).clamp_max(1.0)
        if self.eight_bit:
            lo, hi = torch.ceil(lo * GRID - 1e-4) / GRID, torch.floor(hi * GRID + 1e-4) / GRID
            own = torch.round(x0 * GRID) / GRID
            empty = lo > hi
            lo, hi = torch.where(empty, own, lo), torch.where(empty, own, hi)
        self.lo, self.hi = lo, hi

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = x.dim() - self.lo.dim()  # candidates [B, P, ...] around x0 [B, ...]
        shape = (self.lo.shape[0],) + (1,) * extra + tuple(self.lo.shape[1:])
        return self.lo.reshape(shape), self.hi.reshape(shape)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (``[B, ...]`` or ``[B, P, ...]``) clipped into the ball (off the grid)."""
        lo, hi = self._bounds(x)
        return torch.max(torch.min(x, hi), lo)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` clipped into the ball and, when ``eight_bit``, rounded to the grid: a
        candidate that may be sent."""
        x = self.clip(x)
        return self.clip(torch.round(x * GRID) / GRID) if self.eight_bit else x


@dataclass(frozen=True)
class LinfThreatModel:
    """``||r||_inf <= eps`` and ``x + r in [0, 1]``, explored by ``steps`` sign-gradient steps.

    ``step_size``/``steps`` default to the paper's alpha and eta for this eps; PGD starts at the
    clean input unless ``random_start`` (uniform in the ball), as the paper does.

    ``pipeline`` (an :class:`~advrank.core.pipeline.ImagePipeline` or its spec, ``png``,
    ``jpeg:75``): what a deployed search does to the picture before embedding it; the
    protocol measures the adversarial images after it too. ``through_pipeline``: PGD attacks
    the model behind the pipeline's differentiable approximation instead of the bare model.

    A query-only attack (:meth:`for_queries`) takes no PGD step: it searches :meth:`ball`
    within ``query_budget`` queries per attack, on the 8-bit grid of uploaded pictures when
    ``eight_bit``.
    """

    eps: float
    step_size: float | None = None
    steps: int | None = None
    random_start: bool = False
    norm: str = "Linf"
    pipeline: ImagePipeline | str | None = None
    through_pipeline: bool = False
    eight_bit: bool = False
    query_budget: int | None = None

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
        check_flag(self.eight_bit, "eight_bit")
        if self.query_budget is not None:
            check_number(self.query_budget, "query budget", low=1, integer=True)

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else paper_step_size(self.eps)

    @property
    def eta(self) -> int:
        return int(self.steps) if self.steps is not None else paper_steps(self.eps)

    def attacked_input(self, images: torch.Tensor) -> torch.Tensor:
        """What PGD feeds the model for ``images [B, C, H, W]``: the pipeline's differentiable
        approximation when attacking through it, else the images themselves."""
        if not self.through_pipeline:
            return images
        return cast(ImagePipeline, self.pipeline).differentiable(images)  # checked: not None

    @property
    def pipeline_spec(self) -> str | None:
        """The upload pipeline's canonical spec (None: the float pixels, no pipeline)."""
        pipeline = cast(ImagePipeline | None, self.pipeline)  # normalised by __post_init__
        return None if pipeline is None else pipeline.spec

    def for_queries(self, eight_bit: bool, query_budget: int) -> LinfThreatModel:
        """This threat as a query-only attack faces it: at most ``query_budget`` queries per
        attack, candidates on the 8-bit grid when the search takes uploaded pictures."""
        return replace(self, eight_bit=eight_bit, query_budget=query_budget)

    def ball(self, x0: torch.Tensor) -> Ball:
        """The set a query-only attack searches around the clean images ``x0 [B, C, H, W]``:
        the eps ball in [0, 1], on the 8-bit grid when ``eight_bit``."""
        return Ball(x0, self.eps, self.eight_bit)

    def describe(self) -> dict:
        """What a result records: the norm and eps; PGD's step size, steps and random start
        (a white-box attack) or the 8-bit grid and the query budget (a query-only one); the
        pipeline when there is one."""
        out: dict = {"norm": self.norm, "eps": self.eps}
        if self.query_budget is None:
            out.update(step_size=self.alpha, steps=self.eta, random_start=self.random_start)
        if self.pipeline is not None:  # absent in the paper's setting: earlier results match
            out.update(pipeline=self.pipeline_spec, through_pipeline=self.through_pipeline)
        if self.query_budget is not None:
            out.update(eight_bit=self.eight_bit, query_budget=self.query_budget)
        return out
