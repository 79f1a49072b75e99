"""Fig. 2 and Tables 1 vs 2: how the attacks fare against vanilla and defended models as eps
grows, with the maximum embedding shift (§3.3) as the robustness measure."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import check_fits_all, make_kinds
from advrank.attacks.es import shift_distance
from advrank.attacks.selection import draw_anchors
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import (
    check_flag,
    check_int,
    check_list,
    check_name,
    check_path,
    check_progress,
    check_seed,
)
from advrank.core.gallery import Gallery
from advrank.core.metrics import recall_at_k
from advrank.defenses.base import default_defense_eps
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS
from advrank.experiments.protocol import check_batch_size, run_attack
from advrank.experiments.store import Store, figures_problem, is_number
from advrank.experiments.target import Target, load_target
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


def model_label(path: str | Path, meta: dict[str, Any]) -> str:
    """``name (vanilla)`` or ``name (est, eps=0.3)``: how a model appears in legends."""
    stem = Path(path).stem
    defense = meta.get("defense")
    if not defense:
        return f"{stem} (vanilla)"
    eps = meta.get("defense_eps")
    return f"{stem} ({defense}" + (f", eps={eps:g})" if eps is not None else ")")


def _model_row(target: Target, label: str) -> dict[str, Any]:
    g = target.gallery
    r1 = recall_at_k(g.embeddings, g.labels, g.distance, (1,))[1]
    return {"label": label, "checkpoint": target.source, "fingerprint": target.fingerprint,
            "dataset": target.meta["dataset"], "arch": target.meta["arch"],
            "metric": target.meta["metric"], "defense": target.meta.get("defense"),
            "defense_eps": target.meta.get("defense_eps"), "recall@1": r1,
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


def _labelled_checkpoint(item) -> tuple[str | None, str]:
    """``path`` or ``(label, path)`` -> ``(label or None, path)``, both checked."""
    if isinstance(item, tuple) and len(item) == 2:
        label = None if item[0] is None else check_name(item[0], "checkpoint label")
        return label, check_path(item[1], "checkpoint")
    return None, check_path(item, "checkpoint")


def _check_curve_args(checkpoints, eps_values, num_attacks, k, seed, batch_size, progress,
                      download) -> tuple[list, list[float]]:
    """(checkpoints, sorted eps values), every argument checked before any work."""
    checkpoints = check_list(checkpoints, "checkpoints", _labelled_checkpoint)
    # validates the range with a readable error before any work
    eps_values = sorted(check_list(eps_values, "eps values", lambda e: LinfThreatModel(e).eps))
    if num_attacks is not None:
        check_int(num_attacks, "number of attacks")
    check_int(k, "w/m")
    check_seed(seed)
    check_batch_size(batch_size)
    check_progress(progress)
    check_flag(download, "download")
    return checkpoints, eps_values


def defense_curves(
    checkpoints: Sequence[str | Path | tuple[str, str | Path]], out_dir: str | Path,
    eps_values: Sequence[float] = DEFAULT_CURVE_EPS, num_attacks: int | None = None, k: int = 1,
    seed: int = 0, device: torch.device | str = "auto", data_root: str | Path | None = None,
    download: bool = False, batch_size: int = 256, progress: bool = True,
    record: dict | None = None,
) -> dict[str, Any]:
    """Fig. 2: for each checkpoint and eps, :func:`robustness_point` on its own test set.

    Writes ``curves.json`` (through the store: resumable, one point per cell keyed by the
    checkpoint's content and eps, so a rerun reuses every point already computed),
    ``curves.csv`` and ``curves.png`` (one panel per attack plus the shift, one line per
    checkpoint, vanilla dashed). A checkpoint given as ``(label, path)`` is shown under that
    label, else as ``file (defense, eps)``. Returns the ``curves.json`` content plus ``computed``/
    ``reused`` counts.
    """
    checkpoints, eps_values = _check_curve_args(checkpoints, eps_values, num_attacks, k, seed,
                                                batch_size, progress, download)
    kinds = make_kinds(PAPER_ATTACKS, {})

    def check(n: int) -> None:  # before each gallery is embedded
        t = min(DEFAULT_NUM_ATTACKS, n) if num_attacks is None else num_attacks
        check_fits_all(kinds.values(), [k], t, n)

    identity = {"k": k, "seed": seed, "num_attacks": num_attacks,
                "attacks": list(PAPER_ATTACKS)}
    models, points, computed, reused = [], [], 0, 0
    if len({f"{e:g}" for e in eps_values}) != len(eps_values):
        raise AdvrankError("eps values that agree to 6 significant digits are one point; give "
                           "each eps once")
    with Store(out_dir, "curves.json", CURVES_FORMAT, identity, record,
               check_cell=check_point) as st:
        for name, path in checkpoints:
            target = load_target(path, device, data_root, download, progress=progress,
                                 check=check)
            label = name or model_label(path, target.meta)
            while label in {m["label"] for m in models}:  # same file name twice
                label += "'"
            models.append(_model_row(target, label))
            for eps in eps_values:
                key = f"{target.fingerprint}|{eps:g}"
                if key in st:
                    reused += 1
                else:
                    point = robustness_point(target.model, target.gallery, eps, k, num_attacks,
                                             seed, batch_size, progress=progress)
                    st.put(key, point)
                    computed += 1
                    _log_point(label, point, progress)
                points.append({**st.get(key), "label": label, "checkpoint": str(path),
                               "fingerprint": target.fingerprint,
                               "defense": target.meta.get("defense"),
                               "defense_eps": target.meta.get("defense_eps")})
        files = {"json": str(st.path), "csv": str(st.dir / "curves.csv"),
                 "png": str(st.dir / "curves.png")}
        st.extra = {"eps_values": eps_values, "attacks": list(PAPER_ATTACKS),
                    "checkpoints": models, "points": points, "files": files}
        st.flush()
        st.write_text("curves.csv", _csv_text(points, PAPER_ATTACKS))
        st.write_bytes("curves.png", curves_png(
            models, points, list(PAPER_ATTACKS), k, {a: size_name(a) for a in PAPER_ATTACKS},
            {m["metric"] for m in models}))
        return {**st.content(), "k": k, "computed": computed, "reused": reused}


def _log_point(label: str, point: dict, progress: bool) -> None:
    if progress:
        ranks = "  ".join(f"{a} {point[f'{a}_after']:.1f}" for a in PAPER_ATTACKS)
        print(f"{label} eps={point['eps']:g}: {ranks}  shift {point['shift_mean']:.3f} "
              f"({point['seconds']:.1f}s)", file=sys.stderr)


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
        datasets.add(target.meta["dataset"])
        if len(datasets) > 1:
            raise AdvrankError(f"cannot compare checkpoints of different datasets: {datasets}")
        if eps is None:
            eps = default_defense_eps(target.meta["dataset"])
        point = robustness_point(target.model, target.gallery, eps, k, num_attacks, seed,
                                 batch_size, progress=progress)
        rows[role] = {**_model_row(target, model_label(ckpt, target.meta)), **point}
    result = {"eps": eps, "k": k, "attacks": list(PAPER_ATTACKS), "models": rows}
    result["text"] = format_comparison(result)
    return result
