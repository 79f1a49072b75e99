"""Pretrained weights from a file (``train --weights``): safe loading of state_dicts and
.safetensors, matching by name and shape, refusal of weights of another architecture."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.models.weights import load_matching_weights, load_pretrained, read_state_dict
from advrank.training import TrainConfig, train


def _imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    """What a torchvision ImageNet ResNet-18 file holds (random values): a 1000-class head."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    return resnet18(weights=None).state_dict()


@pytest.mark.parametrize("fmt", ["pt", "nested-pt", "safetensors"])
def test_resnet18_takes_imagenet_weights_except_its_new_head(tmp_path, fmt):
    state = _imagenet_resnet18_state()
    path = tmp_path / f"w.{fmt.split('-')[-1]}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state} if fmt == "nested-pt" else state, path)
    model = create_model("resnet18", (3, 64, 64), embed_dim=32)
    kept = load_pretrained(model.backbone, path, quiet=True)
    assert kept == ["fc.weight", "fc.bias"]  # the embedding head is new
    own = model.backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(own[key], state[key])


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "c2f1.pt"
    torch.save(create_model("c2f1", (1, 8, 8), 16).backbone.state_dict(), path)
    model = create_model("resnet18", (3, 64, 64), embed_dim=32)
    with pytest.raises(AdvrankError, match="do not fit this architecture"):
        load_pretrained(model.backbone, path, quiet=True)


def test_unsafe_or_broken_files_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("executed",))

    bad = tmp_path / "payload.pt"
    torch.save({"conv.weight": Payload()}, bad)
    with pytest.raises(AdvrankError, match="nothing in it was executed"):
        read_state_dict(bad)
    assert not marker.exists()
    nan = tmp_path / "nan.pt"
    torch.save({"w": torch.tensor([float("nan")])}, nan)
    with pytest.raises(AdvrankError, match="NaN"):
        read_state_dict(nan)
    with pytest.raises(AdvrankError, match="does not exist"):
        read_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(AdvrankError, match="not a readable weights file"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(AdvrankError, match="does not hold a state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_train_starts_from_the_given_weights(tmp_path):
    torch.manual_seed(11)
    source = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38])
    path = tmp_path / "start.safetensors"
    save_file(source.backbone.state_dict(), str(path))
    result = train(TrainConfig(dataset="digits", arch="c2f1", embed_dim=16, epochs=1, lr=1e-12,
                               device="cpu", weights=str(path)), tmp_path / "m.pt",
                   progress=False)
    trained = torch.load(tmp_path / "m.pt", weights_only=True)["model"]
    for key, value in source.backbone.state_dict().items():
        torch.testing.assert_close(trained[f"backbone.{key}"], value, atol=1e-6, rtol=0)
    assert len(result.meta.weights) == 16  # the file's content hash is recorded


def test_load_matching_weights_reports_what_it_kept():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.ones(3, 4), "0.bias": torch.zeros(3), "1.weight": torch.ones(5, 3)}
    kept = load_matching_weights(model, state, "test", min_fraction=0.5)
    assert kept == ["1.weight", "1.bias"] and torch.equal(model[0].weight, torch.ones(3, 4))
