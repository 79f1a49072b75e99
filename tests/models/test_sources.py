"""Model sources: timm, torchvision, open_clip, TorchScript and python factories as embedders
with their own preprocessing; weights loaded safely and checked against the architecture."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from advrank.errors import AdvrankError
from advrank.models.sources import SourceOptions, load_source_model
from advrank.models.weights import state_fingerprint
from advrank.registry import MODEL_SOURCES

QUIET = {"log": lambda msg: None}
FACTORY = '''
import torch
from torch import nn

class Tiny(nn.Module):
    """A user's own embedder: conv, pooling, linear; with its preprocessing."""
    data_config = {"input_size": (3, 20, 20), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                   "crop_pct": 1.0}

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

def build():
    return Tiny()

def broken():
    raise ValueError("no such thing")

def not_a_module():
    return 3
'''


def write_factory(tmp_path):
    path = tmp_path / "user_nets.py"
    path.write_text(textwrap.dedent(FACTORY))
    return path


def test_sources_are_registered():
    assert MODEL_SOURCES.names()[:5] == ["timm", "torchvision", "open_clip", "torchscript",
                                         "python"]


@pytest.mark.parametrize("spec, dim", [("timm:test_vit", 64), ("timm:resnet10t", 512)])
def test_timm_random_weights_are_seeded_and_carry_preprocessing(spec, dim):
    model, info = load_source_model(spec, SourceOptions(input_size=32), **QUIET)
    again, _ = load_source_model(spec, SourceOptions(input_size=32), **QUIET)
    assert state_fingerprint(model) == state_fingerprint(again)  # same random weights
    assert model.image_shape == (3, 32, 32) and model.embed_dim == dim == info["embed_dim"]
    assert info["random_weights"] and info["library"].startswith("timm ")
    import timm

    cfg = timm.data.resolve_data_config({}, model=timm.create_model(spec[5:], num_classes=0))
    assert info["mean"] == pytest.approx(cfg["mean"]) and info["std"] == pytest.approx(cfg["std"])
    assert info["geometry"]["crop_pct"] == pytest.approx(cfg["crop_pct"])
    x = torch.rand(2, 3, 32, 32)
    # normalisation is inside: the embedder equals the network on normalised pixels
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - mean) / std), atol=1e-5)


def test_timm_layer_and_projection():
    model, info = load_source_model("timm:resnet10t", SourceOptions(input_size=32,
                                                                    layer="layer2"), **QUIET)
    assert info["feature_dim"] == 128 and model(torch.rand(1, 3, 32, 32)).shape == (1, 128)
    model, info = load_source_model("timm:resnet10t", SourceOptions(input_size=32, embed_dim=7),
                                    **QUIET)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7) and info["projection"] == "random"
    with pytest.raises(AdvrankError, match="has no layer 'layer9'.*layers are named like"):
        load_source_model("timm:resnet10t", SourceOptions(input_size=32, layer="layer9"), **QUIET)


def test_torchvision_weights_from_safetensors_and_pt(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(5)
    reference = resnet18(num_classes=10)  # a classifier head the embedder ignores
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "r18.pt")
    notes = []
    model, info = load_source_model("torchvision:resnet18", SourceOptions(
        weights=str(tmp_path / "r18.safetensors"), input_size=32), log=notes.append)
    assert not info["random_weights"] and info["weights_sha"] and info["embed_dim"] == 512
    assert any("ignored 2 tensors of the removed fc" in n for n in notes)
    reference.fc = nn.Identity()
    reference.eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-5)
    from_pt, _ = load_source_model("torchvision:resnet18", SourceOptions(
        weights=str(tmp_path / "r18.pt"), input_size=32), **QUIET)
    assert state_fingerprint(from_pt) == state_fingerprint(model)
    # torchvision publishes resize 256 / crop 224 for resnet18
    _, info = load_source_model("torchvision:resnet18", **QUIET)
    assert info["geometry"]["input_size"] == [3, 224, 224]
    assert info["geometry"]["crop_pct"] == pytest.approx(224 / 256)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from torchvision.models import resnet34

    torch.save(resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(AdvrankError,
                       match="do not fit torchvision:resnet18.*it does not have.*no layer1.2"):
        load_source_model("torchvision:resnet18", SourceOptions(
            weights=str(tmp_path / "r34.pt"), input_size=32), **QUIET)
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(AdvrankError, match="another shape.*conv1.weight"):
        load_source_model("torchvision:resnet18", SourceOptions(
            weights=str(tmp_path / "bad.pt"), input_size=32), **QUIET)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdvrankError, match="not a readable weights file"):
        load_source_model("torchvision:resnet18", SourceOptions(
            weights=str(tmp_path / "junk.safetensors"), input_size=32), **QUIET)


def test_embedder_state_round_trip_with_projection(tmp_path):
    model, _ = load_source_model("timm:resnet10t", SourceOptions(input_size=32, embed_dim=5),
                                 **QUIET)
    with torch.no_grad():
        model.projection.weight.mul_(3.0)  # "fine-tuned": differs from the seeded init
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "emb.safetensors"))
    loaded, info = load_source_model("timm:resnet10t", SourceOptions(
        input_size=32, embed_dim=5, weights=str(tmp_path / "emb.safetensors")), **QUIET)
    assert info["projection"] == "loaded"
    assert state_fingerprint(loaded) == state_fingerprint(model)


def test_torchscript_file(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.jit.save(torch.jit.script(net), str(tmp_path / "net.ts"))
    model, info = load_source_model(f"torchscript:{tmp_path / 'net.ts'}", SourceOptions(
        input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), **QUIET)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-6)
    assert info["embed_dim"] == 4 and info["geometry"]["input_size"] == [3, 16, 16]
    (tmp_path / "junk.ts").write_bytes(b"junk")
    with pytest.raises(AdvrankError, match="not a loadable TorchScript file"):
        load_source_model(f"torchscript:{tmp_path / 'junk.ts'}", **QUIET)
    with pytest.raises(AdvrankError, match="--layer is not available for torchscript"):
        load_source_model(f"torchscript:{tmp_path / 'net.ts'}", SourceOptions(layer="0"),
                          **QUIET)


def test_python_factory_from_file_and_module(tmp_path, monkeypatch):
    path = write_factory(tmp_path)
    model, info = load_source_model(f"python:{path}:build", **QUIET)
    assert model.image_shape == (3, 20, 20) and info["mean"] == [0.5] * 3
    assert info["geometry"]["crop_pct"] == 1.0 and model.embed_dim == 6
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module, _ = load_source_model("python:user_nets:build", **QUIET)
    assert state_fingerprint(by_module) == state_fingerprint(model)  # same seeded init
    for spec, message in [(f"python:{path}:broken", "build|broken.*raised ValueError"),
                          (f"python:{path}:not_a_module", "returned int, not a torch.nn.Module"),
                          (f"python:{path}:missing", "has no callable 'missing'"),
                          ("python:no_such_module_xyz:build", "cannot import"),
                          ("python:build", "expected python:MODULE:FACTORY")]:
        with pytest.raises(AdvrankError, match=message):
            load_source_model(spec, **QUIET)


@pytest.mark.parametrize("spec, message", [
    ("keras:resnet", "unknown model source 'keras'; choose one of: timm, torchvision"),
    ("timm", "needs an argument: timm:NAME"),
    ("timm:resnet10", "timm has no model 'resnet10'; did you mean"),
    ("torchvision:resnet19", "torchvision has no model 'resnet19'"),
])
def test_bad_source_names(spec, message):
    with pytest.raises(AdvrankError, match=message):
        load_source_model(spec, **QUIET)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                    reason="open_clip_torch is not installed (pip install 'advrank[zoo]')")
def test_open_clip_image_tower_with_clip_checkpoint(tmp_path):
    import open_clip

    clip = open_clip.create_model("RN50", pretrained=None, force_image_size=64)
    # a CLIP checkpoint's layout: the image tower under visual.*, beside text-tower tensors
    # (only two of them here, to keep the file small)
    state = {k: v for k, v in clip.state_dict().items()
             if k.startswith("visual.") or k in ("text_projection", "logit_scale")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    model, info = load_source_model("open_clip:RN50", SourceOptions(
        weights=str(tmp_path / "clip.safetensors"), input_size=64), **QUIET)
    assert info["embed_dim"] == 1024 and info["mean"][0] == pytest.approx(0.48145466)
    clip.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = clip.encode_image((x - model.normalize.mean) / model.normalize.std)
        assert torch.allclose(model(x), expected, atol=1e-4)
