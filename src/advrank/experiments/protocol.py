"""The evaluation protocol of §4: draw T attacks of one kind, run them in batches through the
PGD engine, measure the figures before and after.

The attack kind decides the selection rules and the figures (normalized ranks for CA/QA,
see ``advrank/attacks/ca.py`` and ``qa.py``); this module only batches and collects. All
selections are drawn up front and each attack's random start is keyed by its position, so
results do not depend on the batch size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.pgd import keyed_noise, pgd
from advrank.attacks.selection import Selection
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_finite, check_number
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError

MAX_BATCH = 1_000_000


@dataclass
class AttackResult:
    """Per-attack figures of one (attack, eps, k) cell, before and after, and their summary."""

    attack: str
    eps: float
    k: int
    k_name: str | None
    num_attacks: int
    gallery_size: int
    threat: dict
    options: dict
    before: dict[str, list[float]]
    after: dict[str, list[float]]
    figures: dict[str, float]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    headline: str = "rank"

    @property
    def rank_before(self) -> list[float]:
        return self.before["rank"]

    @property
    def rank_after(self) -> list[float]:
        return self.after["rank"]

    def summary(self) -> dict[str, Any]:
        """The figures a table cell shows: means (and standard errors) over the T attacks."""
        return {"attack": self.attack, "eps": self.eps, "k": self.k, "k_name": self.k_name,
                "headline": self.headline,
                "num_attacks": self.num_attacks, "gallery_size": self.gallery_size,
                **self.figures, **self.options, "threat": self.threat,
                "seconds": self.seconds, **self.extra}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RankLog:
    """Per-attack figures of one model, accumulated batch by batch into an AttackResult."""

    def __init__(self):
        self.before: dict[str, list[torch.Tensor]] = {}
        self.after: dict[str, list[torch.Tensor]] = {}

    def add(self, clean: dict[str, torch.Tensor], attacked: dict[str, torch.Tensor]) -> None:
        """Record one batch: the kind's ``measure`` before (clean) and after the attack."""
        for log, figures in ((self.before, clean), (self.after, attacked)):
            for key, values in figures.items():
                log.setdefault(key, []).append(check_finite(values, f"figure {key!r}").cpu())

    def result(self, kind: AttackKind, eps: float, k: int, gallery: Gallery,
               threat: LinfThreatModel, seconds: float) -> AttackResult:
        before = {key: torch.cat(v) for key, v in self.before.items()}
        after = {key: torch.cat(v) for key, v in self.after.items()}
        options = {key: v for key, v in kind.describe().items() if key != "attack"}
        return AttackResult(
            attack=kind.name, eps=eps, k=k, k_name=kind.size_name,
            num_attacks=int(next(iter(before.values())).numel()), gallery_size=len(gallery),
            threat=threat.describe(), options=options,
            before={key: v.tolist() for key, v in before.items()},
            after={key: v.tolist() for key, v in after.items()},
            figures=kind.summarize(before, after), seconds=seconds, headline=kind.headline)


#: option values of cells written before the option existed
IMPLIED_OPTIONS = {"sp_reduction": "sum", "g": 5, "top_fraction": 0.01}


def check_cell_options(path, cells: Iterable[dict], kinds: dict[str, AttackKind]) -> None:
    """Refuse to add cells made with other attack options to stored ones (e.g. another
    reading of Eq. 12): one table, one setting per attack."""
    for cell in cells:
        kind = kinds.get(cell.get("attack"))
        if kind is None:
            continue
        for key, value in kind.options.items():
            found = cell.get(key, IMPLIED_OPTIONS.get(key))
            if found != value:
                raise AdvrankError(f"{path} holds {kind.name} results made with {key}="
                                   f"{found!r}, this run has {value!r}; use another output "
                                   "folder")


def check_batch_size(batch_size: int) -> int:
    return int(check_number(batch_size, "batch size", low=1, high=MAX_BATCH, integer=True))


def attack_batches(
    model: nn.Module, gallery: Gallery, kind: AttackKind, threat: LinfThreatModel,
    selection: Selection, seed: int, batch_size: int, progress: bool = False, desc: str = "",
) -> Iterator[tuple[Selection, torch.Tensor]]:
    """Yield ``(part, adversarial images [B, C, H, W])`` batch by batch over ``selection``."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(selection), desc=desc, file=sys.stderr, leave=False, unit="attack")
    emb = gallery.embeddings
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        images = gallery.images(part.anchors)
        noise = (keyed_noise(seed, part.positions, images.shape[1:])
                 if threat.random_start else None)
        clean = emb[part.anchors.to(emb.device)]
        objective = kind.objective(emb, gallery.distance, part, clean)
        yield part, pgd(model, images, objective, threat, noise=noise)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


def run_attack(
    model: nn.Module, gallery: Gallery, attack: str | AttackKind, eps: float, k: int,
    num_attacks: int, seed: int = 0, batch_size: int = 256,
    threat: LinfThreatModel | None = None, selection: Selection | None = None,
    progress: bool = False, clean_cache: dict | None = None, **options,
) -> AttackResult:
    """Run T = ``num_attacks`` independent attacks of one kind at one eps, in batches.

    ``attack``: a name (``"CA+"``) with the kind's ``options`` (e.g. ``xi``, ``sp_reduction``)
    or an :class:`AttackKind`. ``threat`` overrides the paper's alpha/eta (its eps must equal
    ``eps``); ``selection`` reuses a fixed draw (e.g. across eps rows or models).
    ``clean_cache``: a dict shared by runs of the same selection (a grid's eps rows), so the
    "before" figures are measured once, not once per eps.
    """
    kind = get_attack(attack, **options)
    threat = threat or LinfThreatModel(eps)
    if threat.eps != eps:
        raise AdvrankError(f"threat model eps {threat.eps} differs from eps {eps}")
    threat = kind.threat_for(threat)  # e.g. ES adds a random start; results record it
    batch_size = check_batch_size(batch_size)
    selection = selection or kind.select(gallery, k, num_attacks, seed)
    t0, log = time.time(), RankLog()
    desc = f"{kind.name} eps={eps:g} {kind.size_name or 'k'}={k}"
    for s, (part, adv) in zip(range(0, len(selection), batch_size),
                              attack_batches(model, gallery, kind, threat, selection, seed,
                                             batch_size, progress, desc), strict=True):
        emb = gallery.embeddings
        if clean_cache is not None and s in clean_cache:
            clean = clean_cache[s]
        else:
            clean = kind.measure(gallery, part, emb[part.anchors.to(emb.device)])
            if clean_cache is not None:
                clean_cache[s] = clean
        if threat.eps == 0:
            attacked = clean
        else:
            with torch.no_grad():
                attacked = kind.measure(gallery, part, model(adv))
        log.add(clean, attacked)
    return log.result(kind, eps, k, gallery, threat, time.time() - t0)
