"""robrank's Empirical Robustness Score (ERS; Zhou et al., T-PAMI 2024, ``tools/pjswipe.py``):
one number for a model's robustness, the mean of ten rescaled attack scores, each in [0, 100]
with 100 = unaffected.

A profile (``rob28`` for 28x28 inputs, ``rob224`` for 224x224; robrank's ``cmdline.py``) fixes
the threat model: eps = 77/255 or 8/255, alpha = 3/255, 32 PGD steps. Nine attacks give the ten
raw scores (ES gives two):

=====  ======  =======================================  ==========================
score  attack  raw score (mean over the T attacks)       rescaled
=====  ======  =======================================  ==========================
CA+    CA+     R_CA after (%), w = 1                      2 * CA+
CA-    CA-     R_CA after (%), w = 1                      100 - CA-
QA+    QA+     R_QA after (%), m = 1, no SP term          2 * QA+
QA-    QA-     R_QA after (%), m = 1, no SP term          100 - QA-
TMA    TMA     cos(f(q~), f(t))                           100 * (1 - TMA)
ES:D   ES      d(f(q~), f(q))                             100 * (2 - ES:D) / 2
ES:R   ES      Recall@1 after (%)                         ES:R
LTM    LTM     Recall@1 after (%)                         LTM
GTM    GTM     Recall@1 after (%)                         GTM
GTT    GTT     retain@4 after (%)                         GTT
=====  ======  =======================================  ==========================

ERS = the mean of the ten rescaled scores. robrank gives no uncertainty; here a percentile
bootstrap over each attack's T items (resampled independently per attack, jointly for the two
ES scores, seeded) gives a 95% interval. Results go through the store: rerunning the same
command skips the attacks already done.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import get_attack
from advrank.attacks.selection import check_num_attacks
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_number
from advrank.core.gallery import Gallery
from advrank.core.runtime import derived_seed
from advrank.errors import AdvrankError
from advrank.experiments.protocol import check_batch_size, run_attack
from advrank.experiments.results import check_cell_options
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import FIGURE_RANGES, Store, figures_problem

RESULTS, TABLE = "results.json", "robustness.md"
FORMAT = "advrank-robustness"


@dataclass(frozen=True)
class Profile:
    """A threat model of robrank's ``Swipe`` profiles."""

    name: str
    eps: float
    step_size: float
    steps: int

    def threat(self) -> LinfThreatModel:
        return LinfThreatModel(self.eps, self.step_size, self.steps)


@dataclass(frozen=True)
class Score:
    """One of the ten ERS scores: the mean of ``attack``'s per-item ``figure`` after attack,
    rescaled linearly to ``scale * raw + offset``."""

    name: str
    attack: str
    figure: str
    scale: float
    offset: float

    def rescale(self, raw: float | torch.Tensor) -> float | torch.Tensor:
        return self.scale * raw + self.offset


PROFILES = {
    "rob28": Profile("rob28", 77 / 255, 3 / 255, 32),
    "rob224": Profile("rob224", 8 / 255, 3 / 255, 32),
}

#: the attacks of every profile with their options, set to run as robrank's code runs them so
#: that ERS is comparable with its published rows: w = m = 1, QA without the SP term (robrank
#: runs "QA", not "SPQA", in its rob profiles), ES from the clean image with a nudged
#: reference, LTM with the query's own copy among its positives, GTM with robrank's target
#: index (see each kind's docstring)
ATTACKS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("CA+", {}), ("CA-", {}), ("QA+", {"xi": 0.0, "g": 0}), ("QA-", {"xi": 0.0, "g": 0}),
    ("TMA", {}), ("ES", {"start": "nudge"}), ("LTM", {"own_copy_positive": True}),
    ("GTM", {"target": "robrank"}), ("GTT", {}))

SCORES = (
    Score("CA+", "CA+", "rank", 2.0, 0.0),
    Score("CA-", "CA-", "rank", -1.0, 100.0),
    Score("QA+", "QA+", "rank", 2.0, 0.0),
    Score("QA-", "QA-", "rank", -1.0, 100.0),
    Score("TMA", "TMA", "cosine", -100.0, 100.0),
    Score("ES:D", "ES", "shift", -50.0, 100.0),
    Score("ES:R", "ES", "recall@1", 1.0, 0.0),
    Score("LTM", "LTM", "recall@1", 1.0, 0.0),
    Score("GTM", "GTM", "recall@1", 1.0, 0.0),
    Score("GTT", "GTT", "retain@4", 1.0, 0.0),
)
SCORE_NAMES = tuple(s.name for s in SCORES)


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise AdvrankError(f"unknown robustness profile {name!r}; choose one of: "
                           f"{', '.join(PROFILES)}")
    return PROFILES[name]


def ers(raw: dict[str, float]) -> tuple[float, dict[str, float]]:
    """ERS and the rescaled scores from the ten raw scores (``{name: value}``)."""
    missing = [s.name for s in SCORES if s.name not in raw]
    if missing:
        raise AdvrankError(f"ERS needs all ten scores; missing {', '.join(missing)}")
    rescaled = {s.name: float(s.rescale(float(raw[s.name]))) for s in SCORES}
    return sum(rescaled.values()) / len(rescaled), rescaled


def bootstrap_interval(items: dict[str, dict[str, list[float]]], resamples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ERS. ``items[attack][figure]``: the per-item values
    after attack ``[T_attack]``; each attack's items are resampled with replacement (the same
    draw for all figures of one attack), ``resamples`` times, from a generator seeded by
    ``seed``."""
    check_number(resamples, "bootstrap resamples", low=1, high=10**7, integer=True)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(resamples, dtype=torch.float64)
    draws: dict[str, torch.Tensor] = {}
    for score in SCORES:
        values = torch.tensor(items[score.attack][score.figure], dtype=torch.float64)
        if score.attack not in draws:  # one draw per attack, shared by its figures
            draws[score.attack] = torch.randint(values.numel(), (resamples, values.numel()),
                                                generator=gen)
        total += score.rescale(values[draws[score.attack]].mean(1))
    total /= len(SCORES)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(total, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return float(low), float(high)


def raw_scores(cells: dict[str, dict], when: str = "after") -> dict[str, float]:
    """The ten raw scores ``{name: value}`` of stored attack cells (``when``: after the
    attacks, or "before" them)."""
    return {s.name: cells[s.attack][f"{s.figure}_{when}"] for s in SCORES}


def summarize(cells: dict[str, dict], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{"ers", "ers_ci", "scores", "rescaled", "clean"}`` from the stored attack cells."""
    raw, clean = raw_scores(cells), raw_scores(cells, "before")
    value, rescaled = ers(raw)
    items = {a: cells[a]["items"] for a in dict.fromkeys(s.attack for s in SCORES)}
    low, high = bootstrap_interval(items, resamples, seed)
    return {"ers": value, "ers_ci": [low, high], "scores": raw, "rescaled": rescaled,
            "clean": clean, "bootstrap_resamples": resamples}


def check_cell(key: str, cell) -> str | None:
    """Why a stored robustness cell cannot be reused (None if it can): one of the profile's
    attacks, figures finite and in range, and per-item values (what the interval is drawn
    from) in range whose mean is the stored figure (so ERS lies in its interval)."""
    if key not in dict(ATTACKS):
        return "not an attack of the robustness profiles"
    figures = sorted({s.figure for s in SCORES if s.attack == key})
    problem = figures_problem(cell, tuple(f"{f}_after" for f in figures))
    if problem:
        return problem
    items = cell.get("items")
    if not isinstance(items, dict):
        return "no per-item values"
    for f in figures:
        values = items.get(f)
        low, high = FIGURE_RANGES[f]
        if not isinstance(values, list) or not values or len(values) != cell.get("num_attacks") \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and low <= v <= high for v in values):
            return f"its {f} items are not {cell.get('num_attacks')} values in [{low:g}, {high:g}]"
        mean = sum(values) / len(values)
        if abs(mean - cell[f"{f}_after"]) > 1e-6 + 1e-4 * abs(mean):
            return f"{f}_after is not the mean of its items"
    return None


def _run_one(model: nn.Module, gallery: Gallery, attack: str, options: dict, profile: Profile,
             num_attacks: int, seed: int, batch_size: int, progress: bool) -> dict:
    kind = get_attack(attack, **options)
    selection = kind.select(gallery, 1, num_attacks, derived_seed(seed, "robustness", attack))
    result = run_attack(model, gallery, kind, profile.eps, 1, num_attacks, seed=seed,
                        batch_size=batch_size, threat=profile.threat(), selection=selection,
                        progress=progress)
    figures = sorted({s.figure for s in SCORES if s.attack == attack})
    return {**result.summary(), "items": {f: result.after[f] for f in figures}}


class Robustness(Experiment):
    """The ERS declaration: one cell per attack of the profile; see :func:`run_robustness`."""

    name, filename, format, outputs = "robustness", RESULTS, FORMAT, (TABLE,)

    def __init__(self, model: nn.Module, gallery: Gallery, profile: str,
                 num_attacks: int | None, seed: int, batch_size: int, resamples: int,
                 meta: dict | None, progress: bool):
        self.profile = get_profile(profile)
        n = len(gallery)
        self.num_attacks = n if num_attacks is None else num_attacks
        check_num_attacks(self.num_attacks, n)
        self.batch_size = check_batch_size(batch_size)
        self.resamples = int(check_number(resamples, "bootstrap resamples", low=1, high=10**7,
                                          integer=True))
        self.model, self.gallery, self.seed = model, gallery, seed
        self.meta, self.progress = meta or {}, progress

    def identity(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "num_attacks": self.num_attacks,
                "seed": self.seed, "gallery_size": len(self.gallery),
                "checkpoint_sha": self.meta.get("checkpoint_sha")}

    def record(self) -> dict[str, Any]:
        return {"threat": self.profile.threat().describe(), **self.meta}

    def check_cell(self, key: str, cell) -> str | None:
        return check_cell(key, cell)

    def prepare(self, store: Store) -> None:
        # cells made with other attack options (e.g. an older LTM) are refused, not mixed in
        check_cell_options(store.path, store.cells.values(),
                           {a: get_attack(a, **o) for a, o in ATTACKS})

    def cells(self, store: Store) -> list[Cell]:
        return [Cell(attack, partial(_run_one, self.model, self.gallery, attack, options,
                                     self.profile, self.num_attacks, self.seed, self.batch_size,
                                     self.progress))
                for attack, options in ATTACKS]

    def announce(self, todo: int, done: int) -> str:
        return f"robustness: {todo} attacks to run ({done} already done)"

    def finished(self, store: Store, cell: Cell, value: dict, seconds: float, log) -> None:
        fig = value["headline"]
        log(f"  {cell.key}: {fig} {value[f'{fig}_before']:.3g} -> "
            f"{value[f'{fig}_after']:.3g} ({value['seconds']:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        from advrank.reports.robustness import robustness_markdown

        summary = summarize(store.cells, self.resamples, self.seed)
        store.extra["summary"] = summary
        store.flush()
        result = {**summary, "profile": self.profile.name, "num_attacks": self.num_attacks,
                  "gallery_size": len(self.gallery), "config": store.content()["config"]}
        store.write_text(TABLE, robustness_markdown(result, SCORES))
        return result


def run_robustness(
    model: nn.Module, gallery: Gallery, out_dir: str | Path, profile: str = "rob28",
    num_attacks: int | None = None, seed: int = 0, batch_size: int = 256,
    resamples: int = 1000, meta: dict | None = None, progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the profile's nine attacks on ``gallery`` (T = ``num_attacks`` items
    each, default |X|), write ``results.json`` after each and ``robustness.md`` at the end;
    returns the summary (see :func:`summarize`) with the run's settings. ``force``:
    overwrite a robustness.md that is not this run's and start over."""
    experiment = Robustness(model, gallery, profile, num_attacks, seed, batch_size, resamples,
                            meta, progress)
    experiment.force = force
    return run(experiment, out_dir, progress_log(progress))


def _published(r1: float, r2: float, map_: float, nmi: float, scores: str) -> dict[str, Any]:
    """A row of robrank's ``doc/dmltab-*.txt`` (retrieval figures as fractions there)."""
    values = [float(v) for v in scores.replace("|", " ").split()]
    return {"recall@1": 100 * r1, "recall@2": 100 * r2, "map": 100 * map_, "nmi": 100 * nmi,
            "scores": dict(zip(SCORE_NAMES, values, strict=True))}


#: robrank's published Fashion-MNIST rows (``doc/dmltab-fashion.txt``, rc2f2 = its C2F2 model;
#: ``d`` = EST, ``p`` = ACT; C cosine, E Euclidean, N Euclidean on unit vectors). ERS is not
#: printed there; :func:`ers` gives it from the ten scores (8.2 / 61.6 / 65.4 for C).
ROBRANK_FASHION = {
    "rc2f2:ptripletC": _published(0.873, 0.928, 0.850, 0.778,
                                  "1.0 99.5 0.3 99.0 0.986 | 1.594 30.7 11.6 13.8 0.0"),
    "rc2f2d:ptripletC": _published(0.758, 0.854, 0.613, 0.630,
                                   "33.5 12.5 40.4 8.3 0.660 | 0.040 53.2 49.6 53.6 0.4"),
    "rc2f2p:ptripletC": _published(0.781, 0.868, 0.679, 0.668,
                                   "32.2 14.7 36.9 12.0 0.288 | 0.182 51.5 68.5 60.1 0.4"),
    "rc2f2:ptripletN": _published(0.876, 0.929, 0.844, 0.766,
                                  "1.1 96.8 0.3 97.8 0.990 | 1.604 0.1 0.0 12.6 0.0"),
    "rc2f2d:ptripletN": _published(0.766, 0.860, 0.592, 0.610,
                                   "14.9 36.1 20.9 48.6 0.966 | 0.288 62.0 28.0 20.8 0.0"),
    "rc2f2p:ptripletN": _published(0.787, 0.871, 0.688, 0.672,
                                   "33.6 14.6 38.5 12.1 0.259 | 0.541 48.5 59.5 60.2 0.1"),
    "rc2f2:ptripletE": _published(0.874, 0.927, 0.835, 0.814,
                                  "0.7 96.8 0.3 93.3 0.987 | 10.91 24.0 0.3 7.0 0.0"),
    "rc2f2d:ptripletE": _published(0.821, 0.892, 0.639, 0.641,
                                   "10.5 53.8 12.5 65.0 0.821 | 4.608 52.9 22.3 14.6 0.0"),
    "rc2f2p:ptripletE": _published(0.786, 0.867, 0.643, 0.646,
                                   "27.7 18.6 38.4 17.4 0.477 | 9.307 53.9 47.8 49.6 0.0"),
}
