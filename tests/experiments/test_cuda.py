"""The same jobs on CUDA as on CPU. Skipped where there is no GPU (CI has none)."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.attacks import get_attack
from advrank.cli import main
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.data import load_dataset
from advrank.defenses import make_defense
from advrank.experiments.protocol import run_attack
from advrank.models import create_model
from advrank.models.checkpoint import model_from_checkpoint
from advrank.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


def _gallery(device: str, dataset) -> tuple[torch.nn.Module, Gallery]:
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 32, (0.3,), (0.38,)).to(device).eval()
    return model, Gallery.build(model, dataset, get_distance("cosine"), device)


@pytest.mark.parametrize("attack", ["CA+", "CA-", "QA+", "QA-"])
def test_attack_on_cuda_matches_cpu(digits_test, attack):
    """Clean ranks agree exactly; attacked ranks agree up to float noise in sign(grad) ties."""
    results = {}
    for device in ("cpu", "cuda"):
        model, gallery = _gallery(device, digits_test)
        sel = get_attack(attack).select(gallery, 2, 64, seed=1)
        results[device] = run_attack(model, gallery, attack, 0.1, 2, 64, selection=sel,
                                     batch_size=16)
    cpu, gpu = results["cpu"].summary(), results["cuda"].summary()
    assert gpu["rank_before"] == pytest.approx(cpu["rank_before"], abs=0.3)
    assert gpu["rank_after"] == pytest.approx(cpu["rank_after"], abs=3.0)
    moved = gpu["rank_after"] - gpu["rank_before"]
    assert moved < 0 if get_attack(attack).direction == "down" else moved > 0


def test_defended_training_on_cuda_loads_on_cpu(tmp_path):
    config = TrainConfig(dataset="digits", epochs=1, embed_dim=16, device="cuda")
    result = train(config, tmp_path / "est.pt", defense=make_defense("est", eps=0.1, steps=3),
                   progress=False)
    model, meta = model_from_checkpoint(result.checkpoint, "cpu")
    assert meta["defense"] == "est" and meta["recall@1"] > 50
    assert next(model.parameters()).device.type == "cpu"


def test_cli_attack_with_device_cuda(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--dataset", "digits", "--arch", "c2f1", "--epochs", "1",
                 "--embed-dim", "16", "--device", "cuda", "--out", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["attack", "--checkpoint", str(ckpt), "--attack", "QA-", "--eps", "0.1",
                 "--m", "1", "--num-attacks", "32", "--device", "cuda", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_attacks"] == 32 and out["rank_after"] > out["rank_before"]
