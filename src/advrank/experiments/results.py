"""What one (attack, eps, k) cell of an attack produces and how it is kept: the per-attack
figures gathered batch by batch (:class:`RankLog`) into an :class:`AttackResult` (its summary is
what a table cell and a store cell hold), and the store keys and checks of such cells."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.attacks.threat import LinfThreatModel
from advrank.core import distributed
from advrank.core.checks import check_finite
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.experiments.store import figures_problem, is_number


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

    def gather(self) -> None:
        """Under torchrun: replace this rank's figures by every rank's, in rank order."""
        if not distributed.active():
            return
        mine = {"before": {k: torch.cat(v) for k, v in self.before.items()},
                "after": {k: torch.cat(v) for k, v in self.after.items()}}
        parts = [p for p in distributed.gather_objects(mine) if p["before"]]
        for log, when in ((self.before, "before"), (self.after, "after")):
            log.clear()
            for p in parts:
                for key, values in p[when].items():
                    log.setdefault(key, []).append(values)

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
IMPLIED_OPTIONS = {"sp_reduction": "sum", "g": 5, "top_fraction": 0.01, "start": "random"}


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


def cell_key(attack: str, eps: float, k: int) -> str:
    """The store key of an (attack, eps, w/m) cell of a grid or an audit."""
    return f"{attack}|{eps:g}|{k}"


def check_attack_cell(key: str, cell) -> str | None:
    """Why a stored attack cell (a grid's or an audit's) cannot be reused (None if it can):
    a summary of the attack, eps and k its key names, with finite figures."""
    problem = figures_problem(cell, ("rank_before", "rank_after", "rank_after_se"))
    if problem:
        return problem
    attack, eps, k = cell.get("attack"), cell.get("eps"), cell.get("k")
    if not isinstance(attack, str) or not is_number(eps) or \
            not isinstance(k, int) or isinstance(k, bool) or cell_key(attack, eps, k) != key:
        return "its attack, eps and k do not match its key"
    return None
