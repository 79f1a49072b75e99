"""The evaluation protocol of §4: choose attacks, run them in batches, measure normalized ranks.

* CA+: c random from X, Q = w random queries from X \\ {c}.
* CA-: c random from X, Q = w random from the top 1% of c's own ranking list, {q : R(c, q) <= 1%}.
* QA+: q random from X, C = m random candidates from X \\ {q}.
* QA-: q random from X, C = m random from {c : R(q, c) <= 1%}.
* QA uses C_SP = the top-G of q in X \\ C (G = 5) and xi = 1 (QA+) / 100 (QA-).

``R(q, c) = 100 * Rank_X(q, c) / |X|``: the query is not its own candidate, and a perturbed
candidate competes with the other candidates, not with its own clean copy. An attack's figure
is ``R_CA(c)`` (mean over Q) or ``R_QA(q)`` (mean over C); a cell reports the mean over T attacks.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from advrank.attacks.ranking import AttackSpec, RankingAttack, parse_attack
from advrank.attacks.threat import LinfThreatModel
from advrank.distances import Distance
from advrank.errors import AdvrankError
from advrank.ranking import count_closer, embed_dataset, nearest_neighbors


@dataclass
class Gallery:
    """The candidate set X: its dataset (images by index), embeddings ``[N, D]``, labels ``[N]``."""

    dataset: object
    embeddings: torch.Tensor
    labels: torch.Tensor
    distance: Distance

    @classmethod
    def build(cls, model: nn.Module, dataset, distance: Distance, device="cpu") -> Gallery:
        """Embed the gallery once (model in eval mode)."""
        emb = embed_dataset(model, dataset, device)
        return cls(dataset, emb, dataset.labels.to(emb.device), distance)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def images(self, index: torch.Tensor) -> torch.Tensor:
        return self.dataset.get_images(index.cpu()).to(self.embeddings.device)


@dataclass
class Selection:
    """T attacks: ``anchors [T]`` (c for CA, q for QA), ``targets [T, k]`` (Q or C),
    ``sp [T, G]`` (C_SP, QA only)."""

    anchors: torch.Tensor
    targets: torch.Tensor
    sp: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.anchors.numel())

    def slice(self, s: int, e: int) -> Selection:
        return Selection(self.anchors[s:e], self.targets[s:e],
                         None if self.sp is None else self.sp[s:e])


def top_pool_size(n: int, fraction: float = 0.01) -> int:
    """Size of the "top 1%" pool of an n-item ranking list (at least one item)."""
    return max(1, math.ceil(fraction * n))


def _random_others(anchors: torch.Tensor, n: int, k: int, gen: torch.Generator,
                   chunk: int = 512) -> torch.Tensor:
    """For each anchor, k distinct random indices of [0, n) other than the anchor itself."""
    rows = []
    for s in range(0, anchors.numel(), chunk):
        a = anchors[s : s + chunk]
        idx = torch.multinomial(torch.ones(a.numel(), n - 1), k, replacement=False, generator=gen)
        rows.append(idx + (idx >= a[:, None]).long())  # skip over the anchor
    return torch.cat(rows)


def _random_columns(pool: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    cols = torch.rand(pool.shape, generator=gen).argsort(dim=1)[:, :k]
    return pool.gather(1, cols)


def sp_candidates(gallery: Gallery, queries: torch.Tensor, chosen: torch.Tensor, g: int = 5):
    """C_SP (Eq. 12): the top-G of each query in X \\ C (and not the query itself). ``[T, G]``."""
    emb = gallery.embeddings
    nn_idx = nearest_neighbors(emb[queries.to(emb.device)], emb, g + chosen.shape[1],
                               gallery.distance, queries.to(emb.device)).cpu()
    in_c = (nn_idx[:, :, None] == chosen[:, None, :]).any(-1)
    order = in_c.int().argsort(dim=1, stable=True)[:, :g]  # first G neighbours not in C
    return nn_idx.gather(1, order)


def select(gallery: Gallery, spec: AttackSpec | str, k: int, num_attacks: int, seed: int = 0,
           g: int = 5, top_fraction: float = 0.01) -> Selection:
    """Draw T = ``num_attacks`` attacks by the rules of §4 (see module docstring).

    The anchors (c or q) are a random permutation of X (without repetition while T <= |X|);
    everything is drawn up front from one seeded generator, so results do not depend on the
    batch size used later.
    """
    spec = parse_attack(spec) if isinstance(spec, str) else spec
    n = len(gallery)
    if num_attacks < 1:
        raise AdvrankError(f"the number of attacks must be positive, got {num_attacks}")
    if num_attacks > n:
        raise AdvrankError(f"{num_attacks} attacks requested but the gallery has only {n} items "
                           "(T <= |X|: each item is attacked at most once)")
    if k < 1 or k > n - 2:
        raise AdvrankError(f"w/m = {k} does not fit a gallery of {n} items (need 1 <= k <= {n-2})")
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(n, generator=gen)[:num_attacks]
    if spec.direction == "+":
        targets = _random_others(anchors, n, k, gen)
    else:
        pool_size = top_pool_size(n - 1, top_fraction)
        if k > pool_size:
            raise AdvrankError(
                f"w/m = {k} is larger than the top-{top_fraction:.0%} pool of this {n}-item "
                f"gallery ({pool_size} items); lower w/m or raise the top fraction"
            )
        emb = gallery.embeddings
        pool = nearest_neighbors(emb[anchors.to(emb.device)], emb, pool_size, gallery.distance,
                                 anchors.to(emb.device)).cpu()
        targets = _random_columns(pool, k, gen)
    sp = sp_candidates(gallery, anchors, targets, g) if spec.target == "QA" and g > 0 else None
    return Selection(anchors, targets, sp)


@dataclass
class AttackResult:
    """Per-attack figures (percent) and their summary for one (attack, eps, k) cell."""

    attack: str
    eps: float
    k: int
    num_attacks: int
    gallery_size: int
    threat: dict
    xi: float
    rank_before: list[float]
    rank_after: list[float]
    sp_rank_before: list[float] | None = None
    sp_rank_after: list[float] | None = None
    recall1_before: float = float("nan")
    recall1_after: float = float("nan")
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @staticmethod
    def _mean_se(values: list[float]) -> tuple[float, float]:
        t = torch.tensor(values, dtype=torch.float64)
        se = (t.std(unbiased=True) / math.sqrt(t.numel())).item() if t.numel() > 1 else 0.0
        return t.mean().item(), se

    def summary(self) -> dict:
        """The figures a table cell shows: means (and standard errors) over the T attacks."""
        before, before_se = self._mean_se(self.rank_before)
        after, after_se = self._mean_se(self.rank_after)
        out = {"attack": self.attack, "eps": self.eps, "k": self.k,
               "num_attacks": self.num_attacks, "gallery_size": self.gallery_size,
               "rank_before": before, "rank_before_se": before_se,
               "rank_after": after, "rank_after_se": after_se,
               "recall@1_before": self.recall1_before, "recall@1_after": self.recall1_after,
               "xi": self.xi, "threat": self.threat, "seconds": self.seconds, **self.extra}
        if self.sp_rank_after is not None:
            out["sp_rank_before"] = self._mean_se(self.sp_rank_before)[0]
            out["sp_rank_after"] = self._mean_se(self.sp_rank_after)[0]
            out["sp_rank_after_max"] = max(self.sp_rank_after)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure_ranks(gallery: Gallery, spec: AttackSpec, selection: Selection,
                  adv_emb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalized ranks (percent) of the chosen items for a batch, with the anchors' embeddings
    replaced by ``adv_emb [B, D]`` (pass the clean embeddings for "before").

    Returns ``rank [B]`` (R_CA or R_QA), ``sp [B]`` (worst R over C_SP, QA only) and
    ``top1_ok [B]`` (fraction of the attack's queries whose top-1 result has the query's label).
    """
    emb, dist, labels = gallery.embeddings, gallery.distance, gallery.labels
    n = len(gallery)
    anchors = selection.anchors.to(emb.device)
    targets = selection.targets.to(emb.device)
    b, k = targets.shape
    out = {}
    if spec.target == "CA":
        q = emb[targets].reshape(b * k, -1)  # every (attack, query) pair is one ranking list
        c_rep = anchors.repeat_interleave(k)
        thr = dist.paired(q, adv_emb.repeat_interleave(k, 0))[:, None]  # d(q, c~) [B*k, 1]
        excl = torch.stack([targets.reshape(-1), c_rep], 1)  # the query, c's clean copy
        ranks = count_closer(q, thr, emb, dist, exclude=excl)[:, 0].float()
        out["rank"] = (100.0 * ranks / n).reshape(b, k).mean(1)
        # top-1 for q: c~ if it is ranked first, else q's nearest other gallery member
        nn2 = nearest_neighbors(q, emb, 2, dist, targets.reshape(-1))
        nearest_other = torch.where(nn2[:, 0] == c_rep, nn2[:, 1], nn2[:, 0])
        top1_label = torch.where(ranks == 0, labels[c_rep], labels[nearest_other])
        out["top1_ok"] = (top1_label == labels[targets.reshape(-1)]).float().reshape(b, k).mean(1)
    else:
        thr = dist.paired(adv_emb[:, None, :], emb[targets])  # d(q~, c) [B, m]
        excl = anchors[:, None]
        ranks = count_closer(adv_emb, thr, emb, dist, exclude=excl, targets=targets).float()
        out["rank"] = (100.0 * ranks / n).mean(1)
        if selection.sp is not None:
            sp = selection.sp.to(emb.device)
            thr_sp = dist.paired(adv_emb[:, None, :], emb[sp])
            sp_ranks = count_closer(adv_emb, thr_sp, emb, dist, exclude=excl, targets=sp).float()
            out["sp"] = (100.0 * sp_ranks / n).max(1).values
        nn1 = nearest_neighbors(adv_emb, emb, 1, dist, anchors)[:, 0]
        out["top1_ok"] = (labels[nn1] == labels[anchors]).float()
    return out


class RankLog:
    """Per-attack figures of one model, accumulated batch by batch into an AttackResult."""

    def __init__(self):
        self.before, self.after, self.sp_b, self.sp_a, self.ok_b, self.ok_a = ([] for _ in range(6))

    def add(self, clean: dict[str, torch.Tensor], attacked: dict[str, torch.Tensor]) -> None:
        """Record one batch: :func:`measure_ranks` before (clean) and after the attack."""
        self.before.append(clean["rank"].cpu())
        self.after.append(attacked["rank"].cpu())
        self.ok_b.append(clean["top1_ok"].cpu())
        self.ok_a.append(attacked["top1_ok"].cpu())
        if "sp" in clean:
            self.sp_b.append(clean["sp"].cpu())
            self.sp_a.append(attacked["sp"].cpu())

    def result(self, spec: AttackSpec, eps: float, k: int, gallery: Gallery,
               threat: LinfThreatModel, xi: float, seconds: float) -> AttackResult:
        return AttackResult(
            attack=spec.name, eps=eps, k=k, num_attacks=int(sum(b.numel() for b in self.before)),
            gallery_size=len(gallery), threat=threat.describe(), xi=xi,
            rank_before=torch.cat(self.before).tolist(), rank_after=torch.cat(self.after).tolist(),
            sp_rank_before=torch.cat(self.sp_b).tolist() if self.sp_b else None,
            sp_rank_after=torch.cat(self.sp_a).tolist() if self.sp_a else None,
            recall1_before=100.0 * torch.cat(self.ok_b).mean().item(),
            recall1_after=100.0 * torch.cat(self.ok_a).mean().item(),
            seconds=seconds,
        )


def run_attack(
    model: nn.Module, gallery: Gallery, attack: str | AttackSpec, eps: float, k: int,
    num_attacks: int, seed: int = 0, batch_size: int = 256, xi: float | None = None, g: int = 5,
    threat: LinfThreatModel | None = None, selection: Selection | None = None,
    progress: bool = False, top_fraction: float = 0.01, clean_cache: dict | None = None,
    sp_reduction: str = "sum",
) -> AttackResult:
    """Run T = ``num_attacks`` independent attacks of one kind at one eps, in batches.

    Returns ranks before/after per attack. ``threat`` overrides the paper's alpha/eta (its eps
    must equal ``eps``); ``selection`` reuses a fixed draw (e.g. across eps rows or models).
    ``clean_cache``: a dict shared by runs of the same selection (a grid's eps rows), so the
    "before" ranks are measured once, not once per eps.
    """
    spec = parse_attack(attack) if isinstance(attack, str) else attack
    threat = threat or LinfThreatModel(eps)
    if threat.eps != eps:
        raise AdvrankError(f"threat model eps {threat.eps} differs from eps {eps}")
    selection = selection or select(gallery, spec, k, num_attacks, seed, g, top_fraction)
    atk = RankingAttack(model, gallery.embeddings, gallery.distance, spec, threat, xi,
                        sp_reduction)
    t0 = time.time()
    log = RankLog()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(selection), desc=f"{spec.name} eps={eps} k={k}", file=sys.stderr,
                   leave=False)
    for s in range(0, len(selection), batch_size):
        part = selection.slice(s, s + batch_size)
        images = gallery.images(part.anchors)
        gen = torch.Generator().manual_seed(seed * 7919 + s)
        adv = atk(images, part.targets, part.sp, generator=gen)
        with torch.no_grad():
            adv_emb = model(adv)
        if clean_cache is not None and s in clean_cache:
            clean = clean_cache[s]
        else:
            clean_emb = gallery.embeddings[part.anchors.to(gallery.embeddings.device)]
            clean = measure_ranks(gallery, spec, part, clean_emb)
            if clean_cache is not None:
                clean_cache[s] = clean
        attacked = clean if threat.eps == 0 else measure_ranks(gallery, spec, part, adv_emb)
        log.add(clean, attacked)
        if bar is not None:
            bar.update(part.anchors.numel())
    if bar is not None:
        bar.close()
    result = log.result(spec, eps, k, gallery, threat, atk.xi, time.time() - t0)
    if spec.target == "QA":
        result.extra["sp_reduction"] = sp_reduction
    return result
