"""Exact search answered in float64, found through float32: a row's answer never depends on
the other rows searched with it.

A float32 distance row of a query computed inside a batch may differ in its last bits from
the same row computed alone (matrix kernels pick their paths by shape), and near-ties then
swap. Here the float32 pass only *finds* candidates: every item whose float32 key lies within
twice a proven error bound of the k-th smallest is re-measured in float64 (the distance's own
``paired`` formula, one pair at a time), and the answer is the float64 order (ties by id).
The bound holds for any summation order, so the candidates always contain the float64 top k,
and the answer is the same whatever the batch.

Keys (monotone in the distance): ``1 - cos`` for cosine; the squared distance for euclidean.
Bounds (``u = 2^-24``, ``D`` the dimension): cosine ``(4D + 32) u``; euclidean
``2 (D + 8) u (||q|| + max ||g||)^2`` (the float32 dot-product form's error).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advrank.core.distances import Distance

U = 2.0 ** -24
#: float32 distance entries computed at once (rows x gallery items)
BLOCK = 1 << 24


class RefinedExact:
    """Exact search of ``gallery [N, D]`` (float32) by ``distance`` (cosine or euclidean),
    answered in float64; ``dead [N]`` (bool, optional at call time) marks items no search
    may return."""

    def __init__(self, gallery: torch.Tensor, distance: Distance):
        self.distance = distance
        self.euclidean = distance.name == "euclidean"
        self.gallery = gallery.detach().float()
        self._index(self.gallery)

    def _index(self, gallery: torch.Tensor) -> None:
        """The float32 pass's gallery, transposed to ``[D, N]`` (a query-by-gallery product
        is about twice as fast with it contiguous)."""
        side = gallery if self.euclidean else F.normalize(gallery, dim=-1)
        self.g_t = side.T.contiguous()
        self.g_sq = (gallery * gallery).sum(1) if self.euclidean else None
        self.g_max = float(gallery.norm(dim=1).max())

    @classmethod
    def for_candidates(cls, gallery: torch.Tensor, distance: Distance) -> RefinedExact:
        """Only :meth:`finish` and :meth:`error`: the candidates come from elsewhere (a FAISS
        flat index over ``gallery [N, D]``, its own stored vectors)."""
        self = cls.__new__(cls)
        self.distance, self.euclidean = distance, distance.name == "euclidean"
        self.gallery = gallery
        self.g_max = float(gallery.norm(dim=1).max())
        return self

    def add(self, rows: torch.Tensor) -> None:
        self.gallery = torch.cat([self.gallery, rows.detach().float().to(self.gallery.device)])
        self._index(self.gallery)

    def _keys(self, q: torch.Tensor) -> torch.Tensor:
        """float32 keys ``[b, N]`` of queries ``q [b, D]``."""
        if self.euclidean:
            sq = (q * q).sum(1, keepdim=True) + self.g_sq[None] - 2.0 * (q @ self.g_t)
            return sq.clamp_min(0.0)
        return 1.0 - F.normalize(q, dim=-1) @ self.g_t

    def _error(self, q: torch.Tensor) -> torch.Tensor:
        """The bound ``[b]`` (float64) on |float32 key - float64 key|."""
        d = q.shape[1]
        if self.euclidean:
            return 2 * (d + 8) * U * (q.double().norm(dim=1) + self.g_max) ** 2
        return torch.full((q.shape[0],), (4 * d + 32) * U, dtype=torch.float64)

    def _exact(self, q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """float64 distances ``[m]`` of one query ``q [D]`` to the gallery ``items [m]``."""
        return self.distance.paired(q.double()[None], self.gallery[items].double())

    def _chunks(self, n: int):
        step = max(1, BLOCK // max(1, self.gallery.shape[0]))
        return range(0, n, step), step

    @torch.no_grad()
    def topk(self, queries: torch.Tensor, k: int, dead: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, k], distances [B, k] float32)``, nearest first by float64 distance."""
        q = queries.detach().float().to(self.gallery.device)
        ids = torch.empty(q.shape[0], k, dtype=torch.long)
        dist = torch.empty(q.shape[0], k)
        starts, step = self._chunks(q.shape[0])
        for s in starts:
            keys = self._keys(q[s : s + step])
            if dead is not None:
                keys[:, dead.to(keys.device)] = float("inf")
            kth = keys.kthvalue(k, dim=1).values.double()
            limit = torch.nextafter((kth + 2 * self._error(q[s : s + step])).float(),
                                    torch.tensor(float("inf")))
            for r in range(keys.shape[0]):
                items = (keys[r] <= limit[r]).nonzero().squeeze(1)
                ids[s + r], dist[s + r] = self.finish(q[s + r], items, k)
        return ids, dist

    def finish(self, q: torch.Tensor, items: torch.Tensor, k: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The float64 top ``k`` of one query ``q [D]`` among ``items [m]`` (candidates that
        hold every item within the bound of the k-th): ``(ids [k], distances [k])``."""
        items = torch.sort(items).values  # in id order: a stable sort then breaks ties by id
        exact = self._exact(q, items)
        order = torch.sort(exact, stable=True).indices[:k]
        return items[order].cpu(), exact[order].float().cpu()

    def error(self, q: torch.Tensor) -> torch.Tensor:
        """The bound ``[b]`` on |float32 key - float64 key| of queries ``q [b, D]`` (keys of
        any float32 dot-product computation, FAISS's included)."""
        return self._error(q.detach().float())

    @torch.no_grad()
    def ranks(self, queries: torch.Tensor, named: list[torch.Tensor], depth: int,
              dead: torch.Tensor | None = None) -> list[list[int | None]]:
        """Where each of ``named[b] [j]`` sits in query b's float64 ranking (0 = nearest),
        None at ``depth`` or beyond (or for a dead item)."""
        q = queries.detach().float().to(self.gallery.device)
        out: list[list[int | None]] = []
        starts, step = self._chunks(q.shape[0])
        for s in starts:
            keys = self._keys(q[s : s + step])
            if dead is not None:
                keys[:, dead.to(keys.device)] = float("inf")
            err = self._error(q[s : s + step])
            out += [self.ranks_from_keys(q[s + r], keys[r], float(err[r]), named[s + r], depth)
                    for r in range(keys.shape[0])]
        return out

    def ranks_from_keys(self, q: torch.Tensor, keys: torch.Tensor, err: float,
                        named: torch.Tensor, depth: int) -> list[int | None]:
        """The float64 ranks of ``named [j]`` for one query ``q [D]`` from its float32 keys
        ``[N]`` (by id; +inf for dead items): items surely nearer or farther by their keys
        (beyond the bound ``err``) are counted as such, those within it re-measured."""
        keys = keys.double()
        named = named.to(keys.device)
        d_j = self._exact(q, named)
        key_j = d_j * d_j if self.euclidean else d_j
        below = (keys[None, :] < (key_j - err)[:, None]).sum(1)  # surely nearer: [j]
        band = (keys[None, :] - key_j[:, None]).abs() <= err  # to re-measure: [j, N]
        band[torch.arange(len(named)), named] = False
        rows, items = band.nonzero(as_tuple=True)
        exact = self._exact(q, items)
        nearer = (exact < d_j[rows]) | ((exact == d_j[rows]) & (items < named[rows]))
        ranks = below + torch.zeros_like(below).index_add_(0, rows, nearer.long())
        dead = torch.isinf(keys[named])
        return [None if gone or r >= depth else r
                for r, gone in zip(ranks.tolist(), dead.tolist(), strict=True)]
