"""Adversarial-training defenses (§3.3, Eq. 13) and the vanilla-vs-defended curves of Fig. 2.

Two batch transforms plug into :func:`advrank.training.train` (``batch_transform``); each
*replaces* every training image by an adversarial example made against the current model, which
is Madry et al.'s procedure (random start, L-inf PGD, the model frozen while attacking):

* ``est`` — :class:`EmbeddingShiftDefense`, the paper's defense (Eq. 13): every image x becomes
  ``x + argmax_{r in Γ} d(f(x + r), f(x))``, the maximum-embedding-shift example. The triplet
  loss on the adversarial batch is then exactly ``L_d-t`` of Eq. 13, since anchors, positives and
  negatives are all batch members and each one is replaced by its own max-shift example.
* ``madry`` — :class:`MadryRankingDefense`, the direct adaptation of Madry's defense that §3.3
  reports to diverge: every image, taken as a query against the clean embeddings of its own
  batch, is perturbed by the ranking attack that inverts its triplets (QA- on its same-class
  positives and QA+ on its other-class negatives, see :class:`TripletInversionObjective`).

:func:`shift_distance` measures how far the max-shift attack moves embeddings;
:func:`defense_curves` tracks CA+/CA-/QA+/QA- ranks and that shift distance against eps for
several checkpoints (Fig. 2) and :func:`defense_comparison` puts a vanilla and a defended model
side by side at one eps (Tables 1 vs 2).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from advrank.attacks.objectives import EmbeddingShiftObjective, RankingObjective
from advrank.attacks.pgd import frozen, pgd
from advrank.attacks.ranking import ATTACKS
from advrank.attacks.threat import LinfThreatModel
from advrank.data import dataset_info
from advrank.distances import Distance, get_distance
from advrank.errors import AdvrankError
from advrank.utils import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_images,
    file_sha256,
)

if TYPE_CHECKING:
    from advrank.protocol import Gallery
    from advrank.training import TrainConfig

DEFENSES = ("est", "madry")
DEFAULT_CURVE_EPS = (0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
DEFAULT_NUM_ATTACKS = 1000  # per (attack, eps) point; the paper uses T = |X| (10,000 on MNIST)
CURVES_FORMAT = "advrank-curves"


def _as_distance(distance: Distance | str) -> Distance:
    return get_distance(distance) if isinstance(distance, str) else distance


# --------------------------------------------------------------------------- batch transforms


class AdversarialDefense:
    """Base of the training-time batch transforms: an L-inf threat model with random start.

    ``steps``/``step_size`` default to the paper's eta/alpha for ``eps`` (30 steps of 0.01 at
    eps = 0.3). ``generator`` seeds the random start; ``None`` uses torch's global generator,
    which :func:`~advrank.training.train` reseeds every epoch, so resumed runs stay repeatable.
    """

    name = "defense"

    def __init__(self, eps: float, steps: int | None = None, step_size: float | None = None,
                 metric: Distance | str = "cosine", generator: torch.Generator | None = None):
        if not 0.0 < float(eps) <= 1.0:
            raise AdvrankError(f"defense eps must lie in (0, 1] (pixel units), got {eps}")
        self.threat = LinfThreatModel(float(eps), step_size, steps, random_start=True)
        self.distance = _as_distance(metric)
        self.generator = generator

    @property
    def eps(self) -> float:
        return self.threat.eps

    def describe(self) -> dict[str, Any]:
        """What the checkpoint metadata should record about this defense."""
        return {"defense": self.name, "metric": self.distance.name, **self.threat.describe()}

    def __call__(self, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` in [0, 1], labels ``[B]`` -> adversarial images, same shape,
        within ``eps`` of ``images`` (L-inf) and inside [0, 1]. Parameters get no gradients."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat}, metric={self.distance.name})"


class EmbeddingShiftDefense(AdversarialDefense):
    """``--defense est``: replace x by its maximum-embedding-shift example (§3.3, Eq. 13)."""

    name = "est"

    def __call__(self, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        with frozen(model), torch.no_grad():
            reference = model(images)  # f(x) [B, D], the point the attack moves away from
        objective = EmbeddingShiftObjective(reference, self.distance)
        return pgd(model, images, objective, self.threat, self.generator)


class TripletInversionObjective(RankingObjective):
    """The ranking attack that maximises a batch's triplet loss, one query per batch member.

    Each batch member b is a query q_b = x_b + r_b ranked against the *clean* batch embeddings
    ``batch [B, D]`` (its own clean copy left out). With P(b) its same-class members and N(b) the
    others, PGD minimises

        L_b = sum_{p in P(b)} sum_{n in N(b)} [d(q_b, x_n) - d(q_b, x_p)]_+ ,

    which is L_QA-(q_b, C = P(b); X = N(b)) of Eq. 9 and, identically, L_QA+(q_b, C = N(b);
    X = P(b)) of Eq. 11: positives are pushed down the ranking and negatives up, until every
    negative is ranked ahead of every positive, i.e. every triplet (q_b, p, n) is violated.
    A member without same-class batch mates has a zero loss (it keeps its random start). Rows
    are independent, so ``value_and_grad`` works through them in chunks to bound the
    ``[rows, P_max, B]`` hinge tensor.
    """

    def __init__(self, batch: torch.Tensor, labels: torch.Tensor, distance: Distance,
                 max_elements: int = 1 << 22):
        self.batch, self.distance = batch.detach(), distance
        labels = labels.to(batch.device)
        same = labels[:, None] == labels[None, :]  # [B, B]
        self_mask = torch.eye(labels.numel(), dtype=torch.bool, device=batch.device)
        self.pos, self.neg = same & ~self_mask, ~same  # [B, B] each
        # Positives are few (about B / classes per row): gather them into [B, P_max] columns
        # (padding masked out) so the hinge tensor is [rows, P_max, B], not [rows, B, B].
        p_max = max(1, int(self.pos.sum(1).max()))
        self.pos_idx = self.pos.int().argsort(dim=1, descending=True, stable=True)[:, :p_max]
        self.pos_valid = self.pos.gather(1, self.pos_idx)  # [B, P_max]
        self.rows = max(1, max_elements // (p_max * labels.numel()))

    def _rows_loss(self, emb: torch.Tensor, s: int) -> torch.Tensor:
        rows = slice(s, s + emb.shape[0])
        d = self.distance.pairwise(emb, self.batch)  # [b, B]: d(q_b, x_j)
        d_pos = d.gather(1, self.pos_idx[rows])  # [b, P_max]: d(q_b, x_p)
        diff = d[:, None, :] - d_pos[:, :, None]  # [b, P_max, B]: d(q, x_n) - d(q, x_p)
        pairs = self.pos_valid[rows, :, None] & self.neg[rows, None, :]
        return (torch.relu(diff) * pairs).sum(dim=(1, 2))

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._rows_loss(emb[s : s + self.rows], s)
                          for s in range(0, emb.shape[0], self.rows)])

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = [], []
        for s in range(0, emb.shape[0], self.rows):
            e = emb[s : s + self.rows].detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self._rows_loss(e, s)
                (g,) = torch.autograd.grad(loss.sum(), e)
            values.append(loss.detach())
            grads.append(g)
        return torch.cat(values), torch.cat(grads)


class MadryRankingDefense(AdversarialDefense):
    """``--defense madry``: the direct adaptation of Madry's defense to ranking (baseline).

    Exactly what it does, per training batch (images ``[B, C, H, W]``, labels ``[B]``):

    1. embed the clean batch with the frozen model: ``X = f(x) [B, D]``;
    2. perturb *every* image as a query with PGD (random start, same eps/alpha/eta as ``est``)
       on :class:`TripletInversionObjective` against X — the ranking attack that maximises the
       triplet loss by ranking all of the query's negatives ahead of all of its positives;
    3. hand back the perturbed batch, so the triplet loss is computed with all three triplet
       members adversarial (each perturbed as its own anchor), as in Eq. 13.

    §3.3 reports that such training diverges ("the generated adversarial examples being too
    strong"); the per-epoch ``loss`` in the checkpoint history shows whether it does here.
    """

    name = "madry"

    def __call__(self, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        if labels is None or labels.shape != images.shape[:1]:
            raise AdvrankError("the madry defense needs the batch labels [B]")
        with frozen(model), torch.no_grad():
            batch = model(images)  # [B, D]: the clean batch is the attack's candidate set X
        objective = TripletInversionObjective(batch, labels, self.distance)
        return pgd(model, images, objective, self.threat, self.generator)


def default_defense_eps(dataset: str) -> float:
    """The dataset's strongest attack eps (Tables 1-4): 0.3 for MNIST/Fashion, 0.06 for SOP."""
    return float(max(dataset_info(dataset).eps_grid))


def make_defense(name: str, config: TrainConfig, eps: float | None = None, *,
                 steps: int | None = None, step_size: float | None = None) -> AdversarialDefense:
    """The batch transform for ``--defense name`` of a :class:`~advrank.training.TrainConfig`.

    ``eps`` defaults to the strongest eps of ``config.dataset`` ("trained with the strongest
    adversary", §4); the distance is ``config.metric``; steps/step size default to the paper's.
    """
    classes = {"est": EmbeddingShiftDefense, "madry": MadryRankingDefense}
    if name not in classes:
        raise AdvrankError(f"unknown defense {name!r}; choose one of: {', '.join(DEFENSES)}")
    eps = default_defense_eps(config.dataset) if eps is None else float(eps)
    return classes[name](eps, steps=steps, step_size=step_size, metric=config.metric)


# --------------------------------------------------------------------------- measurement


def shift_distance(
    model: nn.Module, images: torch.Tensor, distance: Distance | str, eps: float,
    steps: int | None = None, step_size: float | None = None,
    generator: torch.Generator | None = None, batch_size: int = 256,
) -> torch.Tensor:
    """``d(f(x + r*), f(x)) [B]`` reached by the max-shift attack r* (§3.3) on images
    ``[B, C, H, W]`` (on the model's device), with the paper's alpha/eta unless given."""
    check_images(images)
    distance = _as_distance(distance)
    if eps == 0:
        return torch.zeros(images.shape[0], device=images.device)
    threat = LinfThreatModel(float(eps), step_size, steps, random_start=True)
    out = []
    with frozen(model):
        for s in range(0, images.shape[0], batch_size):
            x = images[s : s + batch_size]
            with torch.no_grad():
                reference = model(x)
            adv = pgd(model, x, EmbeddingShiftObjective(reference, distance), threat, generator)
            with torch.no_grad():
                out.append(distance.paired(model(adv), reference))
    return torch.cat(out)


def robustness_point(
    model: nn.Module, gallery: Gallery, eps: float, k: int = 1, num_attacks: int | None = None,
    seed: int = 0, batch_size: int = 256,
) -> dict[str, Any]:
    """One point of Fig. 2 for one model: CA+/CA-/QA+/QA- (w = m = k) mean normalized ranks
    (percent) before and after attack at ``eps``, and the mean/max max-shift distance.

    ``gallery`` is a :class:`~advrank.protocol.Gallery`; T = ``num_attacks`` (default
    ``min(1000, |X|)``). The shift is measured on the same T anchors the attacks use.
    """
    from advrank.protocol import run_attack

    n = len(gallery)
    t = min(DEFAULT_NUM_ATTACKS, n) if num_attacks is None else int(num_attacks)
    point: dict[str, Any] = {"eps": float(eps), "k": k, "num_attacks": t, "seed": seed}
    t0 = time.time()
    for attack in ATTACKS:
        summary = run_attack(model, gallery, attack, eps, k, t, seed, batch_size).summary()
        point[f"{attack}_before"] = summary["rank_before"]
        point[f"{attack}_after"] = summary["rank_after"]
    # protocol.select draws its anchors as this same seeded permutation
    anchors = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:t]
    shift = shift_distance(model, gallery.images(anchors), gallery.distance, eps,
                           generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    point["shift_mean"] = shift.mean().item()
    point["shift_max"] = shift.max().item()
    point["seconds"] = time.time() - t0
    return point


def _label(path: Path, meta: dict[str, Any]) -> str:
    defense = meta.get("defense")
    if not defense:
        return f"{path.stem} (vanilla)"
    eps = meta.get("defense_eps")
    return f"{path.stem} ({defense}" + (f", eps={eps:g})" if eps is not None else ")")


def _load_model(path: Path, device, data_root, download):
    """(model, meta, Gallery of its test set, R@1 in percent) for one checkpoint."""
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset
    from advrank.protocol import Gallery
    from advrank.ranking import recall_at_k

    model, meta = model_from_checkpoint(path, device)
    dataset = load_dataset(meta["dataset"], "test", data_root, download)
    distance = get_distance(meta["metric"])
    gallery = Gallery.build(model, dataset, distance, device)
    r1 = recall_at_k(gallery.embeddings, gallery.labels, distance, (1,))[1]
    return model, meta, gallery, r1


# --------------------------------------------------------------------------- Fig. 2 curves

_CSV_FIELDS = ["label", "checkpoint", "defense", "defense_eps", "eps", "k", "num_attacks",
               "seed", *(f"{a}_{w}" for a in ATTACKS for w in ("before", "after")),
               "shift_mean", "shift_max", "seconds"]


def _plot_curves(models: list[dict], points: list[dict], k: int, metric_names: set[str]) -> bytes:
    """PNG bytes: 5 panels (CA+, CA-, QA+, QA- rank after attack; max shift) against eps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(22, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas on this figure only: no pyplot, no global backend switch
    axes = fig.subplots(1, 5)
    panels = [(f"{a}_after", f"{a} ({'w' if a.startswith('CA') else 'm'}={k})",
               "mean normalized rank (%)") for a in ATTACKS]
    panels.append(("shift_mean", "max embedding shift", f"{'/'.join(sorted(metric_names))} "
                   "distance"))
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        for m in models:
            pts = sorted((p for p in points if p["label"] == m["label"]),
                         key=lambda p: p["eps"])
            style = "--" if not m.get("defense") else "-"
            ax.plot([p["eps"] for p in pts], [p[key] for p in pts], style, marker="o",
                    label=f"{m['label']}, R@1 {m['recall@1']:.1f}%")
        ax.set_title(title)
        ax.set_xlabel("eps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def defense_curves(
    checkpoints: Sequence[str | Path], out_dir: str | Path,
    eps_values: Sequence[float] = DEFAULT_CURVE_EPS, num_attacks: int | None = None, k: int = 1,
    seed: int = 0, device: torch.device | str = "cpu", data_root: str | Path | None = None,
    download: bool = False, batch_size: int = 256, progress: bool = True,
) -> dict[str, Any]:
    """Fig. 2: for each checkpoint and eps, CA+/CA-/QA+/QA- (w = m = ``k``) mean ranks after
    attack and the mean max-shift distance (:func:`robustness_point`), on its own test set.

    Writes ``curves.json``, ``curves.csv`` and ``curves.png`` (5 panels, one line per
    checkpoint, vanilla dashed) into ``out_dir``, atomically. ``curves.json`` is rewritten after
    every point; a rerun reuses each stored point whose checkpoint content (SHA-256), eps, k,
    seed and requested T match, so an interrupted run resumes (``batch_size`` is not part of
    that key: it can only change the random starts of the shift measurement). Returns the
    ``curves.json`` object plus ``computed``/``reused`` counts.
    """
    if not checkpoints:
        raise AdvrankError("give at least one checkpoint")
    eps_values = sorted({float(e) for e in eps_values})
    if not eps_values:
        raise AdvrankError("give at least one eps value")
    for e in eps_values:
        LinfThreatModel(e)  # validates the range with a readable error before any work
    out_dir = Path(out_dir)
    json_path = out_dir / "curves.json"
    stored: dict[tuple, dict] = {}
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())
            for p in old.get("points", []) if old.get("format") == CURVES_FORMAT else []:
                stored[(p["fingerprint"], p["eps"], p["k"], p["seed"], p["requested"])] = p
        except (ValueError, KeyError, TypeError, AttributeError):
            stored = {}  # an unreadable or foreign file: recompute everything
            print(f"advrank: ignoring unreadable {json_path}", file=sys.stderr)

    models, points, labels_seen = [], [], set()
    computed = reused = 0
    result: dict[str, Any] = {}

    def write_json() -> None:
        result.update({
            "format": CURVES_FORMAT, "eps_values": eps_values, "k": k, "seed": seed,
            "num_attacks": num_attacks, "attacks": list(ATTACKS), "checkpoints": models,
            "points": points,
        })
        atomic_write_json(json_path, result)

    for ckpt in checkpoints:
        path = Path(ckpt)
        model, meta, gallery, r1 = _load_model(path, device, data_root, download)
        label = _label(path, meta)
        while label in labels_seen:  # same file name twice: keep legend entries distinct
            label += "'"
        labels_seen.add(label)
        fp = file_sha256(path, 16)
        models.append({"label": label, "checkpoint": str(path), "fingerprint": fp,
                       "dataset": meta["dataset"], "arch": meta["arch"],
                       "metric": meta["metric"], "defense": meta.get("defense"),
                       "defense_eps": meta.get("defense_eps"), "recall@1": r1,
                       "gallery_size": len(gallery)})
        for eps in eps_values:
            key = (fp, eps, k, seed, num_attacks)
            if key in stored:
                point = {**stored[key], "label": label, "checkpoint": str(path)}
                reused += 1
                if progress:
                    print(f"{label} eps={eps:g}: reused from {json_path}", file=sys.stderr)
            else:
                point = robustness_point(model, gallery, eps, k, num_attacks, seed, batch_size)
                point.update({"label": label, "checkpoint": str(path), "fingerprint": fp,
                              "defense": meta.get("defense"),
                              "defense_eps": meta.get("defense_eps"), "requested": num_attacks})
                computed += 1
                if progress:
                    ranks = "  ".join(f"{a} {point[f'{a}_after']:.1f}" for a in ATTACKS)
                    print(f"{label} eps={eps:g}: {ranks}  shift {point['shift_mean']:.3f} "
                          f"({point['seconds']:.1f}s)", file=sys.stderr)
            points.append(point)
            write_json()

    files = {"json": str(json_path), "csv": str(out_dir / "curves.csv"),
             "png": str(out_dir / "curves.png")}
    result["files"] = files
    write_json()
    atomic_write_text(files["csv"], _csv_text(points))
    atomic_write_bytes(files["png"], _plot_curves(models, points, k,
                                                  {m["metric"] for m in models}))
    return {**result, "computed": computed, "reused": reused}


def format_curves(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`defense_curves` output, one row per (checkpoint, eps)."""
    head = f"{'model':<36} {'eps':>5} " + " ".join(f"{a:>6}" for a in ATTACKS) + "  shift"
    lines = [head]
    for p in result["points"]:
        ranks = " ".join(f"{p[f'{a}_after']:6.1f}" for a in ATTACKS)
        lines.append(f"{p['label'][:36]:<36} {p['eps']:5.3g} {ranks}  {p['shift_mean']:.3f}")
    files = result.get("files", {})
    lines.append(f"(mean rank % after attack, T={result['points'][0]['num_attacks']}, "
                 f"k={result['k']}; wrote {', '.join(files.values())})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- side by side


def defense_comparison(
    vanilla_ckpt: str | Path, defended_ckpt: str | Path, eps: float | None = None, k: int = 1,
    num_attacks: int | None = None, seed: int = 0, device: torch.device | str = "cpu",
    data_root: str | Path | None = None, download: bool = False, batch_size: int = 256,
) -> dict[str, Any]:
    """Vanilla vs defended at one eps (default: the dataset's strongest), Tables 1 vs 2 style.

    Returns ``{"eps", "k", "models": {"vanilla": row, "defended": row}, "text"}``; each row has
    ``recall@1``, ``{attack}_before``/``_after`` (mean normalized rank, %) and ``shift_mean``.
    Both checkpoints must be on the same dataset (their test set is the gallery).
    """
    rows: dict[str, dict[str, Any]] = {}
    datasets = set()
    for role, ckpt in (("vanilla", vanilla_ckpt), ("defended", defended_ckpt)):
        path = Path(ckpt)
        model, meta, gallery, r1 = _load_model(path, device, data_root, download)
        datasets.add(meta["dataset"])
        if len(datasets) > 1:
            raise AdvrankError(f"cannot compare checkpoints of different datasets: {datasets}")
        if eps is None:
            eps = default_defense_eps(meta["dataset"])
        point = robustness_point(model, gallery, eps, k, num_attacks, seed, batch_size)
        rows[role] = {"checkpoint": str(path), "label": _label(path, meta),
                      "defense": meta.get("defense"), "defense_eps": meta.get("defense_eps"),
                      "recall@1": r1, **point}
    result = {"eps": eps, "k": k, "models": rows}
    result["text"] = format_comparison(result)
    return result


def format_comparison(result: dict[str, Any]) -> str:
    """Plain-text table of :func:`defense_comparison`: one row per model."""
    rows = result["models"]
    head = (f"{'model':<36} {'R@1':>6} " + " ".join(f"{a:>12}" for a in ATTACKS)
            + "  shift")
    lines = [f"eps = {result['eps']:g}, w = m = {result['k']} "
             f"(mean normalized rank %, before -> after attack)", head]
    for r in rows.values():
        cells = " ".join(f"{r[f'{a}_before']:5.1f}->{r[f'{a}_after']:5.1f}" for a in ATTACKS)
        lines.append(f"{r['label'][:36]:<36} {r['recall@1']:6.2f} {cells}  {r['shift_mean']:.3f}")
    return "\n".join(lines)


__all__ = [
    "DEFENSES", "DEFAULT_CURVE_EPS", "AdversarialDefense", "EmbeddingShiftDefense",
    "MadryRankingDefense", "TripletInversionObjective", "default_defense_eps", "defense_comparison",
    "defense_curves", "format_comparison", "format_curves", "make_defense", "robustness_point",
    "shift_distance",
]
