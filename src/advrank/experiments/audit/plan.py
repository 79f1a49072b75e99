"""The audit's plan and estimate: a timed probe of the model, the work left, and the line
printed before the attacks start."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.experiments.audit.panels import EXAMPLE_POOL
from advrank.experiments.audit.settings import AuditConfig
from advrank.experiments.target import Target

#: an audit estimated beyond this many seconds is announced with a warning and the fast setting
LONG_AUDIT_SECONDS = 30 * 60
#: the documented quick look: one eps, fewer attacks
FAST_SETTING = "--eps 8/255 --num-attacks 100"


def probe_seconds(target: Target, batch: int, backward: bool = True) -> float:
    """Wall-clock seconds of one forward and backward pass of the model on ``batch`` members
    of X: what one PGD step of one batch costs (the ranking objective is small beside it);
    ``backward=False``: the forward pass alone, what one round of query-only attacks costs.
    A batch that does not fit the memory is probed in halves (as the attacks run it) and the
    time scaled back up."""
    import time

    g = target.gallery
    size = min(batch, len(g))
    while True:
        images = g.images(torch.arange(size)).requires_grad_(backward)
        try:
            _sync(g.device)
            start = time.perf_counter()
            with torch.set_grad_enabled(backward):  # the input's gradient, as PGD takes it
                out = target.model(images)
                if backward:
                    torch.autograd.grad(out.sum(), images)
            _sync(g.device)
            return (time.perf_counter() - start) * min(batch, len(g)) / size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            del images
            if g.device.type == "cuda":
                torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def audit_plan(target: Target, kinds: dict[str, AttackKind], config: AuditConfig, t: int,
               todo: Sequence[tuple[str, float]],
               query_todo: Sequence[tuple[str, float]] = ()) -> dict[str, Any]:
    """The work left and its estimated time: a timed probe (one forward+backward of a batch)
    times the PGD steps of each cell times its batches, plus the example panels' attacks,
    plus the query-only cells left (``query_todo``): one forward pass of a batch (probed
    too) per query of each batch's attacks. Nothing is probed when no attack is left. Returns
    ``attacks`` (for one progress bar), ``steps`` (batch-steps), ``probe_seconds``,
    ``query_rounds`` (batch-forwards), ``forward_seconds``, ``seconds`` (the estimate)."""
    batch = min(config.batch_size, t)
    batches = -(-t // batch)
    steps = sum(config.threat(e, kinds[a]).eta * batches for a, e in todo if float(e) > 0)
    attacks = len(todo) * t
    if config.examples:  # the panels re-run a pool of each kind's attacks at the largest eps
        pool = min(EXAMPLE_POOL, t)
        eps = max(float(e) for e in config.eps_values)
        attacks += len(kinds) * pool
        steps += sum(config.threat(eps, kind).eta * -(-pool // batch) for kind in
                     kinds.values()) if eps > 0 else 0
    probe = probe_seconds(target, batch) if steps else 0.0
    rounds = len(query_todo) * batches * (config.query_budget or 0)
    forward = probe_seconds(target, batch, backward=False) if rounds else 0.0
    seconds = probe * steps + forward * rounds
    return {"attacks": attacks + len(query_todo) * t, "steps": steps, "batch": batch,
            "probe_seconds": probe, "query_rounds": rounds, "forward_seconds": forward,
            "seconds": seconds, "long": seconds > LONG_AUDIT_SECONDS}


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate_message(plan: dict[str, Any]) -> str:
    """The line an audit prints before its attacks start (and a warning when long)."""
    rounds = plan.get("query_rounds", 0)
    if not plan["steps"] and not rounds:
        return "audit: no attack left to run"
    parts = []
    if plan["steps"]:
        parts.append(f"{plan['steps']} PGD steps of {plan['batch']}-image batches, one took "
                     f"{plan['probe_seconds']:.2f} s")
    if rounds:
        parts.append(f"{rounds} query-only rounds of {plan['batch']} queries, one forward "
                     f"pass took {plan['forward_seconds']:.2f} s")
    text = (f"audit: estimated time about {format_duration(plan['seconds'])} "
            f"({'; '.join(parts)})")
    if plan["long"]:
        text += (f"\naudit: warning: this is a long run; for a quick look use "
                 f"{FAST_SETTING} (Ctrl-C stops it; rerunning resumes)")
    return text
