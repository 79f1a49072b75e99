"""Candidate attacks (§3.1): perturb a candidate c so that it rises (CA+, Eq. 4) or sinks
(CA-, Eq. 7) in the rankings of a set Q of w queries.

L_CA+(c, Q; X) = sum_q sum_x [d(q, c) - d(q, x)]_+ ;  L_CA- = sum_q sum_x [d(q, x) - d(q, c)]_+

Selection (§4): c random from X; CA+ draws Q at random from X \\ {c}, CA- from the top 1% of
c's own ranking list. Measure: R_CA(c) = mean over q of 100 * Rank_X(q, c~) / |X|, where c~
competes with the other candidates, not with its own clean copy.
"""

from __future__ import annotations

import torch

from advrank.attacks.base import AttackKind, RankingObjective, RankingView, select_anchors
from advrank.attacks.params import TOP_FRACTION
from advrank.attacks.queryset import (
    QuerySet,
    check_query_set,
    draw_text_targets,
    eligible_candidates,
)
from advrank.attacks.selection import Selection, check_pool, ranked_targets
from advrank.core.distances import Distance
from advrank.core.execution import ExecutionPolicy, get_policy, matmul_fp32
from advrank.core.gallery import Gallery
from advrank.core.metrics import count_closer, nearest_neighbors
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS


class CandidateObjective(RankingObjective):
    """Eq. 4 (``raise_rank``) or Eq. 7 for B attacks; queries ``[B, w, D]`` are each attack's Q.

    The distances ``d(q, x)`` are constant, so they are computed once per batch into a table
    ``[B, w, N]`` (4·B·w·N bytes in float32; the memory budget decides how many attacks share
    one table, see :meth:`CandidateAttack.memory_per_attack`). With a = d(q, c) and
    k = #{x : d(q, x) < a}, the CA+ sum over X is ``a * k - (sum of the d(q, x) below a)``, and
    its derivative in a is k, an exact integer count: a PGD step compares a with the w rows of
    the table (one pass over B·w·N numbers, no sort); CA- is the mirror image.

    ``policy``: under tf32/bf16 the table's products use that precision (bf16: the gallery copy
    and the queries in bf16, fp32 accumulation); counts and a are fp32 either way.
    ``memory``: bytes this objective may hold in all; what the table leaves bounds the
    comparison pass's temporary mask (None: an eighth of the table).
    """

    def __init__(self, raise_rank: bool, queries: torch.Tensor, gallery: torch.Tensor,
                 distance: Distance, chunk: int = 4096, policy: ExecutionPolicy | None = None,
                 memory: int | None = None):
        self.raise_rank, self.queries, self.distance = raise_rank, queries, distance
        self.policy = get_policy(policy)
        b, w, d = queries.shape
        self.n = gallery.shape[0]
        entries = b * w * self.n
        spare = entries // 8 if memory is None else memory - entries * gallery.element_size()
        with torch.no_grad():
            self.table = distance_table(queries.reshape(b * w, d), gallery, distance,
                                        self.policy, chunk, spare).view(b, w, self.n)
        self.rows = max(1, spare // max(1, self.n))  # (attack, query) rows per pass

    def _count(self, a: torch.Tensor, with_sums: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """k = #{x : d(q, x) < a} (CA+) or #{x : d(q, x) > a} (CA-) ``[B, w]`` int64, and with
        ``with_sums`` the sum of those d(q, x) ``[B, w]``."""
        key = a.detach().to(self.table.dtype).unsqueeze(-1)
        flat, keys = self.table.view(-1, self.n), key.reshape(-1, 1)
        counts, sums = [], []
        count = compiled_count(self.policy)
        for s in range(0, flat.shape[0], self.rows):
            rows, k = flat[s : s + self.rows], keys[s : s + self.rows]
            if with_sums:
                hit = rows < k if self.raise_rank else rows > k
                counts.append(hit.view(torch.uint8).sum(-1, dtype=torch.int32).long())
                sums.append(torch.where(hit, rows, 0).sum(-1))
            else:
                counts.append(count(rows, k, self.raise_rank))
        shape = a.shape
        return (torch.cat(counts).view(shape),
                torch.cat(sums).view(shape) if with_sums else None)

    def _loss(self, emb: torch.Tensor, with_value: bool) -> torch.Tensor:
        a = self.distance.paired(self.queries, emb[:, None, :])  # [B, w]: d(q, c)
        k, sums = self._count(a, with_value)
        if self.raise_rank:  # hinge active for d(q, x) < a: sum = a * k - sum_below
            loss = a * k - sums if with_value else a * k
        else:  # CA-: hinge active for d(q, x) > a: sum = sum_above - a * k
            loss = sums - a * k if with_value else -(a * k)
        return loss.sum(dim=1)

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        return self._loss(emb, with_value=True)

    def grad(self, emb: torch.Tensor) -> torch.Tensor:
        """The gradient alone (what PGD needs): the loss without its constant part."""
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._loss(e, with_value=False).sum(), e)
        return g


def distance_table(flat: torch.Tensor, gallery: torch.Tensor, distance: Distance,
                   policy: ExecutionPolicy, chunk: int = 4096,
                   spare: int | None = None) -> torch.Tensor:
    """``d(q, x)`` for queries ``[R, D]`` and the gallery ``[N, D]``: ``[R, N]`` in the
    gallery's dtype, written chunk by chunk into one preallocated table. The fp32 reference
    computes exactly what earlier versions did (``distance.pairwise`` per 4,096 rows); other
    precisions take larger chunks and, for dot-product distances, multiply in the policy's
    product dtype (bf16: fp32 accumulation), as large as ``spare`` bytes of temporaries allow.
    No gallery copy outlives the call."""
    n = gallery.shape[0]
    table = torch.empty(flat.shape[0], n, dtype=gallery.dtype, device=gallery.device)
    if policy.reference:
        for s in range(0, n, chunk):
            table[:, s : s + chunk] = distance.pairwise(flat, gallery[s : s + chunk])
        return table
    r, d = max(1, flat.shape[0]), flat.shape[1]
    big = (64 << 20) // r  # at most ~256 MiB of fp32 per product
    if spare is not None:  # per gallery row: its product column, its normalised copies
        big = min(big, spare // (4 * r + 6 * d))
    big = max(chunk, big)
    if not distance.dot_product_form:
        for s in range(0, n, big):
            table[:, s : s + big] = distance.pairwise(flat, gallery[s : s + big])
        return table
    dtype = policy.product_dtype(gallery.dtype)
    q = distance.transform(flat).to(dtype)
    for s in range(0, n, big):
        xs = distance.prepare(gallery[s : s + big]).to(dtype)
        table[:, s : s + big] = distance.from_dot(matmul_fp32(q, xs.T))
    return table


def _count(rows: torch.Tensor, key: torch.Tensor, below: bool) -> torch.Tensor:
    """#{x : rows < key} (``below``) or #{x : rows > key} per row ``[R]``."""
    hit = rows < key if below else rows > key
    return hit.view(torch.uint8).sum(-1, dtype=torch.int32).long()  # (faster than a bool sum)


_COMPILED: dict = {}


def compiled_count(policy: ExecutionPolicy):
    """:func:`_count`, fused into one pass by ``torch.compile`` when the policy asks."""
    if not policy.compile:
        return _count
    if "count" not in _COMPILED:
        _COMPILED["count"] = torch.compile(_count, dynamic=True)
    return _COMPILED["count"]


class CandidateAttack(AttackKind):
    """CA+ / CA-: the adversarial image is the candidate c; targets ``[T, w]`` are Q."""

    size_name = "w"
    parameters = (TOP_FRACTION,)
    raise_rank = True
    text_queries = True

    def check_fits(self, k: int, num_attacks: int, n: int) -> None:
        super().check_fits(k, num_attacks, n)
        if not self.raise_rank:
            check_pool(k, n, self.options["top_fraction"], self.size_name)

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        targets = ranked_targets(gallery, anchors, k, gen, not self.raise_rank,
                                 self.options["top_fraction"], self.size_name)
        return Selection(anchors, targets)

    def objective(self, embeddings, distance, part, clean=None, policy=None, memory=None):
        return CandidateObjective(self.raise_rank, embeddings[part.targets.to(embeddings.device)],
                                  embeddings, distance, policy=policy, memory=memory)

    def prepare(self, embeddings, distance, part, clean=None, policy=None, memory=None):
        return self.objective(embeddings, distance, part, clean, policy, memory)

    def memory_per_attack(self, gallery_size, k, dim, policy):
        """The w rows of the distance table (gallery dtype, taken as 4 bytes) plus an eighth
        for the comparison mask."""
        return k * gallery_size * 4 + k * gallery_size // 8 + 4 * k * dim

    def query_rows(self, gallery: Gallery, targets: torch.Tensor):
        """The queries of ``targets [B, k]`` as ranking lists: their embeddings ``[B*k, D]``,
        their own gallery index ``[B*k]`` (left out of their lists; None for outside queries)
        and their labels ``[B*k]`` (None: not all known)."""
        flat = targets.reshape(-1)
        return gallery.embeddings[flat], flat, gallery.labels[flat]

    @torch.no_grad()
    def measure(self, gallery: Gallery, part: Selection, emb: torch.Tensor):
        """``rank [B]`` (R_CA, %) and ``recall@1 [B]``: the % of the attack's queries whose
        top-1 result (c~ if ranked first, else the nearest other member) shares their label
        (not measured for outside queries without a label each)."""
        g_emb, dist, labels, n = gallery.embeddings, gallery.distance, gallery.labels, len(gallery)
        anchors, targets = part.anchors.to(g_emb.device), part.targets.to(g_emb.device)
        b, k = targets.shape
        q, own, q_labels = self.query_rows(gallery, targets)  # one ranking list per (attack, q)
        c_rep = anchors.repeat_interleave(k)
        thr = dist.paired(q, emb.repeat_interleave(k, 0))[:, None]  # d(q, c~) [B*k, 1]
        excl = c_rep[:, None] if own is None else torch.stack([own, c_rep], 1)  # q, c's copy
        ranks = count_closer(q, thr, g_emb, dist, exclude=excl)[:, 0].float()
        out = {"rank": (100.0 * ranks / n).reshape(b, k).mean(1)}
        if q_labels is not None:
            nn2 = nearest_neighbors(q, g_emb, 2, dist, own)
            nearest_other = torch.where(nn2[:, 0] == c_rep, nn2[:, 1], nn2[:, 0])
            top1_label = torch.where(ranks == 0, labels[c_rep], labels[nearest_other])
            out["recall@1"] = 100.0 * (top1_label == q_labels).float().reshape(b, k).mean(1)
        return out

    @torch.no_grad()
    def measure_topk(self, gallery, part, emb, index, depth):
        """Where c~ falls in the answer to each query of Q (the query and c's clean copy left
        out) once c~ is in the index, as a catalog inserts an upload: its position among the
        members returned, ``depth`` when it is not among the first ``depth``. Averaged over Q;
        ``in_topk``: the % of Q whose answer holds c~. Through a FAISS index c~ is inserted
        into a copy of it (:mod:`advrank.core.catalog`): where it lands in the graph or the
        lists decides whether the search finds it. Exact search finds it where it ranks: the
        members it returns nearer than d(q, c~)."""
        g_emb, dist = gallery.embeddings, gallery.distance
        targets = part.targets.to(g_emb.device)
        b, k = targets.shape
        q, own, _ = self.query_rows(gallery, targets)
        c_rep = part.anchors.cpu().repeat_interleave(k)
        excl = c_rep[:, None] if own is None else torch.stack([own.cpu(), c_rep], 1)
        if not index.exact:  # c~ inserted into a copy of the index, as a catalog inserts it
            from advrank.core.catalog import upload_positions

            pos = upload_positions(index, emb, q.reshape(b, k, -1),
                                   excl.reshape(b, k, excl.shape[1]), depth).float()
            pos = pos.reshape(b * k)
        else:
            thr = dist.paired(q, emb.repeat_interleave(k, 0)).float().cpu()  # d(q, c~)
            ids, scores = index.search(q, min(depth + 2, index.size))
            kept = (ids >= 0) & ~(ids[:, :, None] == excl[:, None, :]).any(-1)
            pos = (kept & (scores < thr[:, None])).sum(1).clamp_max(depth).float()
        return {"rank_topk": pos.reshape(b, k).mean(1),
                "in_topk": 100.0 * (pos < depth).float().reshape(b, k).mean(1)}

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of the first query of Q, with c replaced by c~ (c highlighted)."""
        q, c = int(part.targets[0, 0]), int(part.anchors[0])
        return RankingView(gallery.embeddings[q], q, (c, emb[0]), [q], [c])

    def for_queries(self, queries: QuerySet) -> TextCandidateAttack:
        """This kind with Q drawn from an outside query set (texts), see
        :class:`TextCandidateAttack`."""
        return TextCandidateAttack(self, queries)


@ATTACKS.register("CA+", aliases=("ca+",))
class CandidateRaise(CandidateAttack):
    name = "CA+"
    raise_rank = True
    direction = "down"
    description = "raise a candidate in the rankings of w random queries (Eq. 4)"


@ATTACKS.register("CA-", aliases=("CA−", "ca-", "ca−"))
class CandidateLower(CandidateAttack):
    name = "CA-"
    raise_rank = False
    direction = "up"
    description = "sink a candidate in the rankings of w queries from its top 1% (Eq. 7)"


class TextCandidateAttack(CandidateAttack):
    """CA+ / CA- whose queries Q are an outside query set (a text set embedded by a dual
    encoder's text tower) instead of gallery members; ``targets [T, w]`` index the set.

    The §4 protocol with texts: c is drawn from the gallery as for picture queries; CA+ draws
    Q at random from the set, CA- from the "moderation" texts of c (those whose top
    ``top_fraction`` of the gallery holds c; c is drawn among the members held by at least w
    of them). The objective is Eq. 4 / Eq. 7 unchanged: it needs only the queries'
    embeddings. The rank of c~ for a text counts the gallery members closer to it than c~,
    c's clean copy left out; recall@1 is measured when every text names a class."""

    def __init__(self, base: CandidateAttack, queries: QuerySet):
        if not isinstance(queries, QuerySet):
            raise AdvrankError(f"queries must be a QuerySet (embed_text_queries), got "
                               f"{type(queries).__name__}")
        # this instance is the base kind (CA+ or CA-) with other queries: its class-level
        # declarations are the base's
        for name, value in (("name", base.name), ("raise_rank", base.raise_rank),
                            ("direction", base.direction),
                            ("description", f"{base.description}; queries from a text set")):
            setattr(self, name, value)
        self.options, self.queries = dict(base.options), queries

    def check_fits(self, k: int, num_attacks: int, n: int) -> None:
        AttackKind.check_fits(self, k, num_attacks, n)
        if k > len(self.queries):
            raise AdvrankError(f"w = {k} is larger than the query set ({len(self.queries)} "
                               "texts)")

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        check_query_set(self.queries, gallery)
        self.check_fits(k, num_attacks, len(gallery))
        gen = torch.Generator().manual_seed(seed)
        anchors, targets = draw_text_targets(self.queries, gallery, k, num_attacks, gen,
                                             not self.raise_rank,
                                             self.options["top_fraction"], self.size_name)
        return Selection(anchors, targets)

    def available(self, gallery: Gallery, k: int) -> int:
        """How many distinct candidates c the §4 draw has on ``gallery`` with w = k: |X| for
        CA+, the members held in the top ``top_fraction`` of at least k texts for CA-."""
        return eligible_candidates(self.queries, gallery, k, not self.raise_rank,
                                   self.options["top_fraction"])

    def objective(self, embeddings, distance, part, clean=None, policy=None, memory=None):
        q = self.queries.embeddings.to(embeddings.device)[part.targets.to(embeddings.device)]
        return CandidateObjective(self.raise_rank, q, embeddings, distance, policy=policy,
                                  memory=memory)

    def query_rows(self, gallery: Gallery, targets: torch.Tensor):
        flat = targets.reshape(-1)
        queries = self.queries
        labels = queries.labels.to(flat.device)[flat] if queries.all_labelled else None
        return queries.embeddings.to(flat.device)[flat], None, labels

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The list of the first text of Q, with c replaced by c~ (c highlighted)."""
        q, c = int(part.targets[0, 0]), int(part.anchors[0])
        return RankingView(self.queries.embeddings[q].to(gallery.device), None, (c, emb[0]),
                           [], [c], query_text=self.queries.texts[q])

    def describe(self) -> dict:
        return {**super().describe(), **self.queries.info}
