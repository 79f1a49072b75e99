"""HM (hardness manipulation with the gradual adversary) and HM & ICS: mining, the ET objective,
the destination schedule, and short training runs on digits."""

from __future__ import annotations

import pytest
import torch

from advrank.core.distances import get_distance
from advrank.defenses import make_defense
from advrank.defenses.hm import (
    HardnessObjective,
    gradual_destination,
    hardness,
    mine_soft_hard,
)
from advrank.errors import AdvrankError
from advrank.training import make_loss

COSINE = get_distance("cosine")



def test_gradual_destination_schedule():
    assert gradual_destination(5.0, 0.2) == pytest.approx(-0.2)
    assert gradual_destination(0.1, 0.2) == pytest.approx(-0.1)
    assert gradual_destination(0.0, 0.2) == 0.0 and gradual_destination(-1.0, 0.2) == 0.0


def test_soft_hard_mining_is_valid_and_prefers_hard_members():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # anchor 0's far positive is 2, near negative is 3
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.1],
                        [-1.0, -0.1]])
    hits = torch.zeros(2)
    for _ in range(50):
        anc, pos, neg = mine_soft_hard(emb, labels, COSINE, 6, g)
        assert (labels[anc] == labels[pos]).all() and (anc != pos).all()
        assert (labels[anc] != labels[neg]).all() and len(set(anc.tolist())) == 6
        i = (anc == 0).nonzero()[0, 0]
        hits += torch.tensor([float(pos[i] == 2), float(neg[i] == 3)])
    assert (hits > 40).all()
    with pytest.raises(AdvrankError, match="two members of one class"):
        mine_soft_hard(emb[:3], torch.tensor([0, 1, 2]), COSINE, 1)


def test_et_objective_gradient_and_zero_for_hard_triplets():
    emb = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = hardness(COSINE, emb)
    objective = HardnessObjective(COSINE, float(h.max()) + 0.1)
    loss, grad = objective.value_and_grad(emb)
    e = emb.clone().requires_grad_(True)
    a, p, n = e[:3], e[3:6], e[6:]
    brute = ((float(h.max()) + 0.1 - (COSINE.paired(a, p) - COSINE.paired(a, n))) ** 2).sum()
    (ref,) = torch.autograd.grad(brute, e)
    assert torch.allclose(grad, ref) and loss.shape == (9,)
    easy = HardnessObjective(COSINE, float(h.min()) - 0.1)
    assert easy.value_and_grad(emb)[1].abs().max() == 0


def test_manipulated_triplets_are_harder_and_in_the_ball(batch, tiny_model):
    images, labels = batch
    model = tiny_model().eval()
    hm = make_defense("hm", eps=0.2, steps=5, step_size=0.05)
    with torch.no_grad():
        emb = model(images)
    anc, pos, neg = mine_soft_hard(emb, labels, COSINE, 20, torch.Generator().manual_seed(0))
    clean = images[torch.cat([anc, pos, neg])]
    hm.previous_loss = 0.0  # destination H = 0: as hard as the positive equals the negative
    adv = hm.manipulate(model, clean, 0.2)
    assert (adv - clean).abs().max() <= 0.2 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before, after = hardness(COSINE, model(clean)), hardness(COSINE, model(adv))
    assert after.mean() > before.mean() + 0.05
    assert (after >= before - 1e-4).float().mean() > 0.9
    assert not any(q.grad is not None for q in model.parameters())


@pytest.mark.parametrize("name", ["hm", "hm-ics"])
def test_hm_training_lowers_the_adversarial_loss(batch, name, tiny_model):
    images, labels = batch
    model = tiny_model()
    criterion = make_loss("triplet", COSINE, 0.2)
    defense = make_defense(name, eps=0.1, steps=3, step_size=0.04,
                           generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = []
    for _ in range(25):
        loss, emb = defense.training_loss(model, images, labels, criterion)
        assert torch.isfinite(loss) and emb.shape == (60, 16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(defense.previous_loss)
    # the gradual adversary's loss falls as the model learns to separate the hard triplets
    assert sum(seen[-5:]) / 5 < sum(seen[:5]) / 5
    desc = defense.describe()
    assert desc["defense"] == name and desc["ics_weight"] == (0.5 if name == "hm-ics" else 0.0)


def test_hm_refuses_a_loss_without_triplets(batch, tiny_model):
    images, labels = batch
    with pytest.raises(AdvrankError, match="margin"):
        make_defense("hm", eps=0.1, steps=1).training_loss(
            tiny_model(), images, labels, lambda e, y: e.sum())
