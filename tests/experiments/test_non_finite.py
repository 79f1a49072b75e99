"""NaN and infinity never become results: a model, attack or training step that produces them
stops with one readable AdvrankError (and nothing is written), instead of reporting a
"perfect" attack (a NaN embedding ranks nowhere) or R@1 = 100%."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrank.attacks import LinfThreatModel, shift_distance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset, load_dataset
from advrank.defenses import Defense
from advrank.errors import AdvrankError
from advrank.experiments.protocol import run_attack
from advrank.experiments.transfer import transfer_attack
from advrank.experiments.universal import universal_attack
from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint
from advrank.training import TrainConfig, train

META = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 8,
        "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]}


class Poisoned(nn.Module):
    """A model that embeds the clean gallery normally, then returns NaN once ``poisoned``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.poisoned = model, False

    def forward(self, x):
        emb = self.model(x)
        return emb * float("nan") if self.poisoned else emb


@pytest.fixture(scope="module")
def setup():
    digits = load_dataset("digits", "test")
    dataset = TensorImageDataset(digits.images[:80], digits.labels[:80], name="digits")
    torch.manual_seed(0)
    model = Poisoned(create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]).eval())
    gallery = Gallery.build(model, dataset, "cosine")
    model.poisoned = True
    return dataset, model, gallery


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("attack", ["CA+", "QA-"])
def test_attack_on_a_model_that_turns_nan_is_refused(setup, attack, steps):
    _, model, gallery = setup
    threat = LinfThreatModel(0.1, steps=steps)
    with pytest.raises(AdvrankError,
                       match="NaN or Infinity in the (adversarial images|embed|input gradient)"):
        run_attack(model, gallery, attack, 0.1, 1, 5, threat=threat)


def test_transfer_universal_and_shift_refuse_nan(setup):
    dataset, model, gallery = setup
    torch.manual_seed(1)
    healthy = create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]).eval()
    healthy_gallery = Gallery.build(healthy, dataset, "cosine")
    with pytest.raises(AdvrankError, match="NaN or Infinity"):  # the target turns NaN
        transfer_attack(healthy, model, dataset, "CA+", 0.1, num_attacks=4,
                        threat=LinfThreatModel(0.1, steps=1), source_gallery=healthy_gallery,
                        target_gallery=gallery)
    with pytest.raises(AdvrankError, match="NaN or Infinity"):
        universal_attack(model, gallery, "CA+", 0.1, steps=1, fraction=0.1)
    with pytest.raises(AdvrankError, match="NaN or Infinity"):
        shift_distance(model, dataset.images[:4], "cosine", 0.1, steps=1, seed=0)


class NanBackward(torch.autograd.Function):
    """Identity forward, NaN gradient: the forward (and so every embedding) stays finite."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class NanGradient(nn.Module):
    """A model whose embeddings are finite but whose input gradient is NaN (issue 22: sign(NaN)
    is 0, so PGD never moved and the report said "perfectly robust")."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(NanBackward.apply(x))


@pytest.fixture(scope="module")
def nan_gradient(setup):
    dataset, _, _ = setup
    torch.manual_seed(0)
    model = NanGradient(create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]).eval())
    return dataset, model, Gallery.build(model, dataset, "cosine")


@pytest.mark.parametrize("attack", ["CA+", "QA-", "TMA"])
def test_a_nan_input_gradient_is_an_error_not_robust(nan_gradient, attack):
    _, model, gallery = nan_gradient
    with pytest.raises(AdvrankError, match="NaN or Infinity in the input gradient"):
        run_attack(model, gallery, attack, 0.1, 1, 5, threat=LinfThreatModel(0.1, steps=2))


def test_universal_and_shift_refuse_a_nan_input_gradient(nan_gradient):
    dataset, model, gallery = nan_gradient
    with pytest.raises(AdvrankError, match="NaN or Infinity in the input gradient"):
        universal_attack(model, gallery, "CA+", 0.1, steps=1, fraction=0.1)
    with pytest.raises(AdvrankError, match="NaN or Infinity in the input gradient"):
        shift_distance(model, dataset.images[:4], "cosine", 0.1, steps=1, seed=0)


def test_overflowing_checkpoint_is_refused_not_scored_100(tmp_path, cli, one_error_line):
    """Finite weights whose embeddings overflow to infinity: one error line, not R@1 100%."""
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38])
    with torch.no_grad():
        model.backbone[1].weight.fill_(1e37)
    path = tmp_path / "overflow.pt"
    save_checkpoint(path, model, META)
    for argv in (["evaluate", "--checkpoint", path, "--json"],
                 ["attack", "--checkpoint", path, "--attack", "CA+", "--eps", "0.1",
                  "--num-attacks", "3", "--steps", "1", "--json"]):
        line = one_error_line(*cli([*argv, "--device", "cpu", "--quiet"]))
        assert "NaN or Infinity" in line


class NaNLoss(Defense):
    name = "nan-loss"

    def training_loss(self, model, images, labels, criterion):
        emb = model(images)
        return criterion(emb, labels) * float("nan"), emb


def test_training_that_diverges_stops_and_keeps_the_last_good_epoch(tmp_path):
    out = tmp_path / "m.pt"
    config = TrainConfig(dataset="digits", arch="c2f1", embed_dim=8, epochs=1, device="cpu")
    train(config, out, progress=False)
    before = out.read_bytes()
    config.epochs = 2
    with pytest.raises(AdvrankError, match="training diverged"):
        train(config, out, defense=NaNLoss(), progress=False, force=True)
    assert out.read_bytes() == before  # the last good checkpoint stays, never a NaN one
    with pytest.raises(AdvrankError, match="NaN or Infinity in weight"):
        broken = create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38])
        with torch.no_grad():
            broken.backbone[1].bias.fill_(float("nan"))
        save_checkpoint(tmp_path / "broken.pt", broken, META)
    assert not (tmp_path / "broken.pt").exists()
