"""The relative order attack (ORDER, advorder): Kendall's tau and advorder's SRC against
brute-force references, the selection, the figures, the SRC read from an oracle's ids, and
the white-box triplet-chain loss."""

from __future__ import annotations

import itertools

import pytest
import torch

from advrank.attacks import get_attack
from advrank.attacks.order import (
    OrderObjective,
    pair_agreement,
    short_range_correlation,
)
from advrank.core.gallery import Gallery
from advrank.core.index import build_index
from advrank.data import load_dataset
from advrank.errors import AdvrankError
from advrank.experiments.protocol import run_attack
from advrank.models import create_model
from advrank.oracles.base import Answer
from advrank.oracles.local import LocalOracle


@pytest.fixture(scope="module")
def digits_gallery():
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38]).eval()
    return model, Gallery.build(model, load_dataset("digits", "test"), "cosine")


def kendall_reference(order: list[int], listing: list[int]) -> float:
    """Kendall's tau of ``order`` (the target order of some ids) against their order in
    ``listing`` (a full ranking), pair by pair."""
    where = {c: listing.index(c) for c in order}
    pairs = list(itertools.combinations(order, 2))  # (a, b): a is to come first
    return sum((where[a] < where[b]) - (where[a] > where[b]) for a, b in pairs) / len(pairs)


def src_reference(order: list[int], visible: list[int]) -> float:
    """advorder's SRC as its loop reads it (lib/srckernel_py.py): a score matrix over the
    candidates, a row or column of -1 for a candidate out of the visible list, +1 / -1 for a
    concordant / discordant pair, summed over the strict lower triangle."""
    k = len(order)
    scores = [[0.0] * k for _ in range(k)]
    for i in range(k):
        if order[i] not in visible:
            scores[i] = [-1.0] * k
            continue
        for j in range(i):
            if order[j] not in visible:
                for row in scores:
                    row[j] = -1.0
                continue
            ci, cj = visible.index(order[i]), visible.index(order[j])
            scores[i][j] = 1.0 if ci > cj else -1.0  # i after j, as the target order wants
    return sum(scores[i][j] for i in range(k) for j in range(i)) / (k * (k - 1) / 2)


def test_tau_and_src_match_brute_force_references():
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        k = int(torch.randint(2, 7, (1,), generator=gen))
        depth = int(torch.randint(1, 12, (1,), generator=gen))
        listing = torch.randperm(20, generator=gen).tolist()  # a full ranking of ids 0..19
        order = torch.randperm(20, generator=gen)[:k].tolist()  # targets, in target order
        pos = torch.tensor([[listing.index(c) for c in order]])
        tau = pair_agreement(pos).item()
        src = pair_agreement(pos, pos < depth).item()
        assert tau == pytest.approx(kendall_reference(order, listing))
        assert src == pytest.approx(src_reference(order, listing[:depth]))
        assert src <= tau + 1e-9  # out of sight only ever counts against
    assert pair_agreement(torch.tensor([[0, 1, 2, 3]])).item() == 1.0
    assert pair_agreement(torch.tensor([[3, 2, 1, 0]])).item() == -1.0
    assert pair_agreement(torch.tensor([[1, 1]])).item() == 0.0  # a tie is neither
    with pytest.raises(AdvrankError, match="at least 2"):
        pair_agreement(torch.tensor([[0]]))


def test_src_from_answer_ids_drops_the_query_and_padding():
    """The ids-only score: q's own copy and the -1 padding are not positions."""
    ids = torch.tensor([[7, 3, 9, 5, -1, -1],  # q = 7 first, then 3, 9, 5
                        [3, 5, 8, 1, 2, 4]])   # 9 out of sight
    targets = torch.tensor([[3, 9, 5], [3, 9, 5]])
    exclude = torch.tensor([[7], [7]])
    src = short_range_correlation(Answer(ids), targets, exclude)
    assert src.tolist() == pytest.approx([1.0, src_reference([3, 9, 5], [3, 5, 8, 1, 2, 4])])
    assert src[1].item() == pytest.approx(-1 / 3)  # (3, 5) concordant, two pairs lost with 9


def test_selection_is_q_s_first_k_in_a_seeded_random_order(digits_gallery):
    _, gallery = digits_gallery
    kind = get_attack("ORDER")
    assert (kind.size_name, kind.headline, kind.direction, kind.query_only) == (
        "k", "tau", "up", True)
    sel = kind.select(gallery, 5, 30, 4)
    assert torch.equal(sel.targets, kind.select(gallery, 5, 30, 4).targets)
    assert not torch.equal(sel.targets, kind.select(gallery, 5, 30, 5).targets)
    d = gallery.distance.pairwise(gallery.embeddings[sel.anchors], gallery.embeddings)
    d[torch.arange(30), sel.anchors] = float("inf")  # q's own copy is not a candidate
    first = d.argsort(1)[:, :5]
    assert torch.equal(sel.targets.sort(1).values, first.sort(1).values)
    assert len({tuple(t) for t in (sel.targets.argsort(1)).tolist()}) > 5  # orders vary
    pooled = get_attack("ORDER", pool=10).select(gallery, 3, 30, 4)
    top10 = d.argsort(1)[:, :10]
    assert (pooled.targets[:, :, None] == top10[:, None, :]).any(-1).all()
    for k, pool, match in ((1, None, "at least 2"), (5, 3, "pool = 3")):
        with pytest.raises(AdvrankError, match=match):
            get_attack("ORDER", pool=pool).select(gallery, k, 4, 0)


def test_measure_by_brute_force(digits_gallery):
    _, gallery = digits_gallery
    kind = get_attack("ORDER", depth=4)
    sel = kind.select(gallery, 4, 6, 1)
    emb = gallery.embeddings[sel.anchors] + 0.5 * torch.randn(
        6, 16, generator=torch.Generator().manual_seed(2))
    m = kind.measure(gallery, sel, emb)
    d = gallery.distance.pairwise(emb, gallery.embeddings)
    for i, a in enumerate(sel.anchors.tolist()):
        row = d[i].clone()
        row[a] = float("inf")
        listing = row.argsort().tolist()[:-1]  # q's own copy left out
        order = sel.targets[i].tolist()
        positions = [listing.index(c) for c in order]
        assert m["tau"][i].item() == pytest.approx(kendall_reference(order, listing))
        assert m["src"][i].item() == pytest.approx(src_reference(order, listing[:4]))
        assert m["position"][i].item() == pytest.approx(sum(positions) / 4)
        assert m["rank"][i].item() == pytest.approx(100 * sum(positions) / 4 / len(gallery))


def test_the_ids_only_score_at_full_feedback_is_minus_the_measured_tau(digits_gallery):
    model, gallery = digits_gallery
    kind = get_attack("ORDER")
    sel = kind.select(gallery, 5, 8, 3)
    index = build_index(gallery.embeddings, "cosine", "exact")
    images = (gallery.images(sel.anchors) + 0.2 * torch.randn(
        8, 1, 8, 8, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        tau = kind.measure(gallery, sel, model(images))["tau"]
    asked = []
    score = kind.query_score(gallery, sel, LocalOracle(model, index, "full").feedback,
                             asked.append)
    answer = LocalOracle(model, index, "full").answer(images)
    assert (-score(answer, torch.arange(8))).tolist() == pytest.approx(tau.tolist())
    assert asked == []  # the SRC needs no further queries
    top = LocalOracle(model, index, "topk:10").answer(images)
    assert (-score(top, torch.arange(8)) <= tau + 1e-6).all()


def test_the_triplet_chain_loss_and_the_white_box_attack(digits_gallery):
    model, gallery = digits_gallery
    emb = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    targets = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1))
    loss = OrderObjective(targets, gallery.distance)(emb)
    d = gallery.distance.paired(emb[:, None, :], targets)
    for b in range(3):
        pairs = [max(0.0, (d[b, i] - d[b, j]).item()) for i, j in
                 itertools.combinations(range(4), 2)]
        assert loss[b].item() == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    ordered = targets.gather(1, d.argsort(1)[:, :, None].expand(-1, -1, 16))
    assert OrderObjective(ordered, gallery.distance)(emb).abs().max() < 1e-7  # order holds
    r = run_attack(model, gallery, "ORDER", 0.2, 4, 12, seed=0)
    assert r.figures["tau_after"] > r.figures["tau_before"] + 0.4, r.figures
