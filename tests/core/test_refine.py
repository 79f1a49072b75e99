"""Exact search answered in float64 (core/refine.py, through VectorIndex.search_rows and
rank_rows): the float64 ranking itself (against brute force, near-ties included), and the
same answer for a row whatever it is searched with."""

from __future__ import annotations

import pytest
import torch

from advrank.core.distances import get_distance
from advrank.core.index import build_index


def gallery_with_near_ties(n=500, d=32, seed=0):
    """Random vectors, a tenth of them copies of others moved by one float32 ulp or so, and
    a few exact duplicates: float32 order is ambiguous there, float64 order is not."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, d, generator=gen)
    src = torch.randint(n // 2, (n // 10,), generator=gen)
    g[n // 2 : n // 2 + len(src)] = g[src] * (1 + 1e-7 * torch.randn(len(src), 1, generator=gen))
    g[-3:] = g[:3]
    q = torch.cat([g[:8] + 1e-3 * torch.randn(8, d, generator=gen), torch.randn(24, d,
                                                                               generator=gen)])
    return g, q


def float64_order(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Brute force: every item's float64 distance, sorted, ties by id."""
    d = get_distance(metric).paired(q.double()[:, None, :], g.double()[None])
    return torch.sort(d, dim=1, stable=True).indices


@pytest.mark.parametrize("spec", ["exact", "flat"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rows_are_the_float64_ranking_whatever_they_are_searched_with(metric, spec):
    """Exact search, and FAISS's flat index re-measured in float64 (on the vectors it
    stores), give each row the float64 order, alone or in any batch."""
    g, q = gallery_with_near_ties()
    index = build_index(g, metric, spec)
    if spec == "flat":
        pytest.importorskip("faiss")
        g = index._flat_vectors().clone()
    brute = float64_order(q, g, metric)
    for k in (1, 10, 100, 500):
        together, dist = index.search_rows(q, k)
        assert torch.equal(together, brute[:, :k]), k
        for rows in ([0], [5, 1], list(range(3, 32, 4)), list(range(31, -1, -1))):
            alone = index.search_rows(q[rows], k)
            assert torch.equal(alone[0], together[rows]) and torch.equal(alone[1], dist[rows])
        want = get_distance(metric).paired(q[:, None].double(), g[together].double()).float()
        assert torch.equal(dist, want)
    # float32 and float64 agree but at near-ties (and exact ties, which float32 may order
    # either way)
    plain = index.search(q, 10)[0]
    assert (plain == brute[:, :10]).float().mean() > 0.8


@pytest.mark.parametrize("spec", ["exact", "flat"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ranks_of_named_items_are_their_places_in_that_ranking(metric, spec):
    g, q = gallery_with_near_ties(seed=1)
    index = build_index(g, metric, spec)
    if spec == "flat":
        g = index._flat_vectors().clone()
    brute = float64_order(q, g, metric)
    gen = torch.Generator().manual_seed(3)
    named = [torch.cat([brute[b, :5], torch.randint(500, (6,), generator=gen)])
             for b in range(len(q))]
    for depth in (500, 50):
        ranks = index.rank_rows(q, named, depth)
        for b, row in enumerate(ranks):
            place = {int(i): r for r, i in enumerate(brute[b])}
            want = [place[int(j)] if place[int(j)] < depth else None for j in named[b]]
            assert row == want, b
        assert index.rank_rows(q[7:8], named[7:8], depth) == ranks[7:8]


@pytest.mark.parametrize("spec", ["exact", "flat", "hnsw"])
def test_insert_and_remove_keep_ids_and_k(spec):
    g, q = gallery_with_near_ties(n=380, seed=2)
    new = torch.randn(20, g.shape[1], generator=torch.Generator().manual_seed(5))
    index = build_index(g, "cosine", spec)
    first = index.add(new)
    assert first == 380 and index.size == index.live == 400
    assert index.search_rows(new, 1)[0][:, 0].tolist() == list(range(380, 400))
    before = index.search_rows(q, 60)[0]
    gone = before[:, 0].unique().tolist()
    for i in gone:
        index.remove(i)
    assert index.live == 400 - len(gone)
    for ids, _ in (index.search_rows(q, 10), index.search(q, 10)):
        assert not set(ids.flatten().tolist()) & set(gone)
        assert (ids >= 0).all()  # over-fetched: still ten each
    if spec != "hnsw":  # (HNSW searches deeper when it over-fetches: other candidates)
        want = [[i for i in row if i not in gone][:10] for row in before.tolist()]
        assert index.search_rows(q, 10)[0].tolist() == want
    ranks = index.rank_rows(q, [torch.tensor(gone)] * len(q), 100)
    assert all(r is None for row in ranks for r in row)
    with pytest.raises(Exception, match="no live vector"):
        index.remove(gone[0])
