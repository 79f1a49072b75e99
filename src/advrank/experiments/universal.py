"""Universal (image-agnostic) perturbations, Eq. 14 and Table 6: one r, ``||r||_inf <= eps``,
shared by a set of candidates (I-CA) or queries (I-QA). It is optimised on a random 5% of X
("seen") and also evaluated on a disjoint random 5% ("unseen")."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.attacks.base import AttackKind, check_ranked, get_attack, mean_se
from advrank.attacks.pgd import universal_pgd
from advrank.attacks.selection import Selection, sp_candidates, top_pool_size
from advrank.attacks.threat import LinfThreatModel, paper_step_size
from advrank.core.checks import check_choice, check_number, check_seed
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.experiments.protocol import check_gallery, embed_checked
from advrank.experiments.runner import Cell, Experiment, run
from advrank.experiments.store import Store, figures_problem
from advrank.experiments.target import Target
from advrank.registry import ATTACKS

UNIVERSAL_MODES = ("own", "shared")
#: PGD iterations for a universal perturbation. One r must serve hundreds of inputs whose
#: gradients partly cancel, so it needs far more sign steps than the per-image eta <= 30 of §4;
#: 100 is also what the authors' released code uses for its image-agnostic attacks.
UNIVERSAL_STEPS = 100


def _selections(gallery: Gallery, kind: AttackKind, k: int, size: int, seed: int,
                mode: str) -> tuple[Selection, Selection]:
    """The seen and unseen member sets (``size`` each, disjoint) with their targets.

    ``own``: every member gets its own targets by the kind's §4 rules (one draw of 2 * size
    distinct anchors, split in two). ``shared``: Eq. 14 read literally, one set of k targets
    drawn at random and shared by all members, which are random items outside it.
    """
    if mode == "own":
        sel = kind.select(gallery, k, 2 * size, seed)
        return sel.slice(0, size), sel.slice(size, 2 * size)
    n = len(gallery)  # the sizes were checked by check_universal
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shared, g = perm[:k], kind.options.get("g", 0)
    out = []
    for members in (perm[k : k + size], perm[k + size : k + 2 * size]):
        targets = shared.expand(size, k).clone()
        sp = sp_candidates(gallery, members, targets, g) if g > 0 else None
        out.append(Selection(members, targets, sp))
    return out[0], out[1]


@torch.no_grad()
def _ranks(model: nn.Module, gallery: Gallery, kind: AttackKind, sel: Selection,
           r: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The headline figure ``[M]`` of each member's attack before and after adding r."""
    before, after = [], []
    emb = gallery.embeddings
    for s in range(0, len(sel), chunk):
        part = sel.slice(s, s + chunk)
        adv = (gallery.images(part.anchors) + r.to(emb.device)).clamp(0.0, 1.0)
        before.append(kind.measure(gallery, part, emb[part.anchors.to(emb.device)])
                      [kind.headline].cpu())
        after.append(kind.measure(gallery, part, embed_checked(model, adv))[kind.headline].cpu())
    return torch.cat(before), torch.cat(after)


def universal_kind(attack: str | AttackKind, xi: float | None) -> AttackKind:
    """The kind with Table 6's setting: no SP term (xi = 0, no C_SP) unless xi is given."""
    if isinstance(attack, AttackKind):
        if xi is not None:
            raise AdvrankError("give xi to the attack kind's constructor, not twice")
        return attack
    params = ATTACKS.get(attack).params
    options = {}
    if xi is not None:
        xi = check_number(xi, "xi (SP weight)", low=0.0, high=1e6)
    if "xi" in params:
        options = {"xi": xi or 0.0, "g": params.get("g", 0) if xi else 0}
    elif xi:
        options = {"xi": xi}  # refused by the kind, with its own message
    return get_attack(attack, **options)


def set_size(fraction: float, n: int) -> int:
    """Members of the seen (and of the unseen) set: ``fraction`` of |X|, at least one."""
    return max(1, round(fraction * n))


def check_universal(kind: AttackKind, k: int, n: int | None, fraction: float, mode: str,
                    chunk_size: int) -> None:
    """Refuse settings that cannot run; with ``n`` (|X|) also the sizes that do not fit the
    gallery, before it is embedded."""
    check_choice(mode, "mode", UNIVERSAL_MODES)
    check_number(fraction, "fraction (seen and unseen sets are disjoint)", low=0.0,
                 low_open=True, high=0.5)
    check_number(chunk_size, "chunk size", low=1, high=1_000_000, integer=True)
    if n is None:
        return
    size = set_size(fraction, n)
    if mode == "own":
        kind.check_fits(k, 2 * size, n)
        return
    kind.check_size(k, n)
    if 2 * size + k > n:
        raise AdvrankError(f"{2 * size} members + {k} shared targets exceed |X| = {n}")
    g = kind.options.get("g", 0)
    if g > n - 1 - k:
        raise AdvrankError(f"G = {g} does not fit: C_SP comes from the {n - 1 - k} gallery "
                           "items outside q and C")


def universal_attack(
    model: nn.Module, gallery: Gallery, attack: str | AttackKind, eps: float, k: int = 1,
    seed: int = 0, fraction: float = 0.05, xi: float | None = None, steps: int | None = None,
    step_size: float | None = None, mode: str = "shared", chunk_size: int = 256,
    top_fraction: float = 0.01, progress: bool | None = None,
) -> dict[str, Any]:
    """Image-agnostic attack I-CA± / I-QA± (Eq. 14, Table 6): one r for a whole set of inputs.

    A random ``fraction`` of X (the seen set, M members) gets its targets by ``mode`` (see
    :func:`_selections`), and one ``r [1, C, H, W]`` is found by universal PGD on the sum of
    their losses, ``chunk_size`` members at a time. ``steps`` defaults to
    :data:`UNIVERSAL_STEPS` (100), ``step_size`` to the paper's alpha for ``eps``; no SP term
    unless ``xi`` is given, as in Table 6. r is then added to a disjoint random set of the same
    size (unseen). In shared mode the figures of attacks that push ranks up ("-") are those of
    the ``top_fraction`` (1%) of each set ranked highest before the attack ("on the 1% top
    ranked samples"); in own mode every member's targets already come from its top 1%.

    Returns ``rank_before``/``rank_after`` (seen), ``rank_before_unseen``/
    ``rank_after_unseen`` (all %, with ``_se``), the loss per step, and ``perturbation`` (r,
    on the CPU).
    """
    kind = check_ranked(universal_kind(attack, xi), "the universal attack")
    check_gallery(model, gallery)
    seed = check_seed(seed)
    dev, n = gallery.embeddings.device, len(gallery)
    check_universal(kind, k, n, fraction, mode, chunk_size)
    size = set_size(fraction, n)
    seen, unseen = _selections(gallery, kind, k, size, seed, mode)
    threat = LinfThreatModel(eps, step_size=step_size if step_size is not None
                             else paper_step_size(eps),
                             steps=UNIVERSAL_STEPS if steps is None else steps)
    t0 = time.time()
    images = gallery.images(seen.anchors).to(dev)  # [M, C, H, W]
    objectives = [(s, s + len(part), kind.objective(gallery.embeddings, gallery.distance, part))
                  for s in range(0, size, chunk_size)  # built once: CA caches d(q, x) per chunk
                  for part in [seen.slice(s, s + chunk_size)]]
    r, history = universal_pgd(model, images, objectives, threat, progress=progress)
    was_training = model.training
    model.eval()
    figures = [*_ranks(model, gallery, kind, seen, r, chunk_size),
               *_ranks(model, gallery, kind, unseen, r, chunk_size)]
    model.train(was_training)
    if mode == "shared" and kind.direction == "up":
        keep = top_pool_size(size, top_fraction)
        for i in (0, 2):  # the best-ranked before the attack, in each set
            top = figures[i].argsort(stable=True)[:keep]
            figures[i], figures[i + 1] = figures[i][top], figures[i + 1][top]
    out: dict[str, Any] = {
        "attack": f"I-{kind.name}", "eps": eps, "k": k, "mode": mode, "fraction": fraction,
        "gallery_size": n, "set_size": size, "reported": int(figures[0].numel()),
        "xi": float(kind.options.get("xi", 0.0)), "seed": seed, "threat": threat.describe(),
    }
    for key, values in zip(("rank_before", "rank_after", "rank_before_unseen",
                            "rank_after_unseen"), figures, strict=True):
        out[key], out[f"{key}_se"] = mean_se(values)
    out.update({"perturbation_linf": r.abs().max().item(), "loss_history": history,
                "seconds": time.time() - t0, "example_index": int(seen.anchors[0]),
                "seen": seen.anchors.tolist(), "unseen": unseen.anchors.tolist(),
                "perturbation": r.cpu()})
    return out


class Universal(Experiment):
    """The universal attack as a declaration, for a results folder: one cell per (attack,
    eps, k, mode), its perturbation r beside it as ``STEM.pt`` (written before the cell, so a
    stored cell always has its r), and the readers' files ``STEM.json`` and ``STEM.png``
    rewritten from them. Without a folder (``out_dir`` None) the cell is computed in memory
    and the result has no files. See :func:`run_universal`."""

    name, filename, format = "universal", "universal.json", "advrank-universal"

    def __init__(self, target: Target, kind: AttackKind, eps: float, out_dir: str | Path,
                 progress: bool | None = None, **settings):
        self.target, self.kind, self.eps, self.progress = target, kind, eps, progress
        self.settings = {"k": 1, "seed": 0, "fraction": 0.05, "steps": None,
                         "step_size": None, "mode": "shared", "chunk_size": 256, **settings}
        check_universal(kind, self.settings["k"], len(target.gallery),
                        self.settings["fraction"], self.settings["mode"],
                        self.settings["chunk_size"])
        self.dir = None if out_dir is None else Path(out_dir)
        self.stem = f"universal-I-{kind.name}-eps{eps:g}-{self.settings['mode']}"

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"fingerprint": self.target.fingerprint, "seed": s["seed"],
                "fraction": s["fraction"], "steps": s["steps"], "step_size": s["step_size"],
                "chunk_size": s["chunk_size"]}

    def check_cell(self, key: str, cell) -> str | None:
        if not (self.dir / f"{key}.pt").is_file():
            return f"its perturbation {key}.pt is missing"
        return figures_problem(cell, ("rank_before", "rank_after", "rank_before_unseen",
                                      "rank_after_unseen"))

    def cells(self, store: Store) -> list[Cell]:
        return [Cell(self.stem, lambda: self.attack(store))]

    def attack(self, store: Store) -> dict[str, Any]:
        result = universal_attack(self.target.model, self.target.gallery, self.kind, self.eps,
                                  progress=self.progress, **self.settings)
        r = result.pop("perturbation")
        if store.dir is not None:  # r first: a stored cell always has its r beside it
            buf = io.BytesIO()
            torch.save(r, buf)
            store.write_bytes(f"{self.stem}.pt", buf.getvalue())
        return result

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        from advrank.reports.plots import universal_png

        result = {**store.get(self.stem), **self.target.record(self.settings["seed"])}
        if store.dir is None:
            return result
        r = torch.load(store.dir / f"{self.stem}.pt", weights_only=True)
        clean = self.target.gallery.images(torch.tensor([result["example_index"]]))[0]
        png = store.write_bytes(f"{self.stem}.png", universal_png(result, r, clean))
        result.update({"png": str(png), "perturbation_file": str(store.dir / f"{self.stem}.pt")})
        store.write_json(f"{self.stem}.json", result)
        return result


def run_universal(target: Target, attack: str | AttackKind, eps: float,
                  out_dir: str | Path | None, xi: float | None = None,
                  progress: bool | None = None, **settings) -> dict[str, Any]:
    """:func:`universal_attack` on ``target`` into ``out_dir`` (resumable, locked, refused
    when the folder holds a run with other settings); returns the result, with ``png`` and
    ``perturbation_file``, as also written to ``STEM.json``. ``out_dir`` None: computed in
    memory, nothing written, no files in the result."""
    experiment = Universal(target, universal_kind(attack, xi), eps, out_dir, progress,
                           **settings)
    return run(experiment, out_dir)
