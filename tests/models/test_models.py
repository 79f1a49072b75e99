"""Model registry: output shapes per dataset shape, embed_dim, normalisation inside the model."""

from __future__ import annotations

import pytest
import torch

from advrank.data import dataset_spec
from advrank.errors import AdvrankError
from advrank.models import Normalize, create_model, default_embed_dim, model_names

SMALL_SHAPES = [(1, 8, 8), (1, 28, 28)]


def _embed(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_registry():
    assert set(model_names()) >= {"c2f1", "lenet", "resnet18", "resnet50"}
    assert {n: default_embed_dim(n) for n in ("c2f1", "lenet", "resnet18", "resnet50")} == {
        "c2f1": 1024, "lenet": 128, "resnet18": 512, "resnet50": 512}


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", ["c2f1", "lenet", "resnet18"])
def test_output_shape_small_images(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, shape, embed_dim=16)
    out = _embed(model, torch.rand(3, *shape))
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()
    assert model.embed_dim == 16 and model.image_shape == shape
    assert not torch.allclose(out[0], out[1])  # different images, different embeddings


@pytest.mark.parametrize("arch", ["c2f1", "lenet", "resnet18"])
def test_default_and_custom_embed_dim(arch):
    shape = (1, 8, 8)
    assert create_model(arch, shape).embed_dim == default_embed_dim(arch)
    assert _embed(create_model(arch, shape), torch.rand(2, *shape)).shape == (
        2, default_embed_dim(arch))
    assert _embed(create_model(arch, shape, embed_dim=7), torch.rand(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "c2f1"])
def test_output_shape_sop_images(arch):
    info = dataset_spec("sop")
    model = create_model(arch, info.image_shape, embed_dim=16, mean=info.mean, std=info.std)
    out = _embed(model, torch.rand(2, *info.image_shape))
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_input_gradient_flows():
    """The attacks differentiate the embedding with respect to the [0, 1] image."""
    model = create_model("c2f1", (1, 8, 8), embed_dim=16).eval()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    model(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dataset", ["mnist", "sop"])
def test_normalisation_inside_model(dataset):
    info = dataset_spec(dataset)
    shape = (info.image_shape[0], 32, 32)  # same channels, small for speed
    torch.manual_seed(0)
    normed = create_model("c2f1", shape, embed_dim=8, mean=info.mean, std=info.std)
    plain = create_model("c2f1", shape, embed_dim=8)  # defaults to no normalisation
    plain.backbone.load_state_dict(normed.backbone.state_dict())
    x = torch.rand(4, *shape)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    torch.testing.assert_close(_embed(normed, x), _embed(plain, (x - mean) / std))
    torch.testing.assert_close(_embed(plain, x), _embed(plain.backbone, x))  # identity norm
    assert not torch.allclose(_embed(normed, x), _embed(plain, x))
    # the constants travel in the state dict (so checkpoints keep them)
    assert torch.equal(normed.state_dict()["normalize.mean"].flatten(), mean.flatten())


def test_normalize_per_channel():
    norm = Normalize((0.5, 0.25, 0.0), (0.5, 2.0, 1.0))
    x = torch.tensor([1.0, 0.25, 0.3]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = norm(x)
    assert out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[1.0, 0.0, 0.3]] * 2))


def test_bad_arguments():
    with pytest.raises(AdvrankError, match="unknown model 'vgg'.*c2f1"):
        create_model("vgg", (1, 28, 28))
    with pytest.raises(AdvrankError, match="image_shape"):
        create_model("c2f1", (28, 28))
    with pytest.raises(AdvrankError, match="embed_dim"):
        create_model("c2f1", (1, 8, 8), embed_dim=-3)


def test_resnet50_is_torchvision_resnet50_with_an_embedding_head():
    """robrank's rres50 backbone: every tensor of torchvision's ResNet-50 but the classifier,
    which becomes a 2048 -> D linear head; the ImageNet stem at 224 px."""
    from torchvision.models import resnet50

    model = create_model("resnet50", (3, 224, 224), embed_dim=32)
    own, tv = model.backbone.state_dict(), resnet50(weights=None).state_dict()
    assert {k: v.shape for k, v in own.items() if not k.startswith("fc.")} == {
        k: v.shape for k, v in tv.items() if not k.startswith("fc.")}
    assert own["fc.weight"].shape == (32, 2048) and own["conv1.weight"].shape == (64, 3, 7, 7)
