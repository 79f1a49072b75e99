"""Query attacks (§3.2): perturb a query q so that a set C of m candidates rises (QA+, Eq. 11)
or sinks (QA-, Eq. 9) in its ranking, with the semantics-preserving term of Eq. 12.

L_QA+(q, C; X) = sum_c sum_x [d(q, c) - d(q, x)]_+ ;  L_QA- = sum_c sum_x [d(q, x) - d(q, c)]_+
L_SP-QA = L_QA±(q, C; X) + xi * L_QA+(q, C_SP; X)

Selection (§4): q random from X; QA+ draws C at random from X \\ {q}, QA- from the top 1% of
q's ranking; C_SP is q's top-G in X \\ C (G = 5); xi = 1 (QA+) / 100 (QA-). Measure:
R_QA(q) = mean over c of 100 * Rank_X(q~, c) / |X|, and the worst rank over C_SP.

``sp_reduction="mean"`` (the default) averages the main hinge sum over C and the SP sum over
C_SP, as the authors' released code does (``.mean()``); with it our numbers match the paper's
tables. ``"sum"`` is Eq. 12 as printed; for PGD's sign step it equals "mean" with xi * G / m.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import AttackKind, RankingObjective, RankingView, select_anchors
from advrank.attacks.selection import (
    Selection,
    random_others,
    sp_candidates,
    top_pool_targets,
)
from advrank.core.checks import check_choice, check_number
from advrank.core.distances import Distance
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS

SP_REDUCTIONS = ("mean", "sum")


class QueryObjective(RankingObjective):
    """Eq. 9/11 (+ Eq. 12) for B attacks; ``candidates [B, m]`` and ``sp_candidates [B, G]`` are
    gallery indices (C and C_SP); see the module docstring for ``reduction``."""

    def __init__(self, raise_rank: bool, candidates: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, sp_candidates: torch.Tensor | None = None, xi: float = 0.0,
                 chunk: int = 4096, reduction: str = "mean"):
        check_choice(reduction, "SP reduction", SP_REDUCTIONS)
        self.raise_rank, self.gallery, self.distance = raise_rank, gallery, distance
        self.chunk = chunk
        self.prepared = distance.prepare(gallery)  # e.g. L2-normalised once, not every step
        self.cand_emb = gallery[candidates]  # [B, m, D]
        self.xi = float(xi)
        self.sp_emb = gallery[sp_candidates] if (sp_candidates is not None and xi) else None
        # weights of the main and the SP hinge sums
        self.w_main, self.w_sp = 1.0, self.xi
        if reduction == "mean":
            self.w_main = 1.0 / candidates.shape[1]
            self.w_sp = self.xi / sp_candidates.shape[1] if self.sp_emb is not None else 0.0

    def _terms(self, emb: torch.Tensor) -> list[torch.Tensor]:
        """d(q, C) ``[B, m]`` and, with the SP term, d(q, C_SP) ``[B, G]``."""
        terms = [self.distance.paired(emb[:, None, :], self.cand_emb)]
        if self.sp_emb is not None:
            terms.append(self.distance.paired(emb[:, None, :], self.sp_emb))
        return terms

    def _hinge_args(self, terms: list[torch.Tensor], d_qx: torch.Tensor):
        """(weight, sign, hinge argument ``[B, k, n]``) per term, paired with ``terms``: the
        main term ``±(d(q, c) - d(q, x))`` (Eq. 9/11) and the SP term ``d(q, c') - d(q, x)``."""
        sign = 1.0 if self.raise_rank else -1.0
        signs, weights = (sign, 1.0), (self.w_main, self.w_sp)
        return [(w, s, s * (t[:, :, None] - d_qx[:, None, :]))
                for t, w, s in zip(terms, weights, signs, strict=False)]

    def _chunk_loss(self, emb, terms, start: int) -> torch.Tensor:
        d_qx = self.distance.pairwise_prepared(emb, self.prepared[start : start + self.chunk])
        return sum(w * torch.relu(arg).sum(dim=(1, 2))
                   for w, _, arg in self._hinge_args(terms, d_qx))

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        terms = self._terms(emb)
        return sum(self._chunk_loss(emb, terms, s)
                   for s in range(0, self.gallery.shape[0], self.chunk))

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk by chunk over X, with the hinge's derivative written out: d(loss)/d(d(q, x))
        is minus the number of active hinge terms of x (an integer count, weighted by xi for
        C_SP), so autograd only runs through the distances, never through a [B, m, n] graph."""
        e = emb.detach().requires_grad_(True)
        total = torch.zeros(e.shape[0], device=e.device, dtype=e.dtype)
        grad = torch.zeros_like(e)
        with torch.enable_grad():
            terms = self._terms(e)  # [B, m] (and [B, G])
        fixed = [t.detach() for t in terms]
        term_grads = [torch.zeros_like(t) for t in fixed]
        for s in range(0, self.gallery.shape[0], self.chunk):
            with torch.enable_grad():
                d_qx = self.distance.pairwise_prepared(e, self.prepared[s : s + self.chunk])
            with torch.no_grad():
                w_x = torch.zeros_like(d_qx)  # [B, n]: d(loss) / d(d(q, x))
                for (w, sign, arg), g in zip(self._hinge_args(fixed, d_qx.detach()),
                                             term_grads, strict=True):
                    total += w * torch.relu(arg).sum(dim=(1, 2))
                    active = w * (arg > 0).to(e.dtype)
                    g += sign * active.sum(dim=2)
                    w_x -= sign * active.sum(dim=1)
            grad += torch.autograd.grad(d_qx, e, grad_outputs=w_x)[0]
        grad += torch.autograd.grad(terms, e, grad_outputs=term_grads)[0]
        return total, grad


class QueryAttack(AttackKind):
    """QA+ / QA-: the adversarial image is the query q; targets ``[T, m]`` are C, ``sp`` C_SP."""

    size_name = "m"
    params = {"xi": None, "g": 5, "sp_reduction": "mean", "top_fraction": 0.01}
    raise_rank = True
    paper_xi = 1.0

    def validate(self, options):
        options["xi"] = self.paper_xi if options["xi"] is None else options["xi"]
        check_number(options["xi"], "xi (SP weight)", low=0.0, high=1e6)
        options["xi"] = float(options["xi"])
        check_number(options["g"], "G (size of C_SP)", low=0, high=10_000, integer=True)
        check_choice(options["sp_reduction"], "SP reduction", SP_REDUCTIONS)
        check_number(options["top_fraction"], "top fraction", low=0.0, low_open=True, high=1.0)
        return options

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        if self.raise_rank:
            targets = random_others(anchors, len(gallery), k, gen)
        else:
            targets = top_pool_targets(gallery, anchors, k, gen, self.options["top_fraction"],
                                       self.size_name)
        g = self.options["g"]
        if g > len(gallery) - 1 - k:
            raise AdvrankError(f"G = {g} does not fit: C_SP comes from the {len(gallery) - 1 - k}"
                               f" gallery items outside q and C")
        sp = sp_candidates(gallery, anchors, targets, g) if g > 0 else None
        return Selection(anchors, targets, sp)

    def objective(self, embeddings, distance, part, clean=None):
        dev = embeddings.device
        sp = part.sp
        if sp is None and self.options["xi"] and self.options["g"] > 0:
            # no C_SP given (a direct RankingAttack call): q's top-G in X \ C, from its clean
            # embedding, so that the SP term the options promise is really there
            view = Gallery(None, embeddings, torch.zeros(0), distance)
            sp = sp_candidates(view, None, part.targets, self.options["g"], clean)
        return QueryObjective(self.raise_rank, part.targets.to(dev), embeddings, distance,
                              sp_candidates=None if sp is None else sp.to(dev),
                              xi=self.options["xi"], reduction=self.options["sp_reduction"])

    @property
    def needs_clean(self) -> bool:  # only to build C_SP when the caller did not
        return bool(self.options["xi"]) and self.options["g"] > 0

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        """``rank [B]`` (R_QA, %), ``sp_rank [B]`` (worst R over C_SP, %) and ``recall@1 [B]``
        (100 if q~'s nearest other member shares q's label, else 0)."""
        g_emb, dist, labels, n = gallery.embeddings, gallery.distance, gallery.labels, len(gallery)
        anchors, targets = part.anchors.to(g_emb.device), part.targets.to(g_emb.device)
        thr = dist.paired(emb[:, None, :], g_emb[targets])  # d(q~, c) [B, m]
        excl = anchors[:, None]
        ranks = count_closer(emb, thr, g_emb, dist, exclude=excl, targets=targets).float()
        out = {"rank": (100.0 * ranks / n).mean(1)}
        if part.sp is not None:
            sp = part.sp.to(g_emb.device)
            thr_sp = dist.paired(emb[:, None, :], g_emb[sp])
            sp_ranks = count_closer(emb, thr_sp, g_emb, dist, exclude=excl, targets=sp).float()
            out["sp_rank"] = (100.0 * sp_ranks / n).max(1).values
        nn1 = nearest_neighbors(emb, g_emb, 1, dist, anchors)[:, 0]
        out["recall@1"] = 100.0 * (labels[nn1] == labels[anchors]).float()
        return out

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of q~ itself (q left out), C highlighted."""
        q = int(part.anchors[0])
        return RankingView(emb[0], None, None, [q], part.targets[0].tolist())

    def summarize(self, before, after):
        out = super().summarize(before, after)
        if "sp_rank" in after:
            out["sp_rank_after_max"] = float(after["sp_rank"].max())
        return out


@ATTACKS.register("QA+", aliases=("qa+",))
class QueryRaise(QueryAttack):
    name = "QA+"
    raise_rank = True
    paper_xi = 1.0
    direction = "down"
    description = "raise m random candidates in a query's ranking (Eq. 11, SP term Eq. 12)"


@ATTACKS.register("QA-", aliases=("QA−", "qa-", "qa−"))
class QueryLower(QueryAttack):
    name = "QA-"
    raise_rank = False
    paper_xi = 100.0
    direction = "up"
    description = "sink m candidates from a query's top 1% (Eq. 9, SP term Eq. 12)"


__all__ = ["QueryAttack", "QueryLower", "QueryObjective", "QueryRaise", "SP_REDUCTIONS"]
