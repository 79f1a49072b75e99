"""The evaluation protocol of §4: draw T attacks of one kind, run them in batches through the
PGD engine, measure the figures before and after.

The attack kind decides the selection rules and the figures (normalized ranks for CA/QA,
see ``advrank/attacks/ca.py`` and ``qa.py``); this module only batches and collects. All
selections are drawn up front and each attack's random start is keyed by its position, so
results do not depend on the batch size.

An :class:`~advrank.core.execution.ExecutionPolicy` (precision, memory budget) is passed down
explicitly: a batch that does not fit the budget runs in sub-batches (:func:`plan_batches`),
one that still runs out of memory is split and retried. Under torchrun each process runs a
contiguous share of whole batches and the per-attack figures are gathered in order.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.pgd import keyed_noise, pgd, unwrap
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core import distributed
from advrank.core.checks import (
    check_finite,
    check_int,
    check_progress,
    check_seed,
    format_eps,
)
from advrank.core.execution import (
    BatchSplitter,
    ExecutionPolicy,
    format_bytes,
    get_policy,
    model_bytes_per_item,
)
from advrank.core.gallery import Gallery
from advrank.core.runtime import derived_seed, progress_bar
from advrank.errors import AdvrankError
from advrank.experiments.results import AttackResult, RankLog

MAX_BATCH = 1_000_000
MEASURE_CHUNK = 4096  # gallery rows per pass of count_closer


def selection_seed(seed: int, attack: str, k: int) -> int:
    """One selection per (attack, k), shared by every eps row, so rows differ only in eps."""
    return derived_seed(seed, attack, k)


class ColumnSelections:
    """The selection of each (attack, k) column, drawn once and shared by its eps rows with
    one cache of the clean ("before") figures: ``columns(attack, kind, k) -> (selection,
    cache)``."""

    def __init__(self, gallery: Gallery, num_attacks: int, seed: int):
        self.gallery, self.num_attacks, self.seed = gallery, num_attacks, seed
        self.drawn: dict[tuple[str, int], tuple[Selection, dict]] = {}

    def __call__(self, attack: str, kind: AttackKind, k: int) -> tuple[Selection, dict]:
        if (attack, k) not in self.drawn:
            self.drawn[(attack, k)] = (kind.select(
                self.gallery, k, self.num_attacks, selection_seed(self.seed, attack, k)), {})
        return self.drawn[(attack, k)]


def embed_checked(model: nn.Module, images: torch.Tensor,
                  splitter: BatchSplitter | None = None) -> torch.Tensor:
    """The model's embeddings ``[B, D]`` of the adversarial images (:func:`embed_images`),
    refused if not finite: a NaN embedding would rank nowhere and read as a perfect attack."""
    return check_finite(embed_images(model, images, splitter),
                        "the embeddings of the adversarial images")


def check_batch_size(batch_size: int) -> int:
    return check_int(batch_size, "batch size", low=1, high=MAX_BATCH)


def check_run(num_attacks: int | None, seed: int, batch_size: int,
              progress: bool | None) -> tuple[int | None, int, int]:
    """The settings every attack experiment shares, checked before any work: T (None: the
    experiment's default), the seed and the batch size (returned) and the progress setting."""
    if num_attacks is not None:
        num_attacks = check_int(num_attacks, "number of attacks")
    check_progress(progress)
    return num_attacks, check_seed(seed), check_batch_size(batch_size)


def check_threat(threat: LinfThreatModel | None, eps: float) -> LinfThreatModel:
    """``threat``, or the paper's threat model at ``eps``; a given one must have that eps."""
    if threat is None:
        return LinfThreatModel(eps)
    if not isinstance(threat, LinfThreatModel):
        raise AdvrankError(f"threat must be a LinfThreatModel, got {type(threat).__name__}")
    if threat.eps != eps:
        raise AdvrankError(f"threat model eps {threat.eps} differs from eps {eps!r}")
    return threat


def check_gallery(model: nn.Module, gallery: Gallery) -> None:
    if not isinstance(model, nn.Module):
        raise AdvrankError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(gallery, Gallery):
        raise AdvrankError(f"gallery must be a Gallery (Gallery.build(model, dataset, "
                           f"distance)), got {type(gallery).__name__}")


@dataclass
class BatchPlan:
    """How a batch of attacks runs under the memory budget: sub-batches of at most ``sub``
    attacks (the splitter halves them on out-of-memory), each objective with ``memory`` bytes
    for its working set."""

    sub: int
    memory: int
    budget: int
    splitter: BatchSplitter


def plan_batches(model: nn.Module, gallery: Gallery, kind: AttackKind, k: int, batch_size: int,
                 image_shape: tuple[int, ...], policy: ExecutionPolicy,
                 log: bool = True) -> BatchPlan:
    """Size the sub-batches of ``batch_size`` attacks from the policy's memory budget (the
    smallest of all ranks' under torchrun): per attack, the model's autograd buffers
    (:func:`model_bytes_per_item`), the kind's objective (``memory_per_attack``) and the
    measurement; the gallery copy the attack multiplies with is counted once. Refuses, before
    any work, a budget that does not fit a single attack."""
    device = gallery.device
    budget = distributed.min_int(policy.budget(device))
    n, dim = gallery.embeddings.shape
    model_b = model_bytes_per_item(unwrap(model), image_shape, device, policy)
    kind_b = kind.memory_per_attack(n, k, dim, policy)
    measure_b = (k + 2) * MEASURE_CHUNK * 9
    per_attack = model_b + kind_b + measure_b
    fixed = kind.shared_memory(n, dim, gallery.distance, policy)  # e.g. a gallery copy
    avail = budget - fixed
    if avail < per_attack:
        raise AdvrankError(
            f"one {kind.name} attack needs about {format_bytes(per_attack)} (model "
            f"{format_bytes(model_b)}, objective {format_bytes(kind_b)} for |X| = {n}) beside "
            f"the {format_bytes(fixed)} gallery copy, but the memory budget is "
            f"{format_bytes(budget)}; raise --memory-budget, lower {kind.size_name or 'k'} or "
            "use --precision bf16")
    sub = int(min(batch_size, avail // per_attack))
    if sub < batch_size and log and distributed.is_main():
        print(f"advrank: {batch_size} {kind.name} attacks need about "
              f"{format_bytes(batch_size * per_attack)}; running sub-batches of {sub} within "
              f"the memory budget of {format_bytes(budget)}", file=sys.stderr)
    memory = int(avail - sub * model_b)
    return BatchPlan(sub, memory, budget, BatchSplitter(sub, f"{kind.name} attacks",
                                                        device=device))


def plan_for(model: nn.Module, gallery: Gallery, kind: AttackKind, k: int, batch_size: int,
             selection: Selection, policy: ExecutionPolicy) -> BatchPlan:
    """:func:`plan_batches` with the image shape read from the selection's first anchor."""
    shape = tuple(gallery.images(selection.anchors[:1]).shape[1:])
    return plan_batches(model, gallery, kind, k, batch_size, shape, policy)


def _attack_part(model: nn.Module, gallery: Gallery, kind: AttackKind, threat: LinfThreatModel,
                 part: Selection, seed: int, policy: ExecutionPolicy,
                 memory: int | None) -> torch.Tensor:
    """Adversarial images ``[B, C, H, W]`` of one (sub-)batch of attacks."""
    emb = gallery.embeddings
    images = gallery.images(part.anchors)
    noise = (keyed_noise(seed, part.positions, images.shape[1:])
             if threat.random_start else None)
    clean = emb[part.anchors.to(emb.device)]
    with policy.products(emb.device):
        objective = kind.prepare(emb, gallery.distance, part, clean, policy=policy,
                                 memory=memory)
        return pgd(model, images, objective, threat, noise=noise, policy=policy)


def _slice_part(model: nn.Module, gallery: Gallery, kind: AttackKind, threat: LinfThreatModel,
                part: Selection, seed: int, policy: ExecutionPolicy, memory, a: int,
                b: int) -> torch.Tensor:
    """:func:`_attack_part` of the attacks ``a:b`` of ``part`` (what a sub-batch runs)."""
    return _attack_part(model, gallery, kind, threat, part.slice(a, b), seed, policy, memory)


def attack_batches(
    model: nn.Module, gallery: Gallery, kind: AttackKind, threat: LinfThreatModel,
    selection: Selection, seed: int, batch_size: int, progress: bool | None = None,
    desc: str = "", policy: ExecutionPolicy | None = None, k: int | None = None,
    plan: BatchPlan | None = None, bar=None,
) -> Iterator[tuple[Selection, torch.Tensor]]:
    """Yield ``(part, adversarial images [B, C, H, W])`` batch by batch over ``selection``.

    Each batch of ``batch_size`` attacks runs in sub-batches that fit the policy's memory
    budget (:func:`plan_batches`), split again if memory still runs out; the results do not
    depend on either (each attack's random start is keyed by its position). ``bar``: an open
    progress bar (e.g. one over a whole audit) to advance instead of a bar of its own.
    """
    policy = get_policy(policy)
    own = bar is None
    if own:
        bar = progress_bar(total=len(selection), desc=desc, unit="attack",
                           enabled=progress if distributed.is_main() else False)
    k = k if k is not None else (1 if selection.targets is None else selection.targets.shape[1])
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        if plan is None:
            plan = plan_for(model, gallery, kind, k, batch_size, part, policy)
        pieces = plan.splitter.run(partial(_slice_part, model, gallery, kind, threat, part, seed,
                                           policy, plan.memory), 0, len(part))
        yield part, torch.cat(pieces)
        bar.update(len(part))
    if own:
        bar.close()


def measure_part(kind: AttackKind, gallery: Gallery, part: Selection, emb: torch.Tensor,
                 splitter: BatchSplitter | None = None) -> dict[str, torch.Tensor]:
    """``kind.measure`` of a batch, in halves when it runs out of memory."""
    if splitter is None:
        return kind.measure(gallery, part, emb)
    pieces = splitter.run(lambda a, b: kind.measure(gallery, part.slice(a, b), emb[a:b]),
                          0, len(part))
    return {key: torch.cat([p[key] for p in pieces]) for key in pieces[0]}


#: how deep the index measurement looks: a deployed search shows its top results, not |X|
INDEX_DEPTH = 100


class IndexMeasure:
    """The measurement hook of ``--index``: beside the exact figures, each attack's
    ``rank_topk``/``in_topk`` as exact search and as the index return them (suffixes
    ``_exact`` and ``_index``), over the top ``depth`` results."""

    def __init__(self, gallery: Gallery, index, depth: int = INDEX_DEPTH):
        from advrank.core.index import build_index

        self.depth = check_int(depth, "index depth", low=1)
        self.searches = {"exact": build_index(gallery.embeddings, gallery.distance.name),
                         "index": index}

    def __call__(self, kind: AttackKind, gallery: Gallery, part: Selection,
                 emb: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, search in self.searches.items():
            depth = min(self.depth, search.size - 2)
            for key, values in kind.measure_topk(gallery, part, emb, search, depth).items():
                out[f"{key}_{name}"] = values
        return out


class PipelineMeasure:
    """The measurement hook of ``--pipeline``: each attack's figures once its images have made
    the upload pipeline's round trip (``[B, C, H, W]`` -> pipeline -> model -> the kind's
    ``measure``, and the ``--index`` hook's figures when there is one), suffix ``_pipeline``:
    what a deployed search ranks, beside the float pixels' figures."""

    def __init__(self, model: nn.Module, pipeline, index: IndexMeasure | None = None,
                 splitter: BatchSplitter | None = None):
        self.model, self.pipeline, self.index, self.splitter = model, pipeline, index, splitter

    def __call__(self, kind: AttackKind, gallery: Gallery, part: Selection,
                 images: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = embed_checked(self.model, self.pipeline(images), self.splitter)
        out = measure_part(kind, gallery, part, emb, self.splitter)
        if self.index is not None:
            out.update(self.index(kind, gallery, part, emb))
        return {f"{key}_pipeline": values for key, values in out.items()}


class Measurement:
    """Everything :func:`run_attack` measures of a batch of attacked items: the kind's exact
    figures of their embeddings ``[B, D]``, and the ``--index`` and ``--pipeline`` hooks'
    (the pipeline's from their images ``[B, C, H, W]``)."""

    def __init__(self, model: nn.Module, gallery: Gallery, kind: AttackKind,
                 threat: LinfThreatModel, splitter: BatchSplitter, index=None):
        self.gallery, self.kind, self.splitter = gallery, kind, splitter
        self.index = IndexMeasure(gallery, index) if index is not None else None
        self.pipeline = (PipelineMeasure(model, threat.pipeline, self.index, splitter)
                         if threat.pipeline is not None else None)

    def __call__(self, part: Selection, emb: torch.Tensor,
                 images: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``images`` None: the clean ones (read from the gallery when the pipeline needs
        them)."""
        g = self.gallery
        out = measure_part(self.kind, g, part, emb, self.splitter)
        if self.index is not None:
            out.update(self.index(self.kind, g, part, emb))
        if self.pipeline is not None:
            images = g.images(part.anchors) if images is None else images
            out.update(self.pipeline(self.kind, g, part, images))
        return out

    def clean(self, part: Selection, cache: dict | None, s: int) -> dict[str, torch.Tensor]:
        """The "before" figures of batch ``s`` of a selection, measured once per selection
        when a ``cache`` is shared by its runs (a grid's eps rows)."""
        if cache is not None and s in cache:
            return cache[s]
        emb = self.gallery.embeddings
        figures = self(part, emb[part.anchors.to(emb.device)], None)
        if cache is not None:
            cache[s] = figures
        return figures


def run_attack(
    model: nn.Module, gallery: Gallery, attack: str | AttackKind, eps: float, k: int,
    num_attacks: int, seed: int = 0, batch_size: int = 256,
    threat: LinfThreatModel | None = None, selection: Selection | None = None,
    progress: bool | None = None, clean_cache: dict | None = None,
    policy: ExecutionPolicy | None = None, index=None, bar=None, **options,
) -> AttackResult:
    """Run T = ``num_attacks`` independent attacks of one kind at one eps, in batches.

    ``attack``: a name (``"CA+"``) with the kind's ``options`` (e.g. ``xi``, ``sp_reduction``)
    or an :class:`AttackKind`. ``threat`` overrides the paper's alpha/eta (its eps must equal
    ``eps``; a kind with ``random_start``, e.g. ES, always starts at random); ``selection``
    reuses a fixed draw (e.g. across eps rows or models).
    ``clean_cache``: a dict shared by runs of the same selection (a grid's eps rows), so the
    "before" figures are measured once, not once per eps. ``policy``: precision and memory
    budget (default: fp32, the budget of the device). ``index``: a
    :class:`~advrank.core.index.VectorIndex` over the gallery; its figures are added beside
    the exact ones (:class:`IndexMeasure`), which stay the headline. A threat model with a
    ``pipeline`` adds the figures after the upload pipeline (:class:`PipelineMeasure`,
    "before": the clean images through it). ``bar``: an open progress bar to advance (one
    bar over several runs) instead of one per run.

    Under torchrun each process runs a contiguous share of whole batches and the per-attack
    figures are gathered in order, so every process returns what one process would.
    """
    kind = get_attack(attack, **options)
    check_gallery(model, gallery)
    policy = get_policy(policy)
    threat = kind.threat_for(check_threat(threat, eps))  # ES adds a random start (recorded)
    seed, batch_size = check_seed(seed), check_batch_size(batch_size)
    check_progress(progress)
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    start, end = distributed.shard_range(len(selection), batch_size)
    mine = selection.slice(start, end)
    t0, log = time.time(), RankLog()
    desc = f"{kind.name} eps={format_eps(eps)} {kind.size_name or 'k'}={k}"
    plan = plan_for(model, gallery, kind, k, batch_size, selection, policy)
    splitter = BatchSplitter(plan.sub, f"{kind.name} measurements", device=gallery.device)
    measure = Measurement(model, gallery, kind, threat, splitter, index)
    for s, (part, adv) in zip(range(start, end, batch_size),
                              attack_batches(model, gallery, kind, threat, mine, seed,
                                             batch_size, progress, desc, policy, k, plan,
                                             bar),
                              strict=True):
        clean = measure.clean(part, clean_cache, s)
        if threat.eps == 0:
            attacked = clean
        else:
            with torch.no_grad():
                attacked = measure(part, embed_checked(model, adv, splitter), adv)
        log.add(clean, attacked)
    log.gather()
    seconds = max(distributed.gather_objects(time.time() - t0))
    result = log.result(kind, eps, k, gallery, threat, seconds)
    result.extra.update({"precision": policy.precision, **({} if index is None else {
        "index": index.info, "index_depth": measure.index.depth})})
    return result



@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor,
                 splitter: BatchSplitter | None = None) -> torch.Tensor:
    """The model's fp32 embeddings of ``images [B, C, H, W]`` (the exact measurement: no
    autocast), in halves on out-of-memory."""
    model = unwrap(model)
    if splitter is None:
        return model(images)
    return torch.cat(splitter.run(lambda a, b: model(images[a:b]), 0, images.shape[0]))
