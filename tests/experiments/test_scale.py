"""The protocol under a memory budget: sub-batches with unchanged results, out-of-memory split
and retried with one log line, a budget that fits no attack refused before any work; and the
precisions end to end."""

import pytest
import torch

import advrank.experiments.protocol as protocol
from advrank.attacks import get_attack
from advrank.core.distances import get_distance
from advrank.core.execution import ExecutionPolicy
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset, load_dataset
from advrank.errors import AdvrankError
from advrank.experiments.protocol import plan_batches, run_attack
from advrank.models import create_model


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16, mean=[0.3], std=[0.38]).eval()
    ds = load_dataset("digits", "test")
    ds = TensorImageDataset(ds.images[:200], ds.labels[:200], name="digits")
    return model, Gallery.build(model, ds, get_distance("cosine"))


def _run(digits, attack, **kw):
    model, gal = digits
    return run_attack(model, gal, attack, 0.1, 2, 12, seed=3, batch_size=12,
                      threat=None, **kw)


def _plan(digits, attack, budget, batch=12, precision="fp32"):
    model, gal = digits
    return plan_batches(model, gal, get_attack(attack), 2, batch, (1, 8, 8),
                        ExecutionPolicy(precision, budget), log=False)


@pytest.mark.parametrize("attack", ["CA+", "QA-"])
def test_a_small_budget_runs_sub_batches_with_the_same_results(digits, attack, capsys):
    full = _plan(digits, attack, 1 << 30)
    per_attack = (1 << 30) // full.sub if full.sub < 12 else None
    assert full.sub == 12 and per_attack is None  # a roomy budget never splits
    tight = 1 << 21  # 2 MiB: a few attacks at a time
    plan = _plan(digits, attack, tight)
    assert 1 <= plan.sub < 12
    reference = _run(digits, attack)
    split = _run(digits, attack, policy=ExecutionPolicy(memory_budget=tight))
    assert split.rank_after == pytest.approx(reference.rank_after)
    assert split.rank_before == reference.rank_before
    assert split.extra["precision"] == "fp32"


def test_a_budget_that_fits_no_attack_is_refused_before_any_work(digits, monkeypatch):
    model, gal = digits
    calls = []
    monkeypatch.setattr(protocol, "pgd", lambda *a, **k: calls.append(1))
    # a model whose PGD step needs 2 MiB per image (e.g. a large one at a large resolution)
    monkeypatch.setattr(protocol, "model_bytes_per_item", lambda *a: 2 << 20)
    with pytest.raises(AdvrankError, match="one CA\\+ attack needs about .* memory budget"):
        run_attack(model, gal, "CA+", 0.1, 2, 12, policy=ExecutionPolicy(memory_budget=1 << 20))
    assert calls == []


def test_out_of_memory_splits_the_batch_retries_and_says_so(digits, monkeypatch, capsys):
    reference = _run(digits, "QA+")
    real, seen = protocol.pgd, []

    def flaky(model, images, *args, **kwargs):
        seen.append(images.shape[0])
        if images.shape[0] > 6:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(protocol, "pgd", flaky)
    again = _run(digits, "QA+")
    assert again.rank_after == pytest.approx(reference.rank_after)
    assert seen == [12, 6, 6]
    err = capsys.readouterr().err
    assert err.count("out of memory on 12 QA+ attacks; splitting into batches of 6") == 1


def test_out_of_memory_on_one_attack_is_one_readable_error(digits, monkeypatch):
    def never(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(protocol, "pgd", never)
    with pytest.raises(AdvrankError, match="single item"):
        _run(digits, "CA-")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("attack", ["CA+", "QA+"])
def test_reduced_precisions_attack_as_well_and_measure_in_fp32(digits, attack, precision):
    reference = _run(digits, attack).summary()
    low = _run(digits, attack, policy=ExecutionPolicy(precision)).summary()
    assert low["precision"] == precision
    assert low["rank_before"] == reference["rank_before"]  # the exact fp32 measurement
    assert low["rank_after"] < low["rank_before"]
    assert low["rank_after"] == pytest.approx(reference["rank_after"], abs=6.0)
    if precision == "tf32":  # fp32 products on a CPU: the same attack up to rounding
        assert low["rank_after"] == pytest.approx(reference["rank_after"], abs=1.0)


def test_gallery_embedding_splits_on_out_of_memory(digits, capsys):
    from torch import nn

    from advrank.core.gallery import embed_dataset

    model, gal = digits

    class Flaky(nn.Module):  # a device that cannot hold more than 20 images at once
        def forward(self, x):
            if x.shape[0] > 20:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x)

    got = embed_dataset(Flaky(), gal.dataset, batch_size=64)
    assert torch.allclose(got, gal.embeddings, atol=1e-6)
    assert capsys.readouterr().err.splitlines() == [  # halved twice, then kept for the rest
        "advrank: out of memory on 64 images to embed; splitting into batches of 32 and retrying",
        "advrank: out of memory on 32 images to embed; splitting into batches of 16 and retrying"]


def test_the_sub_batch_note_comes_only_when_the_run_splits_and_once(digits, capsys):
    """T = 4 attacks with --batch-size 256 form one batch of 4: a budget that fits 4 says
    nothing (it once said "256 CA+ attacks need about ..."); one that splits says it once
    for all the cells of the same setting."""
    model, gal = digits
    four = protocol.plan_batches(model, gal, get_attack("CA+"), 2, 4, (1, 8, 8),
                                 ExecutionPolicy(memory_budget=1 << 30))
    budget = ExecutionPolicy(memory_budget=four.budget)  # roomy for 4, not for 256
    for _ in range(2):
        run_attack(model, gal, "CA+", 0.1, 2, 4, batch_size=256, policy=budget)
    assert "sub-batches" not in capsys.readouterr().err
    tight = ExecutionPolicy(memory_budget=(1 << 21) + 12345)  # a setting no test said before
    for eps in (0.05, 0.1):
        run_attack(model, gal, "CA+", eps, 2, 12, batch_size=12, policy=tight)
    assert capsys.readouterr().err.count("running sub-batches") == 1
