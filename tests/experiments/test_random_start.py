"""``--random-start`` results do not depend on the batch size: each attack's random start is
keyed by (seed, its position in the selection), not drawn from a per-batch generator."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.attacks import LinfThreatModel, get_attack
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset, load_dataset
from advrank.experiments.protocol import attack_batches, run_attack
from advrank.experiments.transfer import transfer_attack
from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint

T = 9


@pytest.fixture(scope="module")
def setup():
    digits = load_dataset("digits", "test")
    dataset = TensorImageDataset(digits.images[:120], digits.labels[:120], name="digits")
    models, galleries = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]).eval())
        galleries.append(Gallery.build(models[-1], dataset, "cosine"))
    return dataset, models, galleries


def _after(result) -> list[float]:
    return result.after["rank"]


@pytest.mark.parametrize("attack", ["CA+", "CA-", "QA+", "QA-"])
def test_random_start_results_do_not_depend_on_batch_size(setup, attack):
    _, (model, _), (gallery, _) = setup
    threat = LinfThreatModel(0.1, step_size=0.02, steps=3, random_start=True)
    runs = {b: run_attack(model, gallery, attack, 0.1, 2, T, seed=5, batch_size=b,
                          threat=threat) for b in (1, 2, 4, T, 1000)}
    reference = _after(runs[T])
    for b, result in runs.items():
        assert _after(result) == reference, b  # identical, not merely close
        assert result.after == runs[T].after
    # the same adversarial images, batch for batch; and the random start is really there
    selection = get_attack(attack).select(gallery, 2, T, 5)

    def images(batch_size, threat, seed=5):
        return torch.cat([adv for _, adv in attack_batches(
            model, gallery, get_attack(attack), threat, selection, seed, batch_size)])

    reference_images = images(T, threat)
    for b in (1, 4):
        assert torch.equal(images(b, threat), reference_images), b
    plain = LinfThreatModel(0.1, step_size=0.02, steps=3)
    assert not torch.equal(images(T, plain), reference_images)
    assert not torch.equal(images(T, threat, seed=6), reference_images)


def test_transfer_random_start_does_not_depend_on_batch_size(setup):
    dataset, (m0, m1), (g0, g1) = setup
    threat = LinfThreatModel(0.1, step_size=0.02, steps=2, random_start=True)
    results = [transfer_attack(m0, m1, dataset, "QA+", 0.1, k=1, num_attacks=T, seed=3,
                               batch_size=b, threat=threat, source_gallery=g0,
                               target_gallery=g1) for b in (1, 4, T)]
    for r in results[1:]:
        assert r["rank_after"] == results[0]["rank_after"]
        assert r["source"] == results[0]["source"]


def test_cli_random_start_same_numbers_for_any_batch_size(tmp_path, cli):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]),
                    {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 8,
                     "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]})
    figures = []
    for batch in ("1", "3", "256"):
        status, out, err = cli(["attack", "--checkpoint", path, "--attack", "CA-", "--eps",
                                "0.1", "--steps", "2", "--random-start", "--num-attacks", "7",
                                "--batch-size", batch, "--device", "cpu", "--json", "--quiet"])
        assert status == 0, err
        result = json.loads(out)
        assert result["threat"]["random_start"] is True
        figures.append({k: v for k, v in result.items() if k.startswith(("rank", "recall"))})
    assert figures[0] == figures[1] == figures[2]
