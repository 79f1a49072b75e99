"""The QA objective's hinge sums (Eq. 11-12), differentiated in chunks: the weights
``d(loss)/d(d_x)`` of every gallery row and the counts of active terms, with or without
``torch.compile``, and what a chunk costs in memory."""

from __future__ import annotations

import torch

from advrank.core.execution import ExecutionPolicy, Workspace


def column_bytes(num_terms: int, policy: ExecutionPolicy) -> int:
    """Temporary bytes per (attack, gallery row) of one QA chunk: the reference's [B, k, n]
    hinge tensors, or the fast path's distances, masks and counts."""
    if policy.reference:
        return 4 * (3 * num_terms + 4) + num_terms
    return 24 + 3 * num_terms


def hinge_weights(d: torch.Tensor, thresholds: torch.Tensor, signs: list[float],
                  weights: list[float], with_value: bool = False,
                  work: Workspace | None = None):
    """The hinge sum ``sum_j w_j sum_x [s_j (t_j - d_x)]_+`` of one chunk, differentiated.

    d ``[B, n]`` (d(q~, x)), thresholds ``[B, k]`` (t_j = d(q~, c_j)), one sign s_j and weight
    w_j per term. Returns ``w_x [B, n]`` = d(loss)/d(d_x) = -sum_j s_j w_j [term j active at x],
    ``counts [B, k]`` (int64, the number of x where term j is active: d(loss)/dt_j =
    s_j w_j counts_j) and, with ``with_value``, the loss ``[B]`` (else None). One comparison
    pass per term; terms that share a coefficient are counted together in a small integer
    tensor, so the float weights are written once. ``work`` reuses buffers across calls (the
    returned ``w_x`` lives in it until the next call).
    """
    work = work if work is not None else Workspace()
    shape, dev = tuple(d.shape), d.device
    mask = work.get("mask", shape, torch.bool, dev)
    acc_dtype = torch.uint8 if len(signs) < 2**8 else torch.int32
    groups: dict[float, torch.Tensor] = {}
    counts, value = [], None
    for j, (s, w) in enumerate(zip(signs, weights, strict=True)):
        t = thresholds[:, j : j + 1]
        torch.lt(d, t, out=mask) if s > 0 else torch.gt(d, t, out=mask)
        hits = mask.view(torch.uint8)  # (a uint8 view sums faster than bool, with no copy)
        counts.append(hits.sum(1, dtype=torch.int32))
        if with_value:
            part = w * s * (t[:, 0] * counts[-1] - torch.where(mask, d, 0).sum(1))
            value = part if value is None else value + part
        c = s * w
        if c == 0:
            continue
        if c not in groups:
            groups[c] = work.get(f"acc{len(groups)}", shape, acc_dtype, dev).copy_(hits)
        else:
            groups[c].add_(hits)
    w_x = work.get("w_x", shape, d.dtype, dev).zero_()
    for c, n_active in groups.items():
        w_x.add_(n_active, alpha=-c)
    return w_x, torch.stack(counts, 1).long(), value


_COMPILED: dict = {}


def compiled_hinge_weights(policy: ExecutionPolicy):
    """:func:`hinge_weights`, fused by ``torch.compile`` when the policy asks (one kernel
    instead of a few passes per term: what a 1M-item gallery on a GPU needs)."""
    if not policy.compile:
        return hinge_weights
    if "hinge" not in _COMPILED:
        compiled = torch.compile(_hinge_weights_pure, dynamic=True)
        _COMPILED["hinge"] = lambda d, t, s, w, v, work=None: compiled(d, t, s, w, v)
    return _COMPILED["hinge"]


def _hinge_weights_pure(d: torch.Tensor, thresholds: torch.Tensor, signs: list[float],
                        weights: list[float], with_value: bool = False):
    """:func:`hinge_weights` without buffers or in-place updates: what ``torch.compile``
    fuses into a pass or two over ``d``."""
    w_x = torch.zeros_like(d)
    counts, value = [], None
    for j, (s, w) in enumerate(zip(signs, weights, strict=True)):
        t = thresholds[:, j : j + 1]
        active = d < t if s > 0 else d > t
        counts.append(active.sum(1))
        if with_value:
            part = w * s * (t[:, 0] * counts[-1] - torch.where(active, d, 0).sum(1))
            value = part if value is None else value + part
        w_x = w_x - (s * w) * active.to(d.dtype)
    return w_x, torch.stack(counts, 1), value
