"""Projected gradient descent (Eq. 6) for a batch of independent attacks.

The objective maps embeddings ``[B, D]`` to per-attack losses ``[B]`` and supplies
``value_and_grad``; PGD backpropagates that embedding gradient through the model once per
step, so the ranking loss over the whole gallery never sits inside the model's autograd graph.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from advrank.attacks.threat import LinfThreatModel


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


def project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip onto ``{x : ||x - x0||_inf <= eps} ∩ [0, 1]^N``."""
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp_(0.0, 1.0)


def random_start(x0: torch.Tensor, eps: float, generator: torch.Generator | None = None):
    noise = torch.rand(x0.shape, generator=generator, device="cpu", dtype=x0.dtype)
    return project(x0 + (2 * noise.to(x0.device) - 1) * eps, x0, eps)


def pgd(
    model: nn.Module, images: torch.Tensor, objective, threat: LinfThreatModel,
    generator: torch.Generator | None = None, universal: bool = False,
) -> torch.Tensor:
    """Minimise ``objective(model(images + r))`` over the threat model; returns ``images + r``.

    images ``[B, C, H, W]`` in [0, 1]. With ``universal=True`` one perturbation ``r [1, C, H, W]``
    is shared by the whole batch (Eq. 14) and the summed loss drives it.
    """
    x0 = images.detach()
    if threat.eps == 0 or threat.eta == 0:
        return x0.clone()
    with frozen(model):
        if universal:
            r = torch.zeros_like(x0[:1])
            if threat.random_start:
                r = (random_start(torch.full_like(r, 0.5), threat.eps, generator) - 0.5)
            for _ in range(threat.eta):
                r.requires_grad_(True)
                x = (x0 + r).clamp(0.0, 1.0)
                emb = model(x)
                _, g = objective.value_and_grad(emb.detach())
                (grad,) = torch.autograd.grad(emb, r, grad_outputs=g)
                r = (r.detach() - threat.alpha * grad.sign()).clamp_(-threat.eps, threat.eps)
            return (x0 + r).clamp(0.0, 1.0).detach()

        x = random_start(x0, threat.eps, generator) if threat.random_start else x0.clone()
        for _ in range(threat.eta):
            x.requires_grad_(True)
            emb = model(x)
            _, g = objective.value_and_grad(emb.detach())
            (grad,) = torch.autograd.grad(emb, x, grad_outputs=g)
            x = project(x.detach() - threat.alpha * grad.sign(), x0, threat.eps)
        return x.detach()
