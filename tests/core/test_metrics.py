"""Ranking metrics on galleries with hand-computed answers, and against brute-force loops."""

from __future__ import annotations

import pytest
import torch

from advrank.core.distances import get_distance
from advrank.core.gallery import embed_dataset
from advrank.core.metrics import (
    count_closer,
    mean_average_precision,
    nearest_neighbors,
    recall_at_k,
    retrieval_metrics,
)
from advrank.data import TensorImageDataset
from advrank.models import create_model

EUC = get_distance("euclidean")
COS = get_distance("cosine")


def _line(*xs):
    """1-D embeddings: distances are |x_i - x_j| and easy to rank by hand."""
    return torch.tensor(xs, dtype=torch.float32)[:, None]


def test_separated_classes_are_perfect():
    gallery, labels = _line(0, 1, 2, 10, 11, 12), torch.tensor([0, 0, 0, 1, 1, 1])
    m = retrieval_metrics(gallery, labels, EUC, ks=(1, 2))
    assert m == {"recall@1": 100.0, "recall@2": 100.0, "map": pytest.approx(100.0)}  # all in %


def test_hand_computed_recall_and_map():
    # x:     0  1  3  6          labels: 0 0 1 0
    # q=0:  1(0) 3(1) 6(0)  -> rel 1 0 1: AP = (1 + 2/3) / 2 = 0.8333, NN hit
    # q=1:  0(0) 3(1) 6(0)  -> rel 1 0 1: AP = 0.8333, NN hit
    # q=3:  no other label-1 item: miss, left out of mAP
    # q=6:  3(1) 1(0) 0(0)  -> rel 0 1 1: AP = (1/2 + 2/3) / 2 = 0.5833, NN miss
    gallery, labels = _line(0, 1, 3, 6), torch.tensor([0, 0, 1, 0])
    r = recall_at_k(gallery, labels, EUC, ks=(1, 2, 4))
    assert r[1] == pytest.approx(50.0)
    assert r[2] == pytest.approx(75.0)
    assert r[4] == pytest.approx(75.0)  # K larger than the list: the whole list
    assert mean_average_precision(gallery, labels, EUC) == pytest.approx((5 / 6 + 5 / 6 + 7 / 12)
                                                                         / 3)
    assert mean_average_precision(gallery, labels, EUC) == pytest.approx(0.75)


def test_hand_computed_ap_single_queries():
    # x: 0 1 3 7, labels 0 1 0 1 -> APs 1/2, 1/3, 1/2, 1/2; R@1 = 0, R@2 = 75%
    gallery, labels = _line(0, 1, 3, 7), torch.tensor([0, 1, 0, 1])
    assert mean_average_precision(gallery, labels, EUC, chunk=1) == pytest.approx(
        (0.5 + 1 / 3 + 0.5 + 0.5) / 4)
    r = recall_at_k(gallery, labels, EUC, ks=(1, 2))
    assert r == {1: pytest.approx(0.0), 2: pytest.approx(75.0)}


def test_query_left_out_of_its_own_list():
    gallery = _line(0, 5, 6, 20)
    idx = torch.arange(4)
    assert nearest_neighbors(gallery, gallery, 1, EUC)[:, 0].tolist() == [0, 1, 2, 3]
    left_out = nearest_neighbors(gallery, gallery, 2, EUC, query_index=idx)
    assert left_out.tolist() == [[1, 2], [2, 0], [1, 0], [2, 1]]
    # a subset of the gallery as queries, with its positions
    sub = nearest_neighbors(gallery[[3, 1]], gallery, 1, EUC, query_index=torch.tensor([3, 1]))
    assert sub[:, 0].tolist() == [2, 2]
    # with a singleton class nothing leaks: its member is never its own neighbour
    assert recall_at_k(gallery, torch.tensor([0, 1, 2, 3]), EUC, ks=(1,))[1] == 0.0


def test_nearest_neighbors_chunking_identical():
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(37, 5, generator=g)
    idx = torch.arange(37)
    for dist in (EUC, COS):
        a = nearest_neighbors(gallery, gallery, 6, dist, query_index=idx, chunk=1)
        b = nearest_neighbors(gallery, gallery, 6, dist, query_index=idx, chunk=1000)
        c = nearest_neighbors(gallery, gallery, 6, dist, query_index=idx, chunk=5)
        assert torch.equal(a, b) and torch.equal(a, c)
        assert not (a == idx[:, None]).any()


def _brute_force_metrics(gallery, labels, dist, ks):
    n = len(labels)
    d = dist.pairwise(gallery, gallery)
    hits = {k: 0 for k in ks}
    aps = []
    for q in range(n):
        others = sorted((j for j in range(n) if j != q), key=lambda j: d[q, j].item())
        rel = [int(labels[j] == labels[q]) for j in others]
        for k in ks:
            hits[k] += any(rel[:k])
        if sum(rel):
            found, precisions = 0, []
            for rank, r in enumerate(rel, 1):
                if r:
                    found += 1
                    precisions.append(found / rank)
            aps.append(sum(precisions) / sum(rel))
    return {k: 100.0 * h / n for k, h in hits.items()}, sum(aps) / len(aps)


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_metrics_match_brute_force(name):
    dist = get_distance(name)
    g = torch.Generator().manual_seed(3)
    gallery = torch.randn(40, 3, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    recalls, map_ = _brute_force_metrics(gallery, labels, dist, (1, 2, 4, 8))
    ours = recall_at_k(gallery, labels, dist, ks=(1, 2, 4, 8), chunk=7)
    assert ours == {k: pytest.approx(v) for k, v in recalls.items()}
    assert 0 < ours[1] < ours[8] < 100
    assert mean_average_precision(gallery, labels, dist, chunk=9) == pytest.approx(map_)
    assert mean_average_precision(gallery, labels, dist, chunk=1000) == pytest.approx(map_)


def test_count_closer_hand_example():
    anchors = _line(0)
    gallery = _line(1, 2, 3, -0.5, 4)
    # rank of gallery[2] (distance 3) for anchor 0: members 0, 1, 3 are closer
    t = torch.tensor([[3.0]])
    assert count_closer(anchors, t, gallery, EUC).tolist() == [[3]]
    assert count_closer(anchors, t, gallery, EUC, exclude=torch.tensor([[3]])).tolist() == [[2]]
    # the target itself never counts, even with a threshold above its own distance
    t2 = torch.tensor([[3.5]])
    assert count_closer(anchors, t2, gallery, EUC).tolist() == [[4]]
    assert count_closer(anchors, t2, gallery, EUC, targets=torch.tensor([[2]])).tolist() == [[3]]


def test_count_closer_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    a_n, n, k = 6, 31, 3
    anchors, gallery = torch.randn(a_n, 4, generator=g), torch.randn(n, 4, generator=g)
    d = EUC.pairwise(anchors, gallery)
    targets = torch.randint(0, n, (a_n, k), generator=g)
    targets[:, -1] = -1  # a threshold that belongs to no gallery member
    thresholds = d.gather(1, targets.clamp_min(0))
    thresholds[:, -1] = torch.rand(a_n, generator=g) * 3
    exclude = torch.randint(0, n, (a_n, 2), generator=g)
    exclude[0, 1] = -1  # padding
    out = count_closer(anchors, thresholds, gallery, EUC, exclude=exclude, targets=targets,
                       chunk=4)
    assert out.dtype == torch.int64 and out.shape == (a_n, k)
    expected = torch.zeros(a_n, k, dtype=torch.long)
    for a in range(a_n):
        for j in range(k):
            for x in range(n):
                if x in exclude[a].tolist() or x == targets[a, j].item():
                    continue
                expected[a, j] += bool(d[a, x] < thresholds[a, j])
    assert torch.equal(out, expected)
    assert expected.sum() > 0
    # no exclusions, one chunk: plain counts
    plain = count_closer(anchors, thresholds, gallery, EUC)
    assert torch.equal(plain, (d[:, None, :] < thresholds[:, :, None]).sum(-1))


def test_embed_dataset_tensor_and_loader_paths_agree():
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16)
    model.train()
    ds = TensorImageDataset(torch.rand(10, 1, 8, 8), torch.arange(10))

    class Plain(torch.utils.data.Dataset):  # no `.images`: goes through the DataLoader
        labels = ds.labels

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    fast = embed_dataset(model, ds, batch_size=3)
    assert not model.training  # evaluated in eval mode
    slow = embed_dataset(model, Plain(), batch_size=4)
    assert fast.shape == (10, 16)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast, model(ds.images).detach())


def test_nearest_neighbors_in_gallery_blocks_equals_one_block():
    """A gallery too large for one block is ranked block by block, with the same result."""
    from advrank.core.distances import CosineDistance
    from advrank.core.metrics import nearest_neighbors

    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(1000, 8, generator=g, dtype=torch.float64)
    queries = gallery[:37]
    own = torch.arange(37)
    dist = CosineDistance()
    whole = nearest_neighbors(queries, gallery, 12, dist, own)
    blocked = nearest_neighbors(queries, gallery, 12, dist, own, chunk=10, block=97)
    assert torch.equal(blocked, whole)
    assert not (blocked == own[:, None]).any()  # each query left out of its own list
    few = nearest_neighbors(queries, gallery, 150, dist, None, block=64)  # k > a block
    assert torch.equal(few, nearest_neighbors(queries, gallery, 150, dist, None))


def _brute_query_metrics(q, ql, g, gl, dist, ks, own):
    """Loop over queries: sort the gallery, drop the query's own entry, score the list."""
    recalls = {k: 0.0 for k in ks}
    aps = []
    for i in range(q.shape[0]):
        d = dist.pairwise(q[i : i + 1], g)[0]
        order = [j for j in d.argsort().tolist() if own is None or j != int(own[i])]
        rel = [float(gl[j] == ql[i]) for j in order]
        for k in ks:
            recalls[k] += 100.0 * any(rel[:k]) / q.shape[0]
        if sum(rel):
            hits, precisions = 0, []
            for rank, r in enumerate(rel, start=1):
                if r:
                    hits += 1
                    precisions.append(hits / rank)
            aps.append(sum(precisions) / sum(rel))
    return {**{f"recall@{k}": v for k, v in recalls.items()},
            "map": 100.0 * sum(aps) / max(len(aps), 1)}


@pytest.mark.parametrize("dist", [EUC, COS], ids=["euclidean", "cosine"])
def test_query_metrics_match_brute_force_and_retrieval_metrics(dist):
    gen = torch.Generator().manual_seed(3)
    g, gl = torch.randn(40, 5, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    q, ql = torch.randn(9, 5, generator=gen), torch.randint(0, 5, (9,), generator=gen)
    from advrank.core.metrics import query_metrics

    ks = (1, 3, 10)
    disjoint = query_metrics(q, ql, g, gl, dist, ks, chunk=4)
    expected = _brute_query_metrics(q, ql, g, gl, dist, ks, None)
    assert disjoint == pytest.approx(expected, abs=1e-4)
    # members of the gallery as queries, each left out of its own list
    own = torch.tensor([0, 7, 39, 12])
    inside = query_metrics(g[own], gl[own], g, gl, dist, ks, own, chunk=3)
    assert inside == pytest.approx(_brute_query_metrics(g[own], gl[own], g, gl, dist, ks, own),
                                   abs=1e-4)
    everyone = query_metrics(g, gl, g, gl, dist, ks, torch.arange(40))
    assert everyone == pytest.approx(retrieval_metrics(g, gl, dist, ks), abs=1e-4)
