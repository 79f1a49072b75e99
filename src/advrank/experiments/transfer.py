"""Transferability of the ranking attacks (§5, Table 5): adversarial examples made white-box on
a *source* model, ranked by *target* models with the very same selections (the same c and Q
for CA, the same q and C for QA). Each model ranks with its own distance and its own embedding
of the same collection X. By default the "-" pools (top 1%) and C_SP are drawn on the source
model's ranking, the only information a black-box attacker has; ``select_on="target"`` draws
them on the target's instead (what the authors' released code does for "-").
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import (
    AttackKind,
    check_fits_all,
    check_ranked,
    get_attack,
    make_kinds,
)
from advrank.attacks.selection import Selection, num_attacks_for
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_choice, check_flag, check_int, format_eps
from advrank.core.distances import Distance, get_distance
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.experiments.paper import PAPER_ATTACKS
from advrank.experiments.protocol import (
    attack_batches,
    check_gallery,
    check_run,
    check_threat,
    embed_checked,
)
from advrank.experiments.results import AttackResult, RankLog, check_cell_options
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store, figures_problem
from advrank.experiments.target import TargetSpec, load_target, target_form
from advrank.registry import ATTACKS
from advrank.reports.tables import transfer_markdown

SELECT_ON = ("source", "target")
MATRIX_FORMAT = "advrank-transfer-matrix"
_SHARED_KEYS = ("attack", "eps", "k", "k_name", "gallery_size", "threat")


def transfer_pass(
    source: tuple[nn.Module, Gallery], rankers: Sequence[tuple[nn.Module, Gallery]],
    kind: AttackKind, threat: LinfThreatModel, selection: Selection, seed: int,
    batch_size: int, progress: bool | None = None,
) -> tuple[AttackResult, list[AttackResult]]:
    """Attack ``selection`` white-box on the source and rank each batch's adversarial images on
    the source and on every ranker; the images are made once and never all held at once.

    The source figures equal a white-box ``run_attack`` with the same seed.
    """
    t0 = time.time()
    everyone = [source, *rankers]
    logs: dict[tuple[int, int], tuple[nn.Module, Gallery, RankLog]] = {}
    for model, gallery in everyone:  # one log per distinct ranker: the diagonal reuses the source
        logs.setdefault((id(model), id(gallery)), (model, gallery, RankLog()))
    for part, adv in attack_batches(source[0], source[1], kind, threat, selection, seed,
                                    batch_size, progress, f"transfer {kind.name} "
                                                          f"eps={format_eps(threat.eps)}"):
        with torch.no_grad():
            for model, gallery, log in logs.values():
                emb = gallery.embeddings
                clean = kind.measure(gallery, part, emb[part.anchors.to(emb.device)])
                log.add(clean, kind.measure(gallery, part,
                                            embed_checked(model, adv.to(emb.device))))
    seconds, k = time.time() - t0, selection.targets.shape[1]
    src, *others = [logs[id(m), id(g)][2].result(kind, threat.eps, k, g, threat, seconds)
                    for m, g in everyone]
    return src, others


def _source_part(summary: dict) -> dict:
    keys = ("rank_before", "rank_before_se", "rank_after", "rank_after_se", "recall@1_before",
            "recall@1_after", "sp_rank_before", "sp_rank_after", "sp_rank_after_max")
    return {key: summary[key] for key in keys if key in summary}


class Transfer(Experiment):
    """One transfer cell (``advrank transfer``): the selection drawn by the kind's rules on
    ``select_on``'s ranking, made adversarial white-box on the source and ranked by the target.
    The cell holds the target's figures, the source's white-box figures under ``"source"``;
    :func:`transfer_attack` runs it without a folder."""

    name, filename, format = "transfer", "transfer.json", "advrank-transfer"

    def __init__(self, source: tuple[nn.Module, Gallery], target: tuple[nn.Module, Gallery],
                 kind: AttackKind, threat: LinfThreatModel, settings: dict, batch_size: int,
                 progress: bool | None):
        self.source, self.target, self.kind, self.threat = source, target, kind, threat
        self.settings, self.batch_size, self.progress = settings, batch_size, progress

    def identity(self) -> dict[str, Any]:
        return {"attack": self.kind.name, **self.settings, "threat": self.threat.describe()}

    def cells(self, store: Store) -> list[Cell]:
        return [Cell(self.kind.name, self._transfer)]

    def _transfer(self) -> dict[str, Any]:
        s = self.settings
        chooser = self.source[1] if s["select_on"] == "source" else self.target[1]
        selection = self.kind.select(chooser, s["k"], s["num_attacks"], s["seed"])
        src, (tgt,) = transfer_pass(self.source, [self.target], self.kind, self.threat,
                                    selection, s["seed"], self.batch_size, self.progress)
        return {**tgt.summary(), "select_on": s["select_on"],
                "source_distance": s["source_distance"], "target_distance": s["target_distance"],
                "source": _source_part(src.summary())}

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        return dict(store.cells[self.kind.name])


def transfer_attack(
    source_model: nn.Module, target_model: nn.Module, dataset, attack: str | AttackKind,
    eps: float, k: int = 1, num_attacks: int | None = None, seed: int = 0,
    source_distance: Distance | str = "cosine", target_distance: Distance | str | None = None,
    device: torch.device | str = "cpu", batch_size: int = 256,
    threat: LinfThreatModel | None = None, select_on: str = "source",
    source_gallery: Gallery | None = None, target_gallery: Gallery | None = None,
    progress: bool | None = None, **options,
) -> dict[str, Any]:
    """Transfer attack: make adversarial examples on the source, rank them on the target.

    Both models embed the same ``dataset`` (the gallery X, each with its own distance;
    ``target_distance`` defaults to ``source_distance``); pass prebuilt galleries to skip that
    (their own distances are then the ones used, and recorded).
    T = ``num_attacks`` defaults to |X| as in the paper. The selection is drawn once by the
    kind's rules on ``select_on``'s ranking and used unchanged on both models (the one cell of
    :class:`Transfer`, computed in memory).

    Returns the target's figures at top level and the source's white-box figures under
    ``"source"``. Transferring a model to itself equals :func:`protocol.run_attack`.
    """
    kind = check_ranked(get_attack(attack, **options), "transfer")
    check_choice(select_on, "select_on", SELECT_ON)
    num_attacks, seed, batch_size = check_run(num_attacks, seed, batch_size, progress)
    for what, model in (("source", source_model), ("target", target_model)):
        if not isinstance(model, nn.Module):
            raise AdvrankError(f"the {what} model must be a torch.nn.Module, got "
                               f"{type(model).__name__}")
    for model, gallery in ((source_model, source_gallery), (target_model, target_gallery)):
        if gallery is not None:
            check_gallery(model, gallery)
    source_distance = get_distance(source_distance)
    target_distance = get_distance(target_distance or source_distance)
    if source_gallery is None:
        source_gallery = Gallery.build(source_model, dataset, source_distance, device)
    if target_gallery is None:
        target_gallery = Gallery.build(target_model, dataset, target_distance, device)
    if len(source_gallery) != len(target_gallery):
        raise AdvrankError(f"source and target galleries differ in size ({len(source_gallery)} "
                           f"vs {len(target_gallery)}); transfer needs one shared collection")
    settings = {"eps": eps, "k": k, "seed": seed, "select_on": select_on,
                "num_attacks": len(source_gallery) if num_attacks is None else num_attacks,
                # the distances each ranking used: a prebuilt gallery's own, not the default
                "source_distance": source_gallery.distance.name,
                "target_distance": target_gallery.distance.name}
    return run(Transfer((source_model, source_gallery), (target_model, target_gallery), kind,
                        check_threat(threat, eps), settings, batch_size, progress), None)


def _transfer_row(source: str, kind: AttackKind, rankers: Mapping[str, tuple[nn.Module, Gallery]],
                  settings: dict, batch_size: int, progress: bool) -> dict[str, dict]:
    """One matrix row: the source's adversarial examples, ranked by every model. Targets that
    share a selection are served by one pass (with ``select_on="source"`` that is all of them,
    so each source's examples are made exactly once)."""
    threat = LinfThreatModel(settings["eps"], steps=settings["steps"])
    groups: list[tuple[Selection, list[str]]] = []
    for name, (_, gallery) in rankers.items():
        chooser = rankers[source][1] if settings["select_on"] == "source" else gallery
        sel = kind.select(chooser, settings["k"], settings["num_attacks"], settings["seed"])
        match = next((names for other, names in groups if sel.same_as(other)), None)
        if match is None:
            groups.append((sel, [name]))
        else:
            match.append(name)
    row: dict[str, dict] = {}
    for sel, names in groups:
        _, results = transfer_pass(rankers[source], [rankers[n] for n in names], kind, threat,
                                   sel, settings["seed"], batch_size, progress)
        for name, res in zip(names, results, strict=True):
            # attack, eps, k, threat...: the same for every cell, kept once in the settings
            row[name] = {key: v for key, v in res.summary().items() if key not in _SHARED_KEYS}
    return {name: row[name] for name in rankers}


def _load_rankers(targets, load, check=None):
    """(rankers {name: (model, gallery)}, model descriptions, dataset name, |X|);
    ``check(|X|)`` runs before each gallery is embedded."""
    if not targets:
        raise AdvrankError("the transfer matrix needs at least one checkpoint")
    rankers, models, dataset_name = {}, {}, None
    for name, form in targets.items():
        target = load(form, check=check)
        if dataset_name is None:
            dataset_name = target.meta.dataset
        elif target.meta.dataset != dataset_name:
            raise AdvrankError(f"checkpoint {name} ({target.source}) is for "
                               f"{target.meta.dataset}, the others for {dataset_name}; "
                               "transfer needs one shared test set")
        rankers[name] = (target.model, target.gallery)
        models[name] = {"checkpoint": target.source, "sha256": target.fingerprint,
                        "arch": target.meta.arch, "metric": target.meta.metric,
                        "recall@1": target.meta.recall_at_1,
                        "defense": target.meta.defense}
    return rankers, models, dataset_name, len(target.gallery)


class TransferMatrix(Experiment):
    """Table 5's declaration: one cell per (attack, source) row, holding the source's
    examples ranked by every model; the tables are rewritten after every row. See
    :func:`transfer_matrix`."""

    name, filename, format = "transfer", "transfer.json", MATRIX_FORMAT

    def __init__(self, kinds: dict[str, AttackKind], rankers: dict, models: dict,
                 settings: dict, batch_size: int, progress: bool, record: dict | None):
        self.kinds, self.rankers, self.models = kinds, rankers, models
        self.settings, self.batch_size, self.progress = settings, batch_size, progress
        self._record = record or {}

    def identity(self) -> dict[str, Any]:
        return {**self.settings, "models": {m: v["sha256"] for m, v in self.models.items()}}

    def record(self) -> dict[str, Any]:
        return self._record

    def check_cell(self, key: str, row) -> str | None:  # a stored (attack, source) row
        attack, _, source = key.partition("|")
        if attack not in ATTACKS or source not in self.models:
            return "its attack or source model is unknown"
        if not isinstance(row, dict) or set(row) != set(self.models):
            return "it does not hold one cell per model"
        return next((p for p in map(figures_problem, row.values()) if p), None)

    def prepare(self, store: Store) -> None:
        check_cell_options(store.path, ({"attack": key.partition("|")[0], **cell}
                                        for key, row in store.cells.items()
                                        for cell in row.values()), self.kinds)

    def cells(self, store: Store) -> list[Cell]:
        return [Cell(f"{attack}|{source}", partial(_transfer_row, source, kind, self.rankers,
                                                   self.settings, self.batch_size,
                                                   self.progress))
                for attack, kind in self.kinds.items() for source in self.rankers]

    def announce(self, todo: int, done: int) -> str:
        return f"transfer: {todo} rows to run ({done} already done)"

    def finished(self, store: Store, cell: Cell, row: dict, seconds: float, log) -> None:
        self.publish(store, [])
        attack, _, source = cell.key.partition("|")
        log(f"transfer {attack} from {source}: " + ", ".join(
            f"{t} {c['rank_before']:.1f}→{c['rank_after']:.1f}" for t, c in row.items())
            + f" ({seconds:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        """Rewrite transfer.json's readable layout (results[attack][source][target]) and
        transfer.md from the finished rows."""
        results: dict[str, dict] = {a: {} for a in self.kinds}
        for key, row in store.cells.items():
            attack, _, source = key.partition("|")
            results.setdefault(attack, {})[source] = row
        complete = all(f"{a}|{s}" in store for a in self.kinds for s in self.models)
        store.extra = {"settings": self.settings, "models": self.models, "results": results,
                       "complete": complete}
        store.flush()
        store.write_text("transfer.md", transfer_markdown(store.extra))
        return {**store.content(), **store.extra}


def _matrix_kinds(attacks: Sequence[str], options: dict) -> dict[str, AttackKind]:
    kinds = make_kinds(attacks, options)
    for kind in kinds.values():
        check_ranked(kind, "transfer")
    return kinds


def transfer_matrix(
    checkpoints: Mapping[str, str | Path | TargetSpec], attacks: Sequence[str] = PAPER_ATTACKS,
    eps: float = 0.3, k: int = 1, num_attacks: int | None = None, seed: int = 0,
    out_dir: str | Path = "transfer", device: torch.device | str = "auto",
    batch_size: int = 256, steps: int | None = None, select_on: str = "source",
    data_root: str | Path | None = None, download: bool = False, progress: bool = False,
    record: dict | None = None, **options,
) -> dict[str, Any]:
    """Fill the Table 5 matrix (rows = source, columns = target) for every attack.

    ``checkpoints`` maps a display name to a model: a checkpoint path or a
    :class:`TargetSpec` (an outside model on a collection); all must share a collection X.
    Each (attack, source) row makes its adversarial examples once and ranks them on every
    model; ``out_dir/transfer.json`` (through the store: resumable, refused when made with
    other settings or model contents) and ``transfer.md`` are rewritten after every row.
    ``num_attacks`` defaults to min(1000, |X|) (the one rule of every command); ``options``
    go to the kinds that take them.
    """
    check_choice(select_on, "select_on", SELECT_ON)
    kinds = _matrix_kinds(attacks, options)
    num_attacks, seed, batch_size = check_run(num_attacks, seed, batch_size, progress)
    k = check_int(k, "w/m")
    check_flag(download, "download")
    if not isinstance(checkpoints, Mapping) or not all(
            isinstance(name, str) and name for name in checkpoints):
        raise AdvrankError("checkpoints must map display names to checkpoint paths")
    targets = {name: target_form(form) for name, form in checkpoints.items()}
    threat = LinfThreatModel(eps, steps=steps)
    rankers, models, dataset_name, n = _load_rankers(
        targets, lambda form, check: load_target(form, device, data_root, download,
                                                 progress=progress, check=check),
        check=lambda n: check_fits_all(kinds.values(), [k], num_attacks_for(num_attacks, n), n))
    settings = {"dataset": dataset_name, "gallery_size": n, "eps": eps, "k": k,
                "num_attacks": num_attacks_for(num_attacks, n), "seed": seed,
                "steps": steps, "select_on": select_on, "threat": threat.describe()}
    matrix = TransferMatrix(kinds, rankers, models, settings, batch_size, progress, record)
    return run(matrix, out_dir, progress_log(progress))
