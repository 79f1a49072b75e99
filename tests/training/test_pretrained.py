"""``train --pretrained``: the built-in ResNets start from torchvision's published weights,
read from the torch hub cache with the network off; end to end on generated CUB/Cars trees."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from advrank.core.io import file_sha256
from advrank.errors import AdvrankError
from advrank.models.checkpoint import load_checkpoint
from advrank.models.pretrained import hub_checkpoint_path
from advrank.training import TrainConfig
from advrank.training.trainer import _build


def _benchmark_trees():
    """tests/data/test_benchmarks.py's tree generators (tests are not a package)."""
    path = Path(__file__).resolve().parents[1] / "data" / "test_benchmarks.py"
    spec = importlib.util.spec_from_file_location("advrank_test_benchmarks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_loads_the_cached_imagenet_backbone(offline_caches):
    state = offline_caches.put_torchvision("resnet18")
    config = TrainConfig(dataset="sop", arch="resnet18", pretrained="DEFAULT", embed_dim=16)
    config.validate()
    _, model, meta = _build(config, None, None)
    own = model.backbone.state_dict()
    loaded = [k for k in own if k in state and own[k].shape == state[k].shape]
    assert len(loaded) == len(own) - 2  # all but the new embedding head fc.weight, fc.bias
    assert all(torch.equal(own[k], state[k]) for k in loaded)
    assert meta["pretrained"] == "DEFAULT"
    url = __import__("torchvision").models.ResNet18_Weights.DEFAULT.url
    assert meta["weights"] == file_sha256(hub_checkpoint_path(url), 16)


@pytest.mark.parametrize("config, fragment", [
    (dict(arch="c2f1"), "c2f1 has no published pretrained weights"),
    (dict(arch="resnet18", weights=__file__), "not both"),
    (dict(arch=None), "needs --arch"),
])
def test_pretrained_refusals(config, fragment):
    with pytest.raises(AdvrankError, match=fragment):
        TrainConfig(dataset="digits", pretrained="DEFAULT", **config).validate()


@pytest.mark.parametrize("dataset, make", [("cub", "make_cub"), ("cars", "make_cars")])
def test_train_resnet18_pretrained_end_to_end(offline_caches, tmp_path, cli, dataset, make):
    offline_caches.put_torchvision("resnet18")
    root = getattr(_benchmark_trees(), make)(tmp_path / "data")
    out = tmp_path / "model.pt"
    status, stdout, err = cli(["train", "--dataset", dataset, "--arch", "resnet18",
                               "--pretrained", "--epochs", "1", "--batch-size", "4",
                               "--embed-dim", "8", "--data-root", root, "--out", out,
                               "--device", "cpu", "--json", "--quiet"])
    assert status == 0, err
    record = json.loads(stdout)
    assert record["epochs"] == 1 and 0 <= record["recall@1"] <= 100
    meta = load_checkpoint(out)["meta"]
    assert meta["pretrained"] == "DEFAULT" and meta["arch"] == "resnet18"
    assert meta["weights"] == file_sha256(next(offline_caches.torch_hub.rglob("*.pth")), 16)
