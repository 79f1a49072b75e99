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
    assert meta.defense == "est" and meta.recall_at_1 > 50
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


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("attack", ["CA+", "QA+"])
def test_reduced_precisions_on_cuda(digits_test, attack, precision):
    """bf16 products with fp32 output (cuBLAS), TF32, bf16 autocast: the attack works as well
    and the ranks are measured exactly (the clean figures equal fp32's)."""
    from advrank.core.execution import _MM_DTYPE_OK, ExecutionPolicy

    model, gallery = _gallery("cuda", digits_test)
    sel = get_attack(attack).select(gallery, 2, 64, seed=1)
    ref = run_attack(model, gallery, attack, 0.1, 2, 64, selection=sel, batch_size=16).summary()
    low = run_attack(model, gallery, attack, 0.1, 2, 64, selection=sel, batch_size=16,
                     policy=ExecutionPolicy(precision)).summary()
    assert _MM_DTYPE_OK.get("cuda", True)  # no fallback to bf16-rounded products
    assert low["rank_before"] == ref["rank_before"]
    assert low["rank_after"] == pytest.approx(ref["rank_after"], abs=4.0)
    assert low["rank_after"] < low["rank_before"]


def test_compiled_comparisons_equal_eager_on_cuda():
    from advrank.attacks import CandidateObjective, QueryObjective
    from advrank.core.execution import ExecutionPolicy

    g = torch.Generator(device="cuda").manual_seed(0)
    gal = torch.nn.functional.normalize(torch.randn(5000, 64, device="cuda", generator=g), dim=1)
    emb = torch.randn(32, 64, device="cuda", generator=g)
    idx = torch.randint(0, 5000, (32, 2), device="cuda", generator=g)
    sp = torch.randint(0, 5000, (32, 5), device="cuda", generator=g)
    dist = get_distance("cosine")
    for raise_rank in (True, False):
        eager = QueryObjective(raise_rank, idx, gal, dist, sp_candidates=sp, xi=1.0,
                               policy=ExecutionPolicy("tf32"))
        fused = QueryObjective(raise_rank, idx, gal, dist, sp_candidates=sp, xi=1.0,
                               policy=ExecutionPolicy("tf32", compile=True))
        assert torch.allclose(eager.grad(emb), fused.grad(emb), atol=1e-4)
        q = gal[idx]
        eager = CandidateObjective(raise_rank, q, gal, dist, policy=ExecutionPolicy("bf16"))
        fused = CandidateObjective(raise_rank, q, gal, dist,
                                   policy=ExecutionPolicy("bf16", compile=True))
        assert torch.equal(eager.grad(emb), fused.grad(emb))


def test_memory_budget_bounds_the_peak_on_cuda(digits_test):
    """A CA batch run within a small budget keeps a smaller peak (sub-batches) and gives the
    figures of the unbounded run."""
    from advrank.core.execution import ExecutionPolicy

    model, gallery = _gallery("cuda", digits_test)
    sel = get_attack("CA+").select(gallery, 10, 200, seed=1)
    peaks, results = [], []
    for policy in (None, ExecutionPolicy(memory_budget=2 << 20)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        results.append(run_attack(model, gallery, "CA+", 0.1, 10, 200, selection=sel,
                                  batch_size=200, policy=policy))
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] < peaks[0] / 2
    assert results[1].rank_after == pytest.approx(results[0].rank_after, abs=1e-4)
