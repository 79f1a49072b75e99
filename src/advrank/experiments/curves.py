"""Fig. 2 and Tables 1 vs 2: how the attacks fare against vanilla and defended models as eps
grows, with the maximum embedding shift (§3.3) as the robustness measure."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import check_fits_all, make_kinds
from advrank.attacks.es import shift_distance
from advrank.attacks.selection import draw_anchors
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_flag, check_int, check_list, check_name
from advrank.core.gallery import Gallery
from advrank.core.meta import ModelMeta
from advrank.core.metrics import recall_at_k
from advrank.defenses.base import default_defense_eps
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS
from advrank.experiments.protocol import check_run, run_attack
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store, figures_problem, is_number
from advrank.experiments.target import Target, TargetSpec, load_target, target_form
from advrank.reports.plots import curves_png
from advrank.reports.tables import format_comparison, size_name

DEFAULT_CURVE_EPS = (0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
DEFAULT_NUM_ATTACKS = 1000  # per (attack, eps) point; the paper uses T = |X| (10,000 on MNIST)
CURVES_FORMAT = "advrank-curves"


def check_point(key: str, point) -> str | None:
    """Why a stored curve point cannot be reused (None if it can)."""
    problem = figures_problem(point, tuple(f"{a}_{w}" for a in PAPER_ATTACKS
                                           for w in ("before", "after")))
    if problem:
        return problem
    eps = point.get("eps")
    if not is_number(eps) or not key.endswith(f"|{eps:g}"):
        return "its eps does not match its key"
    if not all(is_number(point.get(f)) for f in ("shift_mean", "shift_max")):
        return "no finite shift_mean/shift_max"
    return None


def robustness_point(
    model: nn.Module, gallery: Gallery, eps: float, k: int = 1, num_attacks: int | None = None,
    seed: int = 0, batch_size: int = 256, attacks: Sequence[str] = PAPER_ATTACKS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """One point of Fig. 2 for one model: each attack's (w = m = k) mean normalized rank
    (percent) before and after attack at ``eps``, and the mean/max max-shift distance.

    T = ``num_attacks`` (default ``min(1000, |X|)``). The shift is measured on the same T
    anchors the attacks use.
    """
    n = len(gallery)
    t = min(DEFAULT_NUM_ATTACKS, n) if num_attacks is None else int(num_attacks)
    point: dict[str, Any] = {"eps": float(eps), "k": k, "num_attacks": t, "seed": seed}
    t0 = time.time()
    for attack in attacks:
        summary = run_attack(model, gallery, attack, eps, k, t, seed, batch_size,
                             progress=progress).summary()
        point[f"{attack}_before"] = summary["rank_before"]
        point[f"{attack}_after"] = summary["rank_after"]
    anchors = draw_anchors(n, t, torch.Generator().manual_seed(seed))  # as the attacks draw
    shift = shift_distance(model, gallery.images(anchors), gallery.distance, eps,
                           batch_size=batch_size, seed=seed)
    point["shift_mean"] = shift.mean().item()
    point["shift_max"] = shift.max().item()
    point["seconds"] = time.time() - t0
    return point


def model_label(path: str | Path, meta: ModelMeta) -> str:
    """``name (vanilla)`` or ``name (est, eps=0.3)``: how a model appears in legends."""
    stem = Path(path).stem
    defense = meta.defense
    if not defense:
        return f"{stem} (vanilla)"
    eps = meta.defense_eps
    return f"{stem} ({defense}" + (f", eps={eps:g})" if eps is not None else ")")


def _model_row(target: Target, label: str) -> dict[str, Any]:
    g = target.gallery
    r1 = recall_at_k(g.embeddings, g.labels, g.distance, (1,))[1]
    return {"label": label, "checkpoint": target.source, "fingerprint": target.fingerprint,
            "dataset": target.meta.dataset, "arch": target.meta.arch,
            "metric": target.meta.metric, "defense": target.meta.defense,
            "defense_eps": target.meta.defense_eps, "recall@1": r1,
            "gallery_size": len(g)}


def _csv_text(rows: list[dict], attacks: Sequence[str]) -> str:
    fields = ["label", "checkpoint", "defense", "defense_eps", "eps", "k", "num_attacks", "seed",
              *(f"{a}_{w}" for a in attacks for w in ("before", "after")),
              "shift_mean", "shift_max", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _labelled_target(item) -> tuple[str | None, Path | TargetSpec]:
    """``target`` or ``(label, target)`` -> ``(label or None, target)``, both checked; a target
    is a checkpoint path or a :class:`TargetSpec` (an outside model on a collection)."""
    if isinstance(item, tuple) and len(item) == 2:
        label = None if item[0] is None else check_name(item[0], "checkpoint label")
        return label, target_form(item[1])
    return None, target_form(item)


class Curves(Experiment):
    """Fig. 2's declaration: one point per (model, eps), keyed by the model's fingerprint;
    models are loaded one at a time as their points come up. See :func:`defense_curves`."""

    name, filename, format = "curves", "curves.json", CURVES_FORMAT

    def __init__(self, targets, eps_values, num_attacks, k, seed, batch_size, progress,
                 load: Callable[..., Target], record: dict | None):
        if isinstance(targets, (str, bytes)) or not isinstance(targets, (list, tuple)) \
                or not targets:
            raise AdvrankError("checkpoints must be a non-empty list of models")
        # a repeated model would only redo the same work (a TargetSpec is not hashable)
        self.targets = list({repr(t): t for t in map(_labelled_target, targets)}.values())
        # validates the range with a readable error before any work
        self.eps_values = sorted(check_list(eps_values, "eps values",
                                            lambda e: LinfThreatModel(e).eps))
        if len({f"{e:g}" for e in self.eps_values}) != len(self.eps_values):
            raise AdvrankError("eps values that agree to 6 significant digits are one point; "
                               "give each eps once")
        self.num_attacks, self.seed, self.batch_size = check_run(num_attacks, seed, batch_size,
                                                                 progress)
        self.k, self.progress = check_int(k, "w/m"), progress
        self.load, self._record = load, record or {}
        self.kinds = make_kinds(PAPER_ATTACKS, {})
        self.models: list[dict[str, Any]] = []

    def identity(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "num_attacks": self.num_attacks,
                "attacks": list(PAPER_ATTACKS)}

    def record(self) -> dict[str, Any]:
        return self._record

    def check_cell(self, key: str, point) -> str | None:
        return check_point(key, point)

    def fits(self, n: int) -> None:  # before each gallery is embedded
        t = min(DEFAULT_NUM_ATTACKS, n) if self.num_attacks is None else self.num_attacks
        check_fits_all(self.kinds.values(), [self.k], t, n)

    def cells(self, store: Store) -> Iterator[Cell]:
        for name, form in self.targets:
            target = self.load(form, check=self.fits)
            label = name or model_label(target.source, target.meta)
            while label in {m["label"] for m in self.models}:  # same file name twice
                label += "'"
            self.models.append(_model_row(target, label))
            for eps in self.eps_values:
                yield Cell(f"{target.fingerprint}|{eps:g}",
                           partial(robustness_point, target.model, target.gallery, eps, self.k,
                                   self.num_attacks, self.seed, self.batch_size,
                                   progress=self.progress), label)

    def finished(self, store: Store, cell: Cell, value: dict, seconds: float, log) -> None:
        ranks = "  ".join(f"{a} {value[f'{a}_after']:.1f}" for a in PAPER_ATTACKS)
        log(f"{cell.label} eps={value['eps']:g}: {ranks}  shift {value['shift_mean']:.3f} "
            f"({value['seconds']:.1f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        points = [{**store.get(f"{m['fingerprint']}|{eps:g}"), "label": m["label"],
                   "checkpoint": m["checkpoint"], "fingerprint": m["fingerprint"],
                   "defense": m["defense"], "defense_eps": m["defense_eps"]}
                  for m in self.models for eps in self.eps_values]
        files = {"json": str(store.path), "csv": str(store.dir / "curves.csv"),
                 "png": str(store.dir / "curves.png")}
        store.extra = {"eps_values": self.eps_values, "attacks": list(PAPER_ATTACKS),
                       "checkpoints": self.models, "points": points, "files": files}
        store.flush()
        store.write_text("curves.csv", _csv_text(points, PAPER_ATTACKS))
        store.write_bytes("curves.png", curves_png(
            self.models, points, list(PAPER_ATTACKS), self.k,
            {a: size_name(a) for a in PAPER_ATTACKS}, {m["metric"] for m in self.models}))
        return {**store.content(), "k": self.k, "computed": len(computed),
                "reused": len(points) - len(computed)}


def defense_curves(
    checkpoints: Sequence[str | Path | TargetSpec | tuple[str, str | Path | TargetSpec]],
    out_dir: str | Path, eps_values: Sequence[float] = DEFAULT_CURVE_EPS,
    num_attacks: int | None = None, k: int = 1, seed: int = 0,
    device: torch.device | str = "auto", data_root: str | Path | None = None,
    download: bool = False, batch_size: int = 256, progress: bool = True,
    record: dict | None = None,
) -> dict[str, Any]:
    """Fig. 2: for each model and eps, :func:`robustness_point` on its collection.

    A model is a checkpoint (its own test set) or a :class:`TargetSpec` (e.g. an outside model
    on a picture folder). Writes ``curves.json`` (through the store: resumable, one point per
    cell keyed by the model's fingerprint and eps, so a rerun reuses every point already
    computed), ``curves.csv`` and ``curves.png`` (one panel per attack plus the shift, one line
    per model, vanilla dashed). A model given as ``(label, model)`` is shown under that label,
    else as ``name (defense, eps)``. Returns the ``curves.json`` content plus ``computed``/
    ``reused`` counts.
    """
    check_flag(download, "download")

    def load(form, check):
        return load_target(form, device, data_root, download, progress=progress, check=check)

    curves = Curves(checkpoints, eps_values, num_attacks, k, seed, batch_size, progress, load,
                    record)
    return run(curves, out_dir, progress_log(progress))


def defense_comparison(
    vanilla_ckpt: str | Path, defended_ckpt: str | Path, eps: float | None = None, k: int = 1,
    num_attacks: int | None = None, seed: int = 0, device: torch.device | str = "auto",
    data_root: str | Path | None = None, download: bool = False, batch_size: int = 256,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Vanilla vs defended at one eps (default: the dataset's strongest), Tables 1 vs 2 style.

    Returns ``{"eps", "k", "attacks", "models": {"vanilla": row, "defended": row}, "text"}``;
    each row has ``recall@1``, ``{attack}_before``/``_after`` (mean normalized rank, %) and
    ``shift_mean``. Both checkpoints must be on the same dataset (their test set is X).
    """
    rows: dict[str, dict[str, Any]] = {}
    datasets = set()
    for role, ckpt in (("vanilla", vanilla_ckpt), ("defended", defended_ckpt)):
        target = load_target(ckpt, device, data_root, download, progress=progress)
        datasets.add(target.meta.dataset)
        if len(datasets) > 1:
            raise AdvrankError(f"cannot compare checkpoints of different datasets: {datasets}")
        if eps is None:
            eps = default_defense_eps(target.meta.dataset)
        point = robustness_point(target.model, target.gallery, eps, k, num_attacks, seed,
                                 batch_size, progress=progress)
        rows[role] = {**_model_row(target, model_label(ckpt, target.meta)), **point}
    result = {"eps": eps, "k": k, "attacks": list(PAPER_ATTACKS), "models": rows}
    result["text"] = format_comparison(result)
    return result
