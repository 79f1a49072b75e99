"""Surrogate ranking losses of §3 (Eq. 4, 7, 9, 11, 12) and the embedding-shift loss of §3.3.

An objective holds the fixed part of B independent attacks (gallery embeddings X ``[N, D]``,
each attack's queries or candidates) and maps the embeddings of the B perturbed inputs
``emb [B, D]`` to the B losses to *minimise* ``[B]``. Each loss sums over the whole candidate
set X, as the paper writes it, through the shared :class:`~advrank.distances.Distance`.
``value_and_grad`` walks the gallery in chunks so that memory stays bounded as X grows.
"""

from __future__ import annotations

import torch

from advrank.distances import Distance

RAISE, LOWER = "+", "-"
SP_REDUCTIONS = ("sum", "mean")  # how Eq. 12's terms are reduced over C and C_SP


class RankingObjective:
    """Base class: ``__call__(emb [B, D]) -> [B]``; ``value_and_grad`` -> (``[B]``, ``[B, D]``)."""

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self(e)
            (grad,) = torch.autograd.grad(loss.sum(), e)
        return loss.detach(), grad


def _hinge(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


class CandidateObjective(RankingObjective):
    """CA+ (Eq. 4) and CA- (Eq. 7): the candidate c is perturbed; its queries Q are fixed.

    L_CA+(c, Q; X) = sum_q sum_x [d(q, c) - d(q, x)]_+ ;  L_CA- = sum_q sum_x [d(q, x) - d(q, c)]_+

    queries ``[B, w, D]``: the embeddings of each attack's query set Q. The distances
    ``d(q, x)`` are constant, so they are computed once per batch, sorted, and prefix-summed
    (``[B, w, N]`` each: the fixed memory of a batch of CA attacks is 8·B·w·N bytes in float32,
    ``--batch-size`` bounds it). With a = d(q, c) and k = #{x : d(q, x) < a}, the CA+ sum over X is
    ``a * k - (sum of the k smallest d(q, x))``, and its derivative in a is k, exactly what the
    hinge's autograd gives; CA- is the mirror image. A PGD step thus costs a binary search
    per (attack, query) instead of a pass over the whole gallery.
    """

    def __init__(self, direction: str, queries: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, chunk: int = 4096):
        if direction not in (RAISE, LOWER):
            raise ValueError(f"direction must be '+' or '-', got {direction!r}")
        self.direction, self.queries, self.distance = direction, queries, distance
        b, w, d = queries.shape
        flat = queries.reshape(b * w, d)
        with torch.no_grad():
            d_qx = torch.cat(
                [distance.pairwise(flat, gallery[s : s + chunk])
                 for s in range(0, gallery.shape[0], chunk)], dim=1,
            ).reshape(b, w, -1)
            self.sorted = d_qx.sort(dim=-1).values.contiguous()  # [B, w, N]
            del d_qx
            # prefix sums for the loss *value* only (PGD uses the exact integer derivative k)
            cums = self.sorted.cumsum(dim=-1)
            self.prefix = torch.nn.functional.pad(cums, (1, 0))  # [B, w, N + 1], prefix[0] = 0
        self.n = self.sorted.shape[-1]

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        a = self.distance.paired(self.queries, emb[:, None, :])  # [B, w]: d(q, c)
        key = a.detach().to(self.sorted.dtype).unsqueeze(-1).contiguous()
        if self.direction == RAISE:  # hinge active for d(q, x) < a
            k = torch.searchsorted(self.sorted, key, right=False)  # [B, w, 1]
            below = self.prefix.gather(-1, k).squeeze(-1)
            loss = a * k.squeeze(-1) - below
        else:  # CA-: hinge active for d(q, x) > a
            k = torch.searchsorted(self.sorted, key, right=True)
            above = self.prefix[..., -1] - self.prefix.gather(-1, k).squeeze(-1)
            loss = above - a * (self.n - k.squeeze(-1))
        return loss.sum(dim=1)


class QueryObjective(RankingObjective):
    """QA+ (Eq. 11), QA- (Eq. 9) and the semantics-preserving SP-QA (Eq. 12): q is perturbed.

    L_QA+(q, C; X) = sum_c sum_x [d(q, c) - d(q, x)]_+ ;  L_QA- = sum_c sum_x [d(q, x) - d(q, c)]_+
    L_SP-QA = L_QA±(q, C; X) + xi * L_QA+(q, C_SP; X)

    candidates ``[B, m]`` and ``sp_candidates [B, G]`` are gallery indices (C and C_SP).
    ``reduction="sum"`` is Eq. 12 as written; ``"mean"`` averages the main term over C and the
    SP term over C_SP instead (the reading under which our numbers match the paper's tables;
    for PGD's sign step it equals the sum form with xi * m / G).
    """

    def __init__(self, direction: str, candidates: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, sp_candidates: torch.Tensor | None = None, xi: float = 0.0,
                 chunk: int = 4096, reduction: str = "sum"):
        if direction not in (RAISE, LOWER):
            raise ValueError(f"direction must be '+' or '-', got {direction!r}")
        if reduction not in SP_REDUCTIONS:
            raise ValueError(f"reduction must be one of {SP_REDUCTIONS}, got {reduction!r}")
        self.direction, self.gallery, self.distance = direction, gallery, distance
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
        sign = 1.0 if self.direction == RAISE else -1.0
        signs, weights = (sign, 1.0), (self.w_main, self.w_sp)
        return [(w, s, s * (t[:, :, None] - d_qx[:, None, :]))
                for t, w, s in zip(terms, weights, signs, strict=False)]

    def _chunk_loss(self, emb, terms, start: int) -> torch.Tensor:
        d_qx = self.distance.pairwise_prepared(emb, self.prepared[start : start + self.chunk])
        return sum(w * _hinge(arg).sum(dim=(1, 2)) for w, _, arg in self._hinge_args(terms, d_qx))

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


class EmbeddingShiftObjective(RankingObjective):
    """§3.3 maximum-shift-distance attack: maximise d(f(x + r), f(x)), i.e. minimise -d.

    reference ``[B, D]``: the clean embeddings f(x). d has zero gradient at r = 0 (both for
    1 - cos and for the clamped Euclidean norm), so this attack needs a random start.
    """

    def __init__(self, reference: torch.Tensor, distance: Distance):
        self.reference, self.distance = reference.detach(), distance

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return -self.distance.paired(emb, self.reference)
