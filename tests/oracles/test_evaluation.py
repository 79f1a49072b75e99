"""The auditor's view of an endpoint: lists with each query's own id left out, positions of
named ids exact where the endpoint gives the whole ranking and censored at its depth where
it shows only its top results, every evaluation query counted apart."""

from __future__ import annotations

import pytest
import torch

from advrank.oracles import make_oracle
from advrank.oracles.evaluation import EvaluationView, drop_own, positions_in


@pytest.fixture(scope="module")
def target(untrained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(untrained_digits), "cpu")


class Shallow:
    """An oracle that shows only its top ``depth`` results and no named ranks (a vendor
    API): the local oracle's lists, cut."""

    def __init__(self, oracle, depth: int):
        self.inner, self.depth = oracle, depth

    def __getattr__(self, name):
        return getattr(self.inner, name)

    named_depth = None

    @property
    def max_depth(self):
        return self.depth


def test_drop_own_keeps_the_order_and_pads():
    ids = torch.tensor([[5, 3, 7, 1], [2, 9, 4, -1]])
    assert drop_own(ids, torch.tensor([3, -1]), 4).tolist() == [[5, 7, 1, -1], [2, 9, 4, -1]]
    assert drop_own(ids, torch.tensor([5, 4]), 2).tolist() == [[3, 7], [2, 9]]
    assert positions_in(ids, torch.tensor([[7, 8], [-1, 4]]), 9).tolist() == [[2, 9], [9, 2]]


def test_the_local_oracle_gives_exact_ranks_that_match_the_gallery(target):
    oracle = make_oracle("local", target, "topk:5")
    view = EvaluationView(oracle, 5)
    assert view.full and view.beyond == len(target.gallery) - 1
    own = torch.tensor([3, 40, 100])
    images = target.gallery.images(own)
    whole = drop_own(oracle.search(images, len(target.gallery), False)[0], own, 718)
    named = whole[:, [0, 7, 300]]  # places 0, 7 and 300 among the others
    reading = view.read(images, own, named, top=5, own_rank=True)
    assert reading.positions.tolist() == [[0, 7, 300]] * 3
    assert torch.equal(reading.top, whole[:, :5])
    assert reading.own.tolist() == [0, 0, 0]  # each picture finds its own copy first
    assert view.queries == oracle.queries == 6 and view.describe()["view"] == "ranks"


class Missing:
    """An oracle whose named ranks miss id 40 (an HNSW search that does not find it)."""

    def __init__(self, oracle):
        self.inner = oracle

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def ranks_of(self, images, named):
        ranks = self.inner.ranks_of(images, named)
        return torch.where(named == 40, -1, ranks)


def test_an_own_id_the_endpoint_does_not_rank_reads_as_beyond(target):
    """A member whose own copy the endpoint's ranks miss reads as the last place (as a named
    id it misses), so every row has its own rank (ES's figure) and the rest are exact."""
    view = EvaluationView(Missing(make_oracle("local", target, "topk:5")), 5)
    own = torch.tensor([3, 40, 100])
    images = target.gallery.images(own)
    named = torch.tensor([[40, 5], [5, 6], [7, 8]])
    reading = view.read(images, own, named, top=0, own_rank=True)
    assert reading.own.tolist() == [0, view.beyond, 0]
    assert reading.positions[0, 0] == view.beyond  # the missed named id, too
    exact = EvaluationView(make_oracle("local", target, "topk:5"), 5).read(
        images, own, named, own_rank=True)
    assert torch.equal(reading.positions[2], exact.positions[2])
    assert reading.positions[0, 1] == exact.positions[0, 1]
    # the own copy it does not rank is not counted ahead of the others (the exact view's is)
    assert torch.equal(reading.positions[1], exact.positions[1] + 1)


def test_a_shallow_endpoint_is_censored_at_its_depth_and_says_so(target):
    oracle = make_oracle("local", target, "topk:5")
    view = EvaluationView(Shallow(oracle, 20), 5)
    assert not view.full and view.beyond == 20
    own = torch.tensor([3, 40])
    images = target.gallery.images(own)
    whole = drop_own(oracle.search(images, len(target.gallery), False)[0], own, 718)
    reading = view.read(images, own, whole[:, [2, 18, 19, 500]], top=5, own_rank=True)
    # the 20 results shown hold the own copy and 19 others: #19 and #500 read "beyond"
    assert reading.positions.tolist() == [[2, 18, 20, 20]] * 2
    assert reading.own is None  # where the own copy sits is known only with exact ranks
    assert view.describe() == {"view": "top-20", "k": 5, "censored_at": 20,
                               "evaluation_queries": 2}
