"""Black-box properties of the ranking attacks (§5): transferability and universal perturbations.

* **Transfer** (Table 5): adversarial examples are made white-box on a *source* model and then
  ranked by a *target* model with the very same selections (the same c and Q for CA, the same q
  and C for QA). Each model ranks with its own distance and its own embedding of the same test
  set X. By default the "-" pools (top 1%) and C_SP are drawn on the source model's ranking, the
  only information a black-box attacker has; ``select_on="target"`` draws them on the target's
  instead (what the authors' released code does for "-", see :func:`transfer_attack`).
* **Universal perturbations** (Eq. 14, Table 6): one r, ``||r||_inf <= eps``, is shared by a set
  of candidates (I-CA±) or queries (I-QA±); it is optimised on a random 5% of X ("seen") and
  also evaluated on a disjoint random 5% ("unseen").

Figures are the normalized ranks of §4 in percent (mean over the attacks, standard errors).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.pgd import frozen
from advrank.attacks.ranking import ATTACKS, AttackSpec, RankingAttack, parse_attack
from advrank.attacks.threat import LinfThreatModel, paper_step_size
from advrank.distances import Distance, get_distance
from advrank.errors import AdvrankError
from advrank.protocol import (
    AttackResult,
    Gallery,
    RankLog,
    Selection,
    measure_ranks,
    select,
    sp_candidates,
    top_pool_size,
)
from advrank.utils import atomic_write_json, atomic_write_text, file_sha256

SELECT_ON = ("source", "target")
UNIVERSAL_MODES = ("own", "shared")
#: PGD iterations for a universal perturbation. One r must serve hundreds of inputs whose
#: gradients partly cancel, so it needs far more sign steps than the per-image eta <= 30 of §4;
#: 100 is also what the authors' released code uses for its image-agnostic attacks.
UNIVERSAL_STEPS = 100
MATRIX_FORMAT = "advrank-transfer-matrix"
_SHARED_KEYS = ("attack", "eps", "k", "gallery_size", "threat")


def _as_distance(distance: Distance | str) -> Distance:
    return get_distance(distance) if isinstance(distance, str) else distance


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    se = (v.std(unbiased=True) / math.sqrt(v.numel())).item() if v.numel() > 1 else 0.0
    return v.mean().item(), se


# ================================================================================ transfer


def _transfer_pass(
    source_model: nn.Module, source_gallery: Gallery, targets: Sequence[tuple[nn.Module, Gallery]],
    spec: AttackSpec, threat: LinfThreatModel, xi: float | None, selection: Selection, seed: int,
    batch_size: int, progress: bool = False,
) -> tuple[AttackResult, list[AttackResult]]:
    """Attack ``selection`` white-box on the source and rank each batch's adversarial images on
    the source and on every target model; the images are made once and never all held at once.

    The per-batch generator seeds and the batch order are those of :func:`protocol.run_attack`,
    so the source figures equal a white-box ``run_attack`` with the same seed and batch size.
    """
    atk = RankingAttack(source_model, source_gallery.embeddings, source_gallery.distance, spec,
                        threat, xi)
    t0 = time.time()
    # One log per distinct (model, gallery): the diagonal of a matrix reuses the source's.
    rankers = [(source_model, source_gallery), *targets]
    logs: dict[tuple[int, int], tuple[nn.Module, Gallery, RankLog]] = {}
    for model, gallery in rankers:
        logs.setdefault((id(model), id(gallery)), (model, gallery, RankLog()))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(selection), desc=f"transfer {spec.name} eps={threat.eps}",
                   file=sys.stderr, leave=False)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        images = source_gallery.images(part.anchors)
        gen = torch.Generator().manual_seed(seed * 7919 + s)
        adv = atk(images, part.targets, part.sp, generator=gen)  # [B, C, H, W] in [0, 1]
        with torch.no_grad():
            for model, gallery, log in logs.values():
                emb = gallery.embeddings
                adv_emb = model(adv.to(emb.device))
                clean = measure_ranks(gallery, spec, part, emb[part.anchors.to(emb.device)])
                log.add(clean, measure_ranks(gallery, spec, part, adv_emb))
        if bar is not None:
            bar.update(part.anchors.numel())
    if bar is not None:
        bar.close()
    seconds = time.time() - t0
    k = selection.targets.shape[1]
    src, *tgts = [logs[id(m), id(g)][2].result(spec, threat.eps, k, g, threat, atk.xi, seconds)
                  for m, g in rankers]
    return src, tgts


def _check_select_on(select_on: str) -> None:
    if select_on not in SELECT_ON:
        raise AdvrankError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")


def _check_same_images(a: Gallery, b: Gallery) -> None:
    if len(a) != len(b):
        raise AdvrankError(f"source and target galleries differ in size ({len(a)} vs {len(b)}); "
                           "transfer needs both models to rank the same test set")


def _source_part(summary: dict) -> dict:
    keys = ("rank_before", "rank_before_se", "rank_after", "rank_after_se", "recall@1_before",
            "recall@1_after", "sp_rank_before", "sp_rank_after", "sp_rank_after_max")
    return {key: summary[key] for key in keys if key in summary}


def transfer_attack(
    source_model: nn.Module, target_model: nn.Module, dataset, attack: str | AttackSpec,
    eps: float, k: int = 1, num_attacks: int | None = None, seed: int = 0,
    source_distance: Distance | str = "cosine", target_distance: Distance | str | None = None,
    device: torch.device | str = "cpu", batch_size: int = 256, xi: float | None = None,
    g: int = 5, threat: LinfThreatModel | None = None, select_on: str = "source",
    source_gallery: Gallery | None = None, target_gallery: Gallery | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Transfer attack (Table 5): make adversarial examples on the source, rank them on the target.

    Both models embed the same ``dataset`` (the gallery X, each with its own distance;
    ``target_distance`` defaults to ``source_distance``); pass prebuilt galleries to skip that.
    ``num_attacks`` T defaults to |X| as in the paper. The selection (anchors ``[T]``, Q or C
    ``[T, k]``, C_SP ``[T, G]``) is drawn once by the §4 rules on ``select_on``'s ranking
    ("source" by default; "target" reproduces the authors' code, which draws the "-" pools on
    the black-box model) and used unchanged on both models.

    Returns the target's figures at top level (``rank_before``/``rank_after`` in %, with
    ``_se`` standard errors, Recall@1, C_SP ranks for QA) and the source's white-box figures
    under ``"source"``. Transferring a model to itself equals :func:`protocol.run_attack`.
    """
    spec = parse_attack(attack) if isinstance(attack, str) else attack
    _check_select_on(select_on)
    source_distance = _as_distance(source_distance)
    target_distance = source_distance if target_distance is None else _as_distance(
        target_distance)
    if source_gallery is None:
        source_gallery = Gallery.build(source_model, dataset, source_distance, device)
    if target_gallery is None:
        target_gallery = Gallery.build(target_model, dataset, target_distance, device)
    _check_same_images(source_gallery, target_gallery)
    threat = threat or LinfThreatModel(eps)
    if threat.eps != eps:
        raise AdvrankError(f"threat model eps {threat.eps} differs from eps {eps}")
    num_attacks = len(source_gallery) if num_attacks is None else num_attacks
    chooser = source_gallery if select_on == "source" else target_gallery
    selection = select(chooser, spec, k, num_attacks, seed, g)
    src, (tgt,) = _transfer_pass(source_model, source_gallery, [(target_model, target_gallery)],
                                 spec, threat, xi, selection, seed, batch_size, progress)
    out = tgt.summary()
    out.update({"select_on": select_on, "source_distance": source_distance.name,
                "target_distance": target_distance.name,
                "source": _source_part(src.summary())})
    return out


# ------------------------------------------------------------------------- transfer matrix


def _transfer_row(
    source: str, spec: AttackSpec, rankers: Mapping[str, tuple[nn.Module, Gallery]],
    settings: dict, batch_size: int, progress: bool,
) -> dict[str, dict]:
    """One matrix row: the source's adversarial examples for ``spec``, ranked by every model.

    Targets that share a selection are served by one pass (with ``select_on="source"`` that is
    all of them, so each source's examples are made exactly once).
    """
    src_model, src_gallery = rankers[source]
    threat = LinfThreatModel(settings["eps"], steps=settings["steps"])
    groups: list[tuple[Selection, list[str]]] = []
    for name, (_, gallery) in rankers.items():
        chooser = src_gallery if settings["select_on"] == "source" else gallery
        sel = select(chooser, spec, settings["k"], settings["num_attacks"], settings["seed"],
                     settings["g"])
        for other, names in groups:
            if _same_selection(sel, other):
                names.append(name)
                break
        else:
            groups.append((sel, [name]))
    row: dict[str, dict] = {}
    for sel, names in groups:
        _, results = _transfer_pass(src_model, src_gallery, [rankers[n] for n in names], spec,
                                    threat, settings["xi"], sel, settings["seed"], batch_size,
                                    progress)
        for name, res in zip(names, results, strict=True):
            summary = res.summary()
            # attack, eps, k, threat...: the same for every cell, kept once in the settings
            row[name] = {key: v for key, v in summary.items() if key not in _SHARED_KEYS}
    return {name: row[name] for name in rankers}


def _same_selection(a: Selection, b: Selection) -> bool:
    same_sp = (a.sp is None and b.sp is None) or (
        a.sp is not None and b.sp is not None and torch.equal(a.sp, b.sp))
    return torch.equal(a.anchors, b.anchors) and torch.equal(a.targets, b.targets) and same_sp


def _fmt_cell(cell: dict | None, diagonal: bool) -> str:
    if cell is None:
        return "…"
    text = f"{cell['rank_before']:.1f}→{cell['rank_after']:.1f}"
    return f"**{text}**" if diagonal else text


def transfer_markdown(matrix: dict) -> str:
    """Table 5 as Markdown: one table per attack, rows = source, columns = target.

    Each cell is "before→after" (mean normalized rank on the target, %); the diagonal (bold)
    is the white-box attack; cells still being computed show "…".
    """
    names = list(matrix["models"])
    s = matrix["settings"]
    lines = [
        "# Transfer of adversarial ranking examples (Table 5)", "",
        f"Dataset {s['dataset']} (|X| = {s['gallery_size']}), eps = {s['eps']}, "
        f"w = m = {s['k']}, T = {s['num_attacks']} attacks, seed {s['seed']}, "
        f"selections drawn on the {s['select_on']} model.",
        "Each cell: mean normalized rank (%) of the chosen candidates on the target model, "
        "before → after adding the perturbation made white-box on the source model; the "
        "diagonal (bold) is the white-box attack. \"+\" attacks lower the rank towards 0, "
        "\"-\" attacks raise it towards 100.", "",
    ]
    ses = []
    for attack in ("CA+", "QA+", "CA-", "QA-"):
        rows = matrix["results"].get(attack)
        if rows is None:
            continue
        k_name = "w" if attack.startswith("CA") else "m"
        lines += [f"## {attack} transfer (black box), {k_name} = {s['k']}", "",
                  "| From \\ To | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for src in names:
            row = rows.get(src) or {}
            cells = [_fmt_cell(row.get(tgt), src == tgt) for tgt in names]
            ses += [c[key] for c in row.values() for key in ("rank_before_se", "rank_after_se")]
            lines.append(f"| {src} | " + " | ".join(cells) + " |")
        lines.append("")
    if ses:
        lines.append(f"Largest standard error of any figure: {max(ses):.2f} (all standard "
                     "errors are in transfer.json).")
    models = ", ".join(f"{n} = {m['arch']}/{m['metric']} (R@1 {m['recall@1']:.1f}%)"
                       for n, m in matrix["models"].items())
    lines += ["", f"Models: {models}.", ""]
    return "\n".join(lines)


def _matrix_complete(matrix: dict, attacks: Sequence[str]) -> bool:
    names = set(matrix["models"])
    return all(set(matrix["results"].get(a, {}).get(src, {})) == names
               for a in attacks for src in names)


def transfer_matrix(
    checkpoints: Mapping[str, str | Path], attacks: Sequence[str] = ATTACKS, eps: float = 0.3,
    k: int = 1, num_attacks: int | None = None, seed: int = 0,
    out_dir: str | Path = "transfer", device: torch.device | str = "cpu",
    batch_size: int = 256, steps: int | None = None, xi: float | None = None, g: int = 5,
    select_on: str = "source", data_root: str | Path | None = None, download: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Fill the Table 5 matrix (rows = source, columns = target) for every attack in ``attacks``.

    ``checkpoints`` maps a display name to a checkpoint path; all must share a dataset, whose
    test split is X. Each (attack, source) row makes its adversarial examples once and ranks
    them on every model. ``out_dir/transfer.json`` is rewritten atomically after every row and
    ``out_dir/transfer.md`` (see :func:`transfer_markdown`) with it, so an interrupted run
    continues where it stopped: rows already in the file are not recomputed. A file made with
    other settings or other checkpoint contents (SHA-256) is refused rather than mixed in.
    ``num_attacks`` defaults to |X|; ``steps`` overrides the paper's PGD iteration count.
    Returns the matrix (the content of transfer.json).
    """
    from advrank.checkpoint import model_from_checkpoint
    from advrank.data import load_dataset

    if not checkpoints:
        raise AdvrankError("the transfer matrix needs at least one checkpoint")
    _check_select_on(select_on)
    specs = [parse_attack(a) for a in attacks]
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "transfer.json", out_dir / "transfer.md"

    rankers: dict[str, tuple[nn.Module, Gallery]] = {}
    models: dict[str, dict] = {}
    dataset_name = dataset = None
    for name, path in checkpoints.items():
        model, meta = model_from_checkpoint(path, device)
        if dataset_name is None:
            dataset_name = meta["dataset"]
            dataset = load_dataset(dataset_name, "test", data_root, download)
        elif meta["dataset"] != dataset_name:
            raise AdvrankError(f"checkpoint {name} ({path}) is for {meta['dataset']}, the others "
                               f"for {dataset_name}; transfer needs one shared test set")
        rankers[name] = (model, Gallery.build(model, dataset, get_distance(meta["metric"]),
                                              device))
        models[name] = {"checkpoint": str(path), "sha256": file_sha256(path),
                        "arch": meta["arch"], "metric": meta["metric"],
                        "recall@1": float(meta.get("recall@1", float("nan"))),
                        "defense": meta.get("defense")}
    n = len(dataset)
    settings = {"dataset": dataset_name, "gallery_size": n, "eps": eps, "k": k,
                "num_attacks": n if num_attacks is None else int(num_attacks), "seed": seed,
                "steps": steps, "xi": xi, "g": g, "select_on": select_on,
                "threat": LinfThreatModel(eps, steps=steps).describe()}

    matrix = {"format": MATRIX_FORMAT, "version": 1, "settings": settings, "models": models,
              "results": {}, "complete": False}
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise AdvrankError(f"cannot resume from {json_path}: {exc}") from None
        if old.get("format") != MATRIX_FORMAT or old.get("settings") != settings:
            raise AdvrankError(f"{json_path} was made with other settings ({old.get('settings')});"
                               " use another --out folder or remove the file")
        old_hashes = {m: v.get("sha256") for m, v in old.get("models", {}).items()}
        if old_hashes != {m: v["sha256"] for m, v in models.items()}:
            raise AdvrankError(f"{json_path} was made with other checkpoints (names or file "
                               "contents differ); use another --out folder or remove the file")
        matrix["results"] = old.get("results", {})

    for spec in specs:
        rows = matrix["results"].setdefault(spec.name, {})
        for source in rankers:
            if set(rows.get(source, {})) == set(rankers):
                continue  # finished by an earlier (interrupted) run
            t0 = time.time()
            rows[source] = _transfer_row(source, spec, rankers, settings, batch_size, progress)
            if progress:
                print(f"transfer {spec.name} from {source}: "
                      + ", ".join(f"{t} {c['rank_before']:.1f}→{c['rank_after']:.1f}"
                                  for t, c in rows[source].items())
                      + f" ({time.time() - t0:.0f}s)", file=sys.stderr)
            matrix["complete"] = _matrix_complete(matrix, [s.name for s in specs])
            atomic_write_json(json_path, matrix)
            atomic_write_text(md_path, transfer_markdown(matrix))
    matrix["complete"] = _matrix_complete(matrix, [s.name for s in specs])
    atomic_write_json(json_path, matrix)
    atomic_write_text(md_path, transfer_markdown(matrix))
    return matrix


# ================================================================== universal perturbations


def _universal_selections(
    gallery: Gallery, spec: AttackSpec, k: int, size: int, seed: int, mode: str, g: int,
) -> tuple[Selection, Selection]:
    """The seen and unseen member sets (``size`` each, disjoint) with their Q or C.

    ``own``: every member gets its own Q/C by the §4 rules (one :func:`protocol.select` draw of
    2 * size distinct anchors, split in two). ``shared``: Eq. 14 read literally, one set of k
    queries (I-CA) or candidates (I-QA) drawn at random and shared by all members, which are
    random items outside it.
    """
    if mode == "own":
        sel = select(gallery, spec, k, 2 * size, seed, g)
        return sel.slice(0, size), sel.slice(size, 2 * size)
    n = len(gallery)
    if 2 * size + k > n:
        raise AdvrankError(f"{2 * size} members + {k} shared targets exceed |X| = {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shared = perm[:k]
    out = []
    for members in (perm[k : k + size], perm[k + size : k + 2 * size]):
        targets = shared.expand(size, k).clone()
        sp = (sp_candidates(gallery, members, targets, g)
              if spec.target == "QA" and g > 0 else None)
        out.append(Selection(members, targets, sp))
    return out[0], out[1]


def universal_pgd(
    model: nn.Module, images: torch.Tensor, objectives: Sequence[tuple[int, int, Any]],
    threat: LinfThreatModel,
) -> tuple[torch.Tensor, list[float]]:
    """PGD on one perturbation shared by all ``images [M, C, H, W]`` (Eq. 14).

    ``objectives`` lists ``(start, end, objective)`` chunks covering the M members. Each step
    accumulates the gradient of the summed loss over the chunks (so the whole set never sits
    in one autograd graph), then takes one sign step on r and clips it to ``[-eps, eps]``; the
    members see ``clip(x + r, 0, 1)``. With one chunk this is ``pgd(..., universal=True)``.
    Returns ``r [1, C, H, W]`` and the summed loss before each step ``[steps]``.
    """
    r = torch.zeros_like(images[:1])
    history: list[float] = []
    if threat.eps == 0 or threat.eta == 0:
        return r, history
    with frozen(model):
        for _ in range(threat.eta):
            grad, total = torch.zeros_like(r), 0.0
            for s, e, objective in objectives:
                rr = r.clone().requires_grad_(True)
                emb = model((images[s:e] + rr).clamp(0.0, 1.0))
                loss, g = objective.value_and_grad(emb.detach())
                (gr,) = torch.autograd.grad(emb, rr, grad_outputs=g)
                grad += gr
                total += loss.sum().item()
            history.append(total)
            r = (r - threat.alpha * grad.sign()).clamp_(-threat.eps, threat.eps)
    return r.detach(), history


@torch.no_grad()
def _universal_ranks(model: nn.Module, gallery: Gallery, spec: AttackSpec, sel: Selection,
                     r: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks ``[M]`` of each member's attack before and after adding r (chunked)."""
    before, after = [], []
    emb = gallery.embeddings
    for s in range(0, len(sel), chunk):
        part = sel.slice(s, s + chunk)
        adv = (gallery.images(part.anchors) + r.to(emb.device)).clamp(0.0, 1.0)
        before.append(measure_ranks(gallery, spec, part, emb[part.anchors.to(emb.device)])
                      ["rank"].cpu())
        after.append(measure_ranks(gallery, spec, part, model(adv))["rank"].cpu())
    return torch.cat(before), torch.cat(after)


def universal_attack(
    model: nn.Module, gallery: Gallery, attack: str | AttackSpec, eps: float, k: int = 1,
    seed: int = 0, fraction: float = 0.05, xi: float = 0.0, steps: int | None = None,
    step_size: float | None = None, mode: str = "shared", chunk_size: int = 256,
    top_fraction: float = 0.01,
) -> dict[str, Any]:
    """Image-agnostic attack I-CA± / I-QA± (Eq. 14, Table 6): one r for a whole set of inputs.

    A random ``fraction`` of X (the "seen" set, M members: candidates for CA, queries for QA)
    gets Q or C by ``mode`` (see :func:`_universal_selections`; "own" = each member's own §4
    selection, "shared" = one Q/C for all, Eq. 14 literally), and one ``r [1, C, H, W]`` is
    found by :func:`universal_pgd` on the sum of their losses, ``chunk_size`` members at a
    time. ``steps`` defaults to :data:`UNIVERSAL_STEPS` (100), ``step_size`` to the paper's
    alpha for ``eps``; ``xi = 0`` (no SP term) as in Table 6. r is then added to a disjoint
    random set of the same size ("unseen").

    In "shared" mode the "-" figures are those of the ``top_fraction`` (1%, at least one) of
    each set ranked highest before the attack, as the paper reports I-CA-/I-QA- "on the 1% top
    ranked samples"; in "own" mode every member's Q/C is already from its top 1%.

    Returns ``rank_before``/``rank_after`` (seen), ``rank_before_unseen``/
    ``rank_after_unseen`` (all %, with ``_se``), the loss per step, and ``perturbation`` (the
    tensor r, on the CPU). Runs on the device of the model and the gallery embeddings.
    """
    spec = parse_attack(attack) if isinstance(attack, str) else attack
    if mode not in UNIVERSAL_MODES:
        raise AdvrankError(f"mode must be one of {UNIVERSAL_MODES}, got {mode!r}")
    if not 0.0 < fraction <= 0.5:
        raise AdvrankError(f"fraction must lie in (0, 0.5] (seen and unseen sets are disjoint), "
                           f"got {fraction}")
    if chunk_size < 1:
        raise AdvrankError(f"chunk size must be positive, got {chunk_size}")
    dev = gallery.embeddings.device
    n = len(gallery)
    size = max(1, round(fraction * n))
    g = 5 if (spec.target == "QA" and xi) else 0  # C_SP only matters when the SP term is on
    seen, unseen = _universal_selections(gallery, spec, k, size, seed, mode, g)
    threat = LinfThreatModel(eps, step_size=step_size if step_size is not None
                             else paper_step_size(eps),
                             steps=UNIVERSAL_STEPS if steps is None else steps)

    t0 = time.time()
    atk = RankingAttack(model, gallery.embeddings, gallery.distance, spec, threat, xi)
    images = gallery.images(seen.anchors).to(dev)  # [M, C, H, W]
    objectives = []
    for s in range(0, size, chunk_size):  # built once: CA caches d(q, x) per chunk
        part = seen.slice(s, s + chunk_size)
        sp = None if part.sp is None else part.sp.to(dev)
        objectives.append((s, s + len(part), atk.objective(part.targets.to(dev), sp)))
    r, history = universal_pgd(model, images, objectives, threat)

    was_training = model.training
    model.eval()
    seen_b, seen_a = _universal_ranks(model, gallery, spec, seen, r, chunk_size)
    unseen_b, unseen_a = _universal_ranks(model, gallery, spec, unseen, r, chunk_size)
    model.train(was_training)
    if mode == "shared" and spec.direction == "-":
        keep = top_pool_size(size, top_fraction)
        top_seen = seen_b.argsort(stable=True)[:keep]  # the best-ranked before the attack
        top_unseen = unseen_b.argsort(stable=True)[:keep]
        seen_b, seen_a = seen_b[top_seen], seen_a[top_seen]
        unseen_b, unseen_a = unseen_b[top_unseen], unseen_a[top_unseen]

    out: dict[str, Any] = {
        "attack": f"I-{spec.name}", "eps": eps, "k": k, "mode": mode, "fraction": fraction,
        "gallery_size": n, "set_size": size, "reported": int(seen_b.numel()), "xi": float(xi),
        "seed": seed, "threat": threat.describe(),
    }
    for key, values in (("rank_before", seen_b), ("rank_after", seen_a),
                        ("rank_before_unseen", unseen_b), ("rank_after_unseen", unseen_a)):
        out[key], out[f"{key}_se"] = _mean_se(values)
    out.update({
        "perturbation_linf": r.abs().max().item(), "loss_history": history,
        "seconds": time.time() - t0, "example_index": int(seen.anchors[0]),
        "seen": seen.anchors.tolist(), "unseen": unseen.anchors.tolist(),
        "perturbation": r.cpu(),
    })
    return out


def save_universal_png(result: dict, gallery: Gallery, path: str | Path) -> Path:
    """Draw r (scaled to [-eps, eps], diverging colours) next to one clean/perturbed member.

    Colour images show r's channel mean; the clean and perturbed images are shown as they are.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eps = float(result["eps"]) or 1.0
    r = result["perturbation"][0].float()  # [C, H, W]
    idx = torch.tensor([result["example_index"]])
    clean = gallery.images(idx)[0].cpu()
    perturbed = (clean + r).clamp(0.0, 1.0)

    def as_image(x: torch.Tensor):
        return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    im = axes[0].imshow(r.mean(0).numpy(), cmap="RdBu_r", vmin=-eps, vmax=eps)
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04)
    axes[0].set_title(f"universal r ({result['attack']}, ε={result['eps']})"
                      + (", channel mean" if r.shape[0] > 1 else ""), fontsize=9)
    axes[1].imshow(as_image(clean), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"clean (X[{result['example_index']}])", fontsize=9)
    axes[2].imshow(as_image(perturbed), cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("clean + r", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.get('mode', 'own')} Q/C, mean rank "
                 f"{result['rank_before']:.1f}→{result['rank_after']:.1f}% (seen), "
                 f"{result['rank_before_unseen']:.1f}→{result['rank_after_unseen']:.1f}% "
                 f"(unseen)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "SELECT_ON", "UNIVERSAL_MODES", "UNIVERSAL_STEPS", "file_sha256", "save_universal_png",
    "transfer_attack", "transfer_markdown", "transfer_matrix", "universal_attack",
    "universal_pgd",
]
