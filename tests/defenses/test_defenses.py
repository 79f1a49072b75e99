"""Adversarial-training defenses (§3.3) and the shift measurement they fight.

conftest.py runs torch on one thread; these timings (~15 s) assume it.
"""

from __future__ import annotations

import pytest
import torch

from advrank.attacks.es import shift_distance
from advrank.cli import main
from advrank.core.distances import get_distance
from advrank.data import dataset_spec, load_dataset
from advrank.defenses import (
    EmbeddingShiftDefense,
    MadryRankingDefense,
    TripletInversionObjective,
    default_defense_eps,
    make_defense,
)
from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.models.checkpoint import load_checkpoint
from advrank.training import TrainConfig, make_loss, train

COSINE = get_distance("cosine")


@pytest.fixture(scope="module")
def digits_train():
    return load_dataset("digits", "train")


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    info = dataset_spec("digits")
    return create_model("c2f1", (1, 8, 8), embed_dim=16, mean=info.mean, std=info.std)


def violated_fraction(emb: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of triplets (q, p, n) with d(q, p) >= d(q, n), q ranked against ``batch``."""
    obj = TripletInversionObjective(batch, labels, COSINE)
    d = COSINE.pairwise(emb, batch)
    bad = d[:, :, None] >= d[:, None, :]  # [q, p, n]
    pairs = obj.pos[:, :, None] & obj.neg[:, None, :]
    return (bad & pairs).sum().item() / pairs.sum().item()


@pytest.mark.parametrize("cls", [EmbeddingShiftDefense, MadryRankingDefense])
def test_defense_batches_stay_in_ball_and_leave_model_alone(cls, digits_train):
    images, labels = digits_train.images[:40], digits_train.labels[:40]
    assert images.min() == 0 and images.max() == 1  # the [0, 1] clamp is exercised
    clean = images.clone()
    model = tiny_model().train()
    defense = cls(0.2, steps=4, generator=torch.Generator().manual_seed(0))
    adv = defense(model, images, labels)
    assert adv.shape == images.shape
    assert torch.equal(images, clean)  # input not modified in place
    delta = (adv - images).abs()
    assert delta.max() <= 0.2 + 1e-6
    assert delta.max() > 0.1  # it did move
    assert adv.min() >= 0 and adv.max() <= 1
    assert model.training  # train mode restored
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert defense.eps == 0.2 and defense.describe()["steps"] == 4


def test_est_examples_shift_embeddings_more_than_noise(digits_train):
    images = digits_train.images[:64]
    model = tiny_model()
    adv = EmbeddingShiftDefense(0.1, steps=5, generator=torch.Generator().manual_seed(0))(
        model, images)
    noise = (images + 0.1 * (2 * torch.rand(images.shape) - 1)).clamp(0, 1)
    with torch.no_grad():
        ref = model(images)
        shift_adv = COSINE.paired(model(adv), ref).mean()
        shift_noise = COSINE.paired(model(noise), ref).mean()
    assert shift_adv > 2 * shift_noise


def test_madry_examples_invert_triplets(digits_train):
    images, labels = digits_train.images[:60], digits_train.labels[:60]
    model = tiny_model()
    with torch.no_grad():
        clean = model(images)
    adv = MadryRankingDefense(0.2, steps=10, generator=torch.Generator().manual_seed(0))(
        model, images, labels)
    with torch.no_grad():
        attacked = model(adv)
    before = violated_fraction(clean, clean, labels)
    after = violated_fraction(attacked, clean, labels)
    assert after > before + 0.2


def test_triplet_inversion_chunks_match_direct_autograd():
    torch.manual_seed(0)
    batch, labels = torch.randn(12, 5), torch.arange(12) % 3
    emb = torch.randn(12, 5, requires_grad=True)
    direct = TripletInversionObjective(batch, labels, COSINE)
    # 4 per class: 3 positives per row, so 72 elements hold 72 // (3 * 12) = 2 rows per chunk
    chunked = TripletInversionObjective(batch, labels, COSINE, max_elements=72)
    assert chunked.rows == 2
    loss = direct(emb)
    (grad,) = torch.autograd.grad(loss.sum(), emb)
    value, g = chunked.value_and_grad(emb)
    assert torch.allclose(value, loss.detach()) and torch.allclose(g, grad, atol=1e-6)
    assert (value > 0).all()


def test_est_steps_reduce_shift_distance(digits_train):
    """A few EST steps on a (briefly) trained model shrink the max-shift distance (Fig. 2)."""
    model = tiny_model()
    loss_fn = make_loss("triplet", COSINE, 0.2)
    test_images = load_dataset("digits", "test").images[:128]
    batches = torch.Generator().manual_seed(1)

    def steps(n: int, defense=None, lr: float = 1e-3) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(n):
            idx = torch.randint(0, len(digits_train), (64,), generator=batches)
            x, y = digits_train.images[idx], digits_train.labels[idx]
            if defense is not None:
                x = defense(model, x, y)
                model.train()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def mean_shift() -> float:
        gen = torch.Generator().manual_seed(2)
        return shift_distance(model, test_images, COSINE, 0.3, steps=5, generator=gen).mean()

    steps(30)  # vanilla warm-up: an untrained net barely moves at all
    before = mean_shift()
    torch.manual_seed(5)
    steps(10, EmbeddingShiftDefense(0.3, steps=5))
    after = mean_shift()
    assert after < 0.8 * before, (before, after)


def test_make_defense_defaults_and_errors():
    config = {"dataset": "digits", "metric": "euclidean"}
    est = make_defense("est", eps=None, **config)
    assert isinstance(est, EmbeddingShiftDefense)
    assert est.eps == default_defense_eps("digits") == 0.3
    assert est.describe() == {"defense": "est", "metric": "euclidean", "norm": "Linf",
                              "eps": 0.3, "step_size": 0.01, "steps": 30, "random_start": True}
    madry = make_defense("madry", eps=0.05, steps=3, step_size=0.02, **config)
    assert isinstance(madry, MadryRankingDefense)
    assert (madry.eps, madry.threat.eta, madry.threat.alpha) == (0.05, 3, 0.02)
    with pytest.raises(AdvrankError, match="unknown defense 'trades'.*est, madry"):
        make_defense("trades", **config)
    with pytest.raises(AdvrankError, match="eps"):
        make_defense("est", eps=0.0, **config)
    with pytest.raises(AdvrankError, match="labels"):
        madry(tiny_model(), torch.rand(4, 1, 8, 8))


def test_shift_distance_zero_at_zero_eps_and_grows(digits_train):
    model, images = tiny_model(), digits_train.images[:32]
    assert torch.equal(shift_distance(model, images, "cosine", 0.0), torch.zeros(32))
    gen = torch.Generator().manual_seed(0)
    small = shift_distance(model, images, "cosine", 0.02, steps=5, generator=gen)
    large = shift_distance(model, images, "cosine", 0.3, steps=5, generator=gen,
                           batch_size=10)  # several batches
    assert small.shape == large.shape == (32,)
    assert (small >= 0).all() and large.mean() > 3 * small.mean()


def test_checkpoint_records_defense(tmp_path):
    """The defense describes itself once; the trainer writes that into the checkpoint, also
    for a library user who passes only the defense object (no defense fields in the config)."""
    vanilla = train(TrainConfig(dataset="digits", epochs=1, embed_dim=16), tmp_path / "v.pt",
                    progress=False).meta
    defended = train(TrainConfig(dataset="digits", epochs=1, embed_dim=16), tmp_path / "d.pt",
                     defense=make_defense("est", eps=0.1, steps=3), progress=False).meta
    assert vanilla.defense is None and vanilla.defense_eps is None
    assert defended.defense == "est" and defended.defense_eps == 0.1
    assert defended.defense_config == {"defense": "est", "metric": "cosine", "norm": "Linf",
                                          "eps": 0.1, "step_size": 0.01, "steps": 3,
                                          "random_start": True}
    assert defended.epochs_done == 1 and defended.recall_at_1 > 30


def test_cli_train_with_madry_defense(tmp_path):
    out = tmp_path / "madry.pt"
    rc = main(["train", "--dataset", "digits", "--arch", "c2f1", "--epochs", "1",
               "--embed-dim", "16", "--defense", "madry", "--defense-eps", "0.02",
               "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0
    meta = load_checkpoint(out)["meta"]
    assert (meta["defense"], meta["defense_eps"]) == ("madry", 0.02)
