"""Projected gradient descent (Eq. 6): one engine for a batch of independent attacks, and the
universal variant (Eq. 14) where one perturbation is shared by all inputs.

An objective maps embeddings ``[B, D]`` to per-attack losses ``[B]`` and supplies
``value_and_grad``; PGD backpropagates that embedding gradient through the model once per
step, so the ranking loss over the whole gallery never sits inside the model's autograd graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_finite
from advrank.core.execution import ExecutionPolicy, get_policy
from advrank.core.runtime import derived_seed, progress_bar
from advrank.errors import AdvrankError


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: attacks only need input gradients,
    and DDP's parameter-gradient bookkeeping must not see their forward passes."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def objective_grad(objective, emb: torch.Tensor) -> torch.Tensor:
    """The objective's gradient ``[B, D]`` (``grad`` when it has one, else from
    ``value_and_grad``)."""
    grad = getattr(objective, "grad", None)
    return grad(emb) if grad is not None else objective.value_and_grad(emb)[1]


@contextmanager
def frozen(model: nn.Module):
    """Eval mode and no parameter gradients while attacking; restores both afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


class GradientWatch:
    """Records whether any step's gradient held NaN/Infinity (``sign`` of NaN is 0, so such a
    step silently does not move and the attack would report a perfectly robust model).

    The flag is a device tensor, so the steps never wait for the device; :meth:`check` reads
    it once, when the attack ends, and raises one AdvrankError."""

    def __init__(self):
        self.bad: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        step_bad = ~torch.isfinite(grad).all()
        self.bad = step_bad if self.bad is None else self.bad | step_bad
        return grad

    def check(self) -> None:
        if self.bad is not None and bool(self.bad):
            raise AdvrankError("NaN or Infinity in the input gradient during the attack (a "
                               "model that embeds NaN, or is not differentiable there); no "
                               "result was written")


def project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip onto ``{x : ||x - x0||_inf <= eps} ∩ [0, 1]^N``."""
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp_(0.0, 1.0)


def keyed_noise(seed: int, keys: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Uniform [0, 1) noise ``[B, *shape]`` whose row i depends only on ``(seed, keys[i])``.

    The protocol keys each attack's random start by its position in the selection, so results
    do not depend on how the attacks are batched. One small generator per row, once per batch
    (not per PGD step).
    """
    rows = [torch.rand(tuple(shape), generator=torch.Generator().manual_seed(
        derived_seed(seed, "random-start", int(k)))) for k in keys.tolist()]
    return torch.stack(rows) if rows else torch.empty(0, *shape)


def random_start(x0: torch.Tensor, eps: float, generator: torch.Generator | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """A uniform point of the eps-ball around ``x0`` (clipped to [0, 1]); ``noise`` (uniform
    [0, 1), same shape) replaces the draw from ``generator`` when given."""
    if noise is None:
        noise = torch.rand(x0.shape, generator=generator, device="cpu", dtype=x0.dtype)
    return project(x0 + (2 * noise.to(device=x0.device, dtype=x0.dtype) - 1) * eps, x0, eps)


def pgd(
    model: nn.Module, images: torch.Tensor, objective, threat: LinfThreatModel,
    generator: torch.Generator | None = None, universal: bool = False,
    noise: torch.Tensor | None = None, policy: ExecutionPolicy | None = None,
) -> torch.Tensor:
    """Minimise ``objective(model(images + r))`` over the threat model; returns ``images + r``.

    images ``[B, C, H, W]`` in [0, 1]. With ``universal=True`` one perturbation ``r [1, C, H, W]``
    is shared by the whole batch (Eq. 14, :func:`universal_pgd` with one chunk). ``noise``
    (uniform ``[B, C, H, W]``) fixes the random start, else ``generator`` draws it. ``policy``:
    under bf16 the model runs in bf16 autocast (its embeddings reach the objective in fp32).
    With ``threat.through_pipeline`` the model sees each step's images through the upload
    pipeline's differentiable approximation (the returned images are the float ones).
    """
    x0 = images.detach()
    model = unwrap(model)
    if universal:
        r, _ = universal_pgd(model, x0, [(0, x0.shape[0], objective)], threat, generator)
        return (x0 + r).clamp(0.0, 1.0)
    if threat.eps == 0 or threat.eta == 0:
        return x0.clone()
    policy = get_policy(policy)
    autocast = policy.precision == "bf16"
    with frozen(model):
        x = random_start(x0, threat.eps, generator, noise) if threat.random_start else x0.clone()
        watch = GradientWatch()
        for _ in range(threat.eta):
            x.requires_grad_(True)
            seen = threat.attacked_input(x)  # through the upload pipeline when asked
            with policy.model_context(x.device):
                emb = model(seen)
            if autocast:
                emb = emb.float()
            g = objective_grad(objective, emb.detach())
            (grad,) = torch.autograd.grad(emb, x, grad_outputs=g)
            x = project(x.detach() - threat.alpha * watch(grad).sign(), x0, threat.eps)
        watch.check()
        return check_finite(x.detach(), "the adversarial images")


def universal_pgd(
    model: nn.Module, images: torch.Tensor, objectives: Sequence[tuple[int, int, Any]],
    threat: LinfThreatModel, generator: torch.Generator | None = None,
    progress: bool | None = False,
) -> tuple[torch.Tensor, list[float]]:
    """PGD on one perturbation shared by all ``images [M, C, H, W]`` (Eq. 14).

    ``objectives`` lists ``(start, end, objective)`` chunks covering the M members. Each step
    accumulates the gradient of the summed loss over the chunks (so the whole set never sits
    in one autograd graph), then takes one sign step on r and clips it to ``[-eps, eps]``; the
    members see ``clip(x + r, 0, 1)``. Returns ``r [1, C, H, W]`` and the summed loss before
    each step ``[steps]``.
    """
    model = unwrap(model)
    r = torch.zeros_like(images[:1])
    history: list[float] = []
    if threat.eps == 0 or threat.eta == 0:
        return r, history
    if threat.random_start:
        r = random_start(torch.full_like(r, 0.5), threat.eps, generator) - 0.5
    watch = GradientWatch()
    with frozen(model):
        for _ in progress_bar(range(threat.eta), desc="universal PGD", enabled=progress,
                              unit="step"):
            grad, total = torch.zeros_like(r), 0.0
            for s, e, objective in objectives:
                rr = r.clone().requires_grad_(True)
                emb = model(threat.attacked_input((images[s:e] + rr).clamp(0.0, 1.0)))
                loss, g = objective.value_and_grad(emb.detach())
                (gr,) = torch.autograd.grad(emb, rr, grad_outputs=g)
                grad += gr
                total += loss.sum().item()
            history.append(total)
            r = (r - threat.alpha * watch(grad).sign()).clamp_(-threat.eps, threat.eps)
    watch.check()
    return check_finite(r.detach(), "the universal perturbation"), history
