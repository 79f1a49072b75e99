"""ACT (robrank's anti-collapse triplet training): mining, the collapse attack, and the training
step's effect on the adversarial triplet margin."""

from __future__ import annotations

import pytest
import torch

from advrank.core.distances import get_distance
from advrank.defenses import (
    AntiCollapseDefense,
    PairCollapseObjective,
    make_defense,
    mine_triplets,
)
from advrank.errors import AdvrankError
from advrank.training import make_loss

COSINE = get_distance("cosine")



def test_mined_triplets_are_valid_distinct_and_seeded():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 0, 2])
    anc, pos, neg = mine_triplets(labels, 5, torch.Generator().manual_seed(0))
    assert anc.numel() == 5 and len(set(anc.tolist())) == 5
    assert (labels[anc] == labels[pos]).all() and (anc != pos).all()
    assert (labels[anc] != labels[neg]).all()
    again = mine_triplets(labels, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((anc, pos, neg), again, strict=True))
    # a member without a same-class partner never anchors
    lone = torch.tensor([0, 0, 1, 2])
    a, p, n = mine_triplets(lone, 4, torch.Generator().manual_seed(0))
    assert sorted(a.tolist()) == [0, 1] and set(p.tolist()) == {0, 1}
    with pytest.raises(AdvrankError, match="two members of one class"):
        mine_triplets(torch.tensor([0, 1, 2]), 1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pair_collapse_objective_matches_brute_force(metric):
    dist = get_distance(metric)
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss, grad = PairCollapseObjective(dist).value_and_grad(emb)
    e = emb.clone().requires_grad_(True)
    brute = sum(dist.paired(e[i], e[i + 3]) for i in range(3))
    (ref,) = torch.autograd.grad(brute, e)
    assert torch.allclose(grad, ref)
    assert loss[:3].tolist() == pytest.approx([dist.paired(emb[i], emb[i + 3]).item()
                                               for i in range(3)])
    assert torch.equal(loss[:3], loss[3:])


def test_collapse_stays_in_the_ball_and_pulls_pairs_together(batch, tiny_model):
    images, _ = batch
    model = tiny_model().eval()
    act = AntiCollapseDefense(0.2, steps=5, step_size=0.05)
    p, n = images[:10], images[10:20]
    adv_p, adv_n = act.collapse(model, p, n)
    for clean, adv in ((p, adv_p), (n, adv_n)):
        assert (adv - clean).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before = COSINE.paired(model(p), model(n))
        after = COSINE.paired(model(adv_p), model(adv_n))
    assert (after < before).float().mean() > 0.9
    assert not any(q.grad is not None for q in model.parameters())


def _margin(model, images, anc, adv_p, adv_n) -> float:
    """Mean d(a, n~) - d(a, p~) over the adversarial triplets (larger = further apart)."""
    with torch.no_grad():
        a = model(images[anc])
        return (COSINE.paired(a, model(adv_n)) - COSINE.paired(a, model(adv_p))).mean().item()


def test_act_steps_widen_the_adversarial_triplet_margin(batch, tiny_model):
    images, labels = batch
    model = tiny_model(1)
    act = make_defense("act", eps=0.3, steps=5, step_size=0.1, metric="cosine")
    assert act.describe()["random_start"] is False and act.describe()["steps"] == 5
    loss_fn = make_loss("triplet", COSINE, 0.2)
    anc, pos, neg = mine_triplets(labels, 30, torch.Generator().manual_seed(0))
    adv_p, adv_n = act.collapse(model, images[pos], images[neg])
    before = _margin(model, images, anc, adv_p, adv_n)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        act.generator = torch.Generator().manual_seed(0)  # the same triplets every step
        loss, emb = act.training_loss(model, images, labels, loss_fn)
        assert emb.shape == (60, 16) and loss.requires_grad
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = _margin(model, images, anc, adv_p, adv_n)
    assert after > before + 0.01  # the collapsed triplets are pushed apart
    assert losses[-1] < losses[0]
    fresh_p, fresh_n = act.collapse(model, images[pos], images[neg])
    assert _margin(model, images, anc, fresh_p, fresh_n) > before  # a new attack, too


def test_act_refuses_losses_without_triplets(batch, tiny_model):
    images, labels = batch
    act = make_defense("act", eps=0.3, steps=1, metric="cosine")
    with pytest.raises(AdvrankError, match="pytorch-metric-learning loss"):
        act.training_loss(tiny_model(), images, labels, make_loss("siamese", COSINE, 0.2))
    with pytest.raises(AdvrankError, match="needs the batch labels"):
        act.training_loss(tiny_model(), images, None, make_loss("triplet", COSINE, 0.2))
