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

from typing import cast

import torch

from advrank.attacks.base import (
    AttackKind,
    RankingObjective,
    RankingView,
    select_anchors,
    topk_positions,
)
from advrank.attacks.params import TOP_FRACTION, Param
from advrank.attacks.selection import Selection, check_pool, ranked_targets, sp_candidates
from advrank.core.checks import check_choice
from advrank.core.distances import Distance
from advrank.core.execution import (
    ExecutionPolicy,
    Workspace,
    get_policy,
    matmul_fp32,
    prepared_gallery,
)
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS

SP_REDUCTIONS = ("mean", "sum")
#: the fast path's largest [B, chunk] block: beyond ~128M entries fewer, larger products stop
#: paying off and only cost memory
MAX_CHUNK_ELEMENTS = 1 << 27


class QueryObjective(RankingObjective):
    """Eq. 9/11 (+ Eq. 12) for B attacks; ``candidates [B, m]`` and ``sp_candidates [B, G]`` are
    gallery indices (C and C_SP); see the module docstring for ``reduction``.

    Every step ranks q~ against all of X, chunk by chunk (``chunk`` gallery rows at a time; with
    ``memory`` bytes given, the chunk is sized from it). ``policy`` picks the arithmetic: the
    fp32 reference (``_reference``, what earlier versions computed bit for bit) or, under
    tf32/bf16, ``_fast``: products in the policy's precision and the hinge derivative from exact
    comparison counts (:func:`hinge_weights`), never a ``[B, m, n]`` tensor.
    """

    def __init__(self, raise_rank: bool, candidates: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, sp_candidates: torch.Tensor | None = None, xi: float = 0.0,
                 chunk: int = 4096, reduction: str = "mean", policy: ExecutionPolicy | None = None,
                 memory: int | None = None):
        check_choice(reduction, "SP reduction", SP_REDUCTIONS)
        self.raise_rank, self.gallery, self.distance = raise_rank, gallery, distance
        self.policy = get_policy(policy)
        self.cand_emb = gallery[candidates]  # [B, m, D]
        self.xi = float(xi)
        self.sp_emb = gallery[sp_candidates] if (sp_candidates is not None and xi) else None
        # weights of the main and the SP hinge sums
        self.w_main, self.w_sp = 1.0, self.xi
        if reduction == "mean":
            self.w_main = 1.0 / candidates.shape[1]
            self.w_sp = self.xi / sp_candidates.shape[1] if self.sp_emb is not None else 0.0
        self.dot = distance.dot_product_form and not self.policy.reference
        dtype = self.policy.product_dtype(gallery.dtype) if self.dot else gallery.dtype
        self.prepared = prepared_gallery(distance, gallery, dtype)  # prepared once per gallery
        self.chunk = self._chunk_size(chunk, memory)
        self.work = Workspace()  # the fast path's per-chunk buffers, reused every step

    @property
    def num_terms(self) -> int:
        return self.cand_emb.shape[1] + (0 if self.sp_emb is None else self.sp_emb.shape[1])

    def _chunk_size(self, chunk: int, memory: int | None) -> int:
        """``chunk`` as given, or sized so that a chunk's temporaries fit ``memory``: the
        reference keeps at most ``chunk`` rows (its summation order), the fast path takes
        as many as fit (fewer, larger products)."""
        if memory is None:
            return chunk
        b, n = max(1, self.cand_emb.shape[0]), self.gallery.shape[0]
        fitting = max(256, memory // (b * column_bytes(self.num_terms, self.policy)))
        if self.policy.reference:
            return min(chunk, fitting)
        return min(n, fitting, max(chunk, MAX_CHUNK_ELEMENTS // b))

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
        prepared = prepared_gallery(self.distance, self.gallery)  # the reference's, fp32
        d_qx = self.distance.pairwise_prepared(emb, prepared[start : start + self.chunk])
        return sum(w * torch.relu(arg).sum(dim=(1, 2))
                   for w, _, arg in self._hinge_args(terms, d_qx))

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        """The loss ``[B]`` with autograd, in the reference arithmetic (tests, small sets)."""
        terms = self._terms(emb)
        return cast(torch.Tensor, sum(self._chunk_loss(emb, terms, s)
                                      for s in range(0, self.gallery.shape[0], self.chunk)))

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.policy.reference:
            return self._reference(emb, with_value=True)
        return self._fast(emb, with_value=True)

    def grad(self, emb: torch.Tensor) -> torch.Tensor:
        if self.policy.reference:
            return self._reference(emb, with_value=False)[1]
        return self._fast(emb, with_value=False)[1]

    def _reference(self, emb: torch.Tensor, with_value: bool):
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
                    if with_value:
                        total += w * torch.relu(arg).sum(dim=(1, 2))
                    active = w * (arg > 0).to(e.dtype)
                    g += sign * active.sum(dim=2)
                    w_x -= sign * active.sum(dim=1)
            grad += torch.autograd.grad(d_qx, e, grad_outputs=w_x)[0]
        grad += torch.autograd.grad(terms, e, grad_outputs=term_grads)[0]
        return total, grad

    def _term_plan(self) -> tuple[list[float], list[float]]:
        """Sign and weight of each of the k = m (+ G) hinge terms, in ``_terms`` order."""
        sign = 1.0 if self.raise_rank else -1.0
        m = self.cand_emb.shape[1]
        g = 0 if self.sp_emb is None else self.sp_emb.shape[1]
        return [sign] * m + [1.0] * g, [self.w_main] * m + [self.w_sp] * g

    def _fast(self, emb: torch.Tensor, with_value: bool):
        """The tf32/bf16 path: per chunk, d(q~, x) from one product in the policy's precision,
        the hinge derivative from exact comparisons (:func:`hinge_weights`), and for
        dot-product distances (cosine) the backward as one more product, written out."""
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            terms = self._terms(e)
            q = self.distance.transform(e) if self.dot else None
        thresholds = torch.cat([t.detach() for t in terms], dim=1)  # [B, k]
        signs, weights = self._term_plan()
        weigh = compiled_hinge_weights(self.policy)
        work = self.work
        counts = torch.zeros(thresholds.shape, dtype=torch.long, device=e.device)
        total = torch.zeros(e.shape[0], device=e.device, dtype=e.dtype)
        grad = torch.zeros_like(e)
        grad_q = None if q is None else torch.zeros_like(q)
        q_low = None if q is None else q.detach().to(self.prepared.dtype)
        for s in range(0, self.gallery.shape[0], self.chunk):
            part = self.prepared[s : s + self.chunk]
            if q is not None:
                d_qx = self._dot_distances(q_low, part, e.dtype)
            else:
                with torch.enable_grad():
                    d_qx = self.distance.pairwise_prepared(e, part)
            w_x, cnt, value = weigh(d_qx.detach(), thresholds, signs, weights, with_value,
                                    work=work)
            counts += cnt
            if with_value:
                total += value
            if q is not None:  # d = from_dot(q . x): d(loss)/dq = slope * sum_x w_x x
                w_low = w_x if w_x.dtype == part.dtype else work.get(
                    "w_low", tuple(w_x.shape), part.dtype, w_x.device).copy_(w_x)
                grad_q += self.distance.dot_slope * matmul_fp32(w_low, part)
            else:
                grad += torch.autograd.grad(d_qx, e, grad_outputs=w_x)[0]
        coef = torch.tensor([s * w for s, w in zip(signs, weights, strict=True)],
                            dtype=e.dtype, device=e.device)
        term_grads = list((counts.to(e.dtype) * coef).split([t.shape[1] for t in terms], 1))
        outputs, grads = list(terms), term_grads
        if q is not None:
            outputs, grads = [*terms, q], [*term_grads, grad_q.to(q.dtype)]
        grad += torch.autograd.grad(outputs, e, grad_outputs=grads)[0]
        return total, grad

    def _dot_distances(self, q_low: torch.Tensor, part: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        """``from_dot(q . x)`` ``[B, n]`` for one chunk, in a reused buffer: the product (fp32
        accumulation) and the affine map to distances in place."""
        shape, dev = (q_low.shape[0], part.shape[0]), q_low.device
        out = matmul_fp32(q_low, part.T, out=self.work.get("d", shape, dtype, dev))
        return out.mul_(self.distance.dot_slope).add_(self._dot_offset)

    @property
    def _dot_offset(self) -> float:
        return float(self.distance.from_dot(torch.zeros(())))


def column_bytes(num_terms: int, policy: ExecutionPolicy) -> int:
    """Temporary bytes per (attack, gallery row) of one QA chunk: the reference's [B, k, n]
    hinge tensors, or the fast path's distances, masks and counts."""
    if policy.reference:
        return 4 * (3 * num_terms + 4) + num_terms
    return 24 + 3 * num_terms


def hinge_weights(d: torch.Tensor, thresholds: torch.Tensor, signs: list[float],
                  weights: list[float], with_value: bool = False,
                  work: Workspace | None = None):
    """The hinge sum ``sum_j w_j sum_x [s_j (t_j - d_x)]_+`` of one chunk, differentiated.

    d ``[B, n]`` (d(q~, x)), thresholds ``[B, k]`` (t_j = d(q~, c_j)), one sign s_j and weight
    w_j per term. Returns ``w_x [B, n]`` = d(loss)/d(d_x) = -sum_j s_j w_j [term j active at x],
    ``counts [B, k]`` (int64, the number of x where term j is active: d(loss)/dt_j =
    s_j w_j counts_j) and, with ``with_value``, the loss ``[B]`` (else None). One comparison
    pass per term; terms that share a coefficient are counted together in a small integer
    tensor, so the float weights are written once. ``work`` reuses buffers across calls (the
    returned ``w_x`` lives in it until the next call).
    """
    work = work if work is not None else Workspace()
    shape, dev = tuple(d.shape), d.device
    mask = work.get("mask", shape, torch.bool, dev)
    acc_dtype = torch.uint8 if len(signs) < 2**8 else torch.int32
    groups: dict[float, torch.Tensor] = {}
    counts, value = [], None
    for j, (s, w) in enumerate(zip(signs, weights, strict=True)):
        t = thresholds[:, j : j + 1]
        torch.lt(d, t, out=mask) if s > 0 else torch.gt(d, t, out=mask)
        hits = mask.view(torch.uint8)  # (a uint8 view sums faster than bool, with no copy)
        counts.append(hits.sum(1, dtype=torch.int32))
        if with_value:
            part = w * s * (t[:, 0] * counts[-1] - torch.where(mask, d, 0).sum(1))
            value = part if value is None else value + part
        c = s * w
        if c == 0:
            continue
        if c not in groups:
            groups[c] = work.get(f"acc{len(groups)}", shape, acc_dtype, dev).copy_(hits)
        else:
            groups[c].add_(hits)
    w_x = work.get("w_x", shape, d.dtype, dev).zero_()
    for c, n_active in groups.items():
        w_x.add_(n_active, alpha=-c)
    return w_x, torch.stack(counts, 1).long(), value


_COMPILED: dict = {}


def compiled_hinge_weights(policy: ExecutionPolicy):
    """:func:`hinge_weights`, fused by ``torch.compile`` when the policy asks (one kernel
    instead of a few passes per term: what a 1M-item gallery on a GPU needs)."""
    if not policy.compile:
        return hinge_weights
    if "hinge" not in _COMPILED:
        compiled = torch.compile(_hinge_weights_pure, dynamic=True)
        _COMPILED["hinge"] = lambda d, t, s, w, v, work=None: compiled(d, t, s, w, v)
    return _COMPILED["hinge"]


def _hinge_weights_pure(d: torch.Tensor, thresholds: torch.Tensor, signs: list[float],
                        weights: list[float], with_value: bool = False):
    """:func:`hinge_weights` without buffers or in-place updates: what ``torch.compile``
    fuses into a pass or two over ``d``."""
    w_x = torch.zeros_like(d)
    counts, value = [], None
    for j, (s, w) in enumerate(zip(signs, weights, strict=True)):
        t = thresholds[:, j : j + 1]
        active = d < t if s > 0 else d > t
        counts.append(active.sum(1))
        if with_value:
            part = w * s * (t[:, 0] * counts[-1] - torch.where(active, d, 0).sum(1))
            value = part if value is None else value + part
        w_x = w_x - (s * w) * active.to(d.dtype)
    return w_x, torch.stack(counts, 1), value


class QueryAttack(AttackKind):
    """QA+ / QA-: the adversarial image is the query q; targets ``[T, m]`` are C, ``sp`` C_SP."""

    size_name = "m"
    query_only = True
    parameters = (
        Param("xi", float, None, "weight of the semantics-preserving term, Eq. 12 (default: "
              "the paper's, 1 for QA+ and 100 for QA-)", low=0.0, high=1e6),
        Param("g", int, 5, "size G of C_SP, the query's top-G kept in place by the SP term",
              low=0, high=10_000, flag="G"),
        Param("sp_reduction", str, "mean", "average the hinge terms over C and C_SP as the "
              "authors' code does (mean: reproduces the paper's tables) or sum them as Eq. 12 "
              "is printed", choices=SP_REDUCTIONS),
        TOP_FRACTION)
    raise_rank = True
    paper_xi = 1.0

    def validate(self, options):
        options["xi"] = float(self.paper_xi if options["xi"] is None else options["xi"])
        return options

    def check_fits(self, k: int, num_attacks: int, n: int) -> None:
        super().check_fits(k, num_attacks, n)
        if not self.raise_rank:
            check_pool(k, n, self.options["top_fraction"], self.size_name)
        g = self.options["g"]
        if g > n - 1 - k:
            raise AdvrankError(f"G = {g} does not fit: C_SP comes from the {n - 1 - k} gallery "
                               "items outside q and C")

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        targets = ranked_targets(gallery, anchors, k, gen, not self.raise_rank,
                                 self.options["top_fraction"], self.size_name)
        g = self.options["g"]
        sp = sp_candidates(gallery, anchors, targets, g) if g > 0 else None
        return Selection(anchors, targets, sp)

    def objective(self, embeddings, distance, part, clean=None, policy=None, memory=None):
        dev = embeddings.device
        sp = part.sp
        if sp is None and self.options["xi"] and self.options["g"] > 0:
            # no C_SP given (a direct RankingAttack call): q's top-G in X \ C, from its clean
            # embedding, so that the SP term the options promise is really there
            view = Gallery(None, embeddings, torch.zeros(0), distance)
            sp = sp_candidates(view, None, part.targets, self.options["g"], clean)
        return QueryObjective(self.raise_rank, part.targets.to(dev), embeddings, distance,
                              sp_candidates=None if sp is None else sp.to(dev),
                              xi=self.options["xi"], reduction=self.options["sp_reduction"],
                              policy=policy, memory=memory)

    def prepare(self, embeddings, distance, part, clean=None, policy=None, memory=None):
        return self.objective(embeddings, distance, part, clean, policy, memory)

    def memory_per_attack(self, gallery_size, k, dim, policy):
        """C and C_SP embeddings plus the temporaries of a chunk of at least 1,024 rows (the
        chunk grows with what the budget leaves)."""
        terms = k + self.options["g"]
        return 4 * terms * dim + column_bytes(terms, policy) * min(gallery_size, 1024)

    def shared_memory(self, gallery_size, dim, distance, policy):
        """The prepared (e.g. L2-normalised) gallery copy the steps multiply with, in the
        policy's product dtype."""
        if not distance.dot_product_form:
            return 0
        return gallery_size * dim * torch.finfo(policy.product_dtype(torch.float32)).bits // 8

    @property  # a flag computed from the kind's options: only to build C_SP when the caller
    def needs_clean(self) -> bool:  # type: ignore[override]  # did not
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

    @torch.no_grad()
    def measure_topk(self, gallery, part, emb, index, depth):
        """Where the index puts C in q~'s list (q's own clean copy left out), averaged over
        C: the position (``depth`` beyond the top ``depth``) and the % of C within it."""
        anchors, targets = part.anchors.cpu()[:, None], part.targets.cpu()
        ids, _ = index.search(emb, min(depth + 1, index.size))
        pos = topk_positions(ids, targets, anchors, depth).float()
        return {"rank_topk": pos.mean(1), "in_topk": 100.0 * (pos < depth).float().mean(1)}

    def query_score(self, gallery: Gallery, part: Selection, feedback, ask):
        """The query-only score of these attacks from an oracle's feedback (see
        :mod:`advrank.attacks.feedback`): the rank of C, or its top-k surrogate, plus xi times
        the SP term on C_SP (ranks in place of Eq. 12's hinge sums, so the same xi binds
        harder; ``xi=0`` drops it)."""
        from advrank.attacks.feedback import feedback_score

        return feedback_score(self.raise_rank, gallery, part.targets, part.anchors[:, None],
                              feedback, ask, part.sp, self.options["xi"])

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
