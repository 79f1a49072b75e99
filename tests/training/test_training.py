"""Training on digits: accuracy, checkpoint metadata, repeatability, resume, losses/metrics."""

from __future__ import annotations

import shutil

import pytest
import torch

import advrank
from advrank.core.distances import get_distance
from advrank.core.runtime import seed_everything
from advrank.data import dataset_spec, load_dataset
from advrank.defenses import Defense
from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.models.checkpoint import load_checkpoint, model_from_checkpoint
from advrank.training import TrainConfig, default_margin, evaluate_model, make_loss, train


def _config(**kw):
    base = dict(dataset="digits", arch="c2f1", embed_dim=16, device="cpu", seed=0, epochs=1)
    return TrainConfig(**{**base, **kw})


def _untrained_recall(metric, seed=0):
    """R@1 of the model a run with this seed starts from (digits is easy: about 80%)."""
    info = dataset_spec("digits")
    seed_everything(seed)
    model = create_model("c2f1", info.image_shape, 16, info.mean, info.std)
    return evaluate_model(model, load_dataset("digits", "test"), get_distance(metric),
                          ks=(1,))["recall@1"]


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "digits.pt"
    return out, train(_config(epochs=3), out, progress=False)


def test_short_training_reaches_high_recall(three_epochs):
    out, result = three_epochs
    assert result.checkpoint == str(out)
    assert len(result.history) == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.meta.recall_at_1 > 90.0
    assert result.meta.recall_at_1 > _untrained_recall("cosine") + 10.0
    assert all(h["loss"] > 0 for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_checkpoint_metadata(three_epochs):
    out, result = three_epochs
    ckpt = load_checkpoint(out)
    meta = ckpt["meta"]
    expected = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "loss": "triplet",
                "epochs": 3, "seed": 0, "embed_dim": 16, "epochs_done": 3,
                "advrank_version": advrank.__version__, "image_shape": [1, 8, 8]}
    assert {k: meta[k] for k in expected} == expected
    assert meta["recall@1"] == result.history[-1]["recall@1"]
    assert meta == result.meta.to_dict()
    assert ckpt["epoch"] == 3 and ckpt["optimizer"] is not None
    # the stored R@1 is what evaluating the stored model gives
    model, _ = model_from_checkpoint(out)
    test_set = load_dataset("digits", "test")
    r1 = evaluate_model(model, test_set, get_distance("cosine"), ks=(1,))["recall@1"]
    assert r1 == pytest.approx(meta["recall@1"])
    full = evaluate_model(model, test_set, get_distance("cosine"), with_map=True)
    assert set(full) == {"recall@1", "recall@2", "recall@4", "recall@8", "map"}
    assert 50.0 < full["map"] <= 100.0  # percent, like every figure


class InputDefense(Defense):
    """A test defense through the training-loss hook: records each batch, maps the inputs."""

    name = "test-input"

    def __init__(self, fn=lambda x: x):
        self.fn, self.calls = fn, []

    def training_loss(self, model, images, labels, criterion):
        self.calls.append(images.shape[0])
        emb = model(self.fn(images))
        return criterion(emb, labels), emb


def test_same_seed_same_weights(tmp_path):
    identity = InputDefense()  # the defense hook: called once per batch
    a = train(_config(seed=1), tmp_path / "a.pt", progress=False)
    b = train(_config(seed=1), tmp_path / "b.pt", defense=identity, progress=False)
    calls = identity.calls
    c = train(_config(seed=2), tmp_path / "c.pt", progress=False)
    _assert_same_weights(_weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt"))
    assert a.meta.recall_at_1 == b.meta.recall_at_1
    assert len(calls) == 8 and set(calls) == {a.meta.batch_size}
    wa, wc = _weights(tmp_path / "a.pt"), _weights(tmp_path / "c.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert c.meta.seed == 2


def test_batch_transform_output_is_what_trains(tmp_path):
    a = train(_config(), tmp_path / "a.pt", progress=False)
    b = train(_config(), tmp_path / "b.pt", progress=False,
              defense=InputDefense(lambda x: (x + 0.3).clamp(0, 1)))
    assert b.meta.defense == "test-input"
    wa, wb = _weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt")
    assert not torch.allclose(wa["backbone.1.weight"], wb["backbone.1.weight"])
    assert a.meta.batch_size == b.meta.batch_size


def test_resume_continues_and_matches_uninterrupted(tmp_path):
    out = tmp_path / "resumed.pt"
    first = train(_config(epochs=1), out, progress=False)
    assert len(first.history) == 1 and load_checkpoint(out)["epoch"] == 1
    resumed = train(_config(epochs=2), out, progress=False)  # the same command resumes
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 kept, not retrained
    assert load_checkpoint(out)["epoch"] == 2 and resumed.meta.epochs_done == 2

    straight = train(_config(epochs=2), tmp_path / "straight.pt", progress=False)
    _assert_same_weights(_weights(out), _weights(tmp_path / "straight.pt"), exact=False)
    assert resumed.history[1]["recall@1"] == pytest.approx(straight.history[1]["recall@1"],
                                                           abs=0.2)


def test_resume_of_finished_run_does_not_train(three_epochs, tmp_path):
    out = tmp_path / "copy.pt"
    shutil.copy(three_epochs[0], out)
    before = out.read_bytes()
    result = train(_config(epochs=3), out, progress=False)
    assert len(result.history) == 3 and out.read_bytes() == before
    # fewer epochs than the file holds: refused, not reported as a 2-epoch run
    with pytest.raises(AdvrankError, match="trained for 3 epochs, more than the 2 asked"):
        train(_config(epochs=2), out, progress=False)
    assert out.read_bytes() == before


@pytest.mark.parametrize("key,value", [("arch", "lenet"), ("metric", "euclidean"),
                                       ("seed", 5), ("embed_dim", 8)])
def test_resume_with_different_config_refused(three_epochs, tmp_path, key, value):
    out = tmp_path / "copy.pt"
    shutil.copy(three_epochs[0], out)
    before = out.read_bytes()
    with pytest.raises(AdvrankError, match=f"holds another run .*{key}="):
        train(_config(epochs=4, **{key: value}), out, progress=False)
    assert out.read_bytes() == before  # left untouched
    forced = train(_config(epochs=1, **{key: value}), out, progress=False, force=True)
    assert getattr(forced.meta, key) == value and forced.meta.epochs_done == 1


def test_out_that_is_not_a_training_run_is_refused_unless_forced(tmp_path):
    """A foreign file, or a checkpoint that no training run wrote (same settings but no
    epochs), is never overwritten or resumed from without --force."""
    from advrank.models.checkpoint import save_checkpoint

    text = tmp_path / "notes.pt"
    text.write_text("my notes")
    with pytest.raises(AdvrankError, match="is not a checkpoint of this run"):
        train(_config(), text, progress=False)
    assert text.read_text() == "my notes"
    bare = tmp_path / "bare.pt"
    config = _config()
    info = dataset_spec("digits")
    meta = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "loss": "triplet",
            "margin": 0.2, "embed_dim": 16, "image_shape": list(info.image_shape),
            "mean": list(info.mean), "std": list(info.std), "lr": config.lr, "seed": 0,
            "batch_size": 120, "samples_per_class": None}
    save_checkpoint(bare, create_model("c2f1", info.image_shape, 16, info.mean, info.std), meta)
    before = bare.read_bytes()
    with pytest.raises(AdvrankError, match="not a resumable training run"):
        train(config, bare, progress=False)
    assert bare.read_bytes() == before
    assert train(config, bare, progress=False, force=True).meta.epochs_done == 1


@pytest.mark.parametrize("loss,metric", [("contrastive", "cosine"), ("triplet", "euclidean"),
                                         ("contrastive", "euclidean")])
def test_other_losses_and_metrics_train(tmp_path, loss, metric):
    result = train(_config(epochs=2, loss=loss, metric=metric), tmp_path / "m.pt",
                   progress=False)
    assert result.meta.loss == loss and result.meta.metric == metric
    assert result.meta.recall_at_1 > max(90.0, _untrained_recall(metric) + 5.0)


def test_init_from_checkpoint(three_epochs, tmp_path):
    src = three_epochs[0]
    model, _ = model_from_checkpoint(src)
    # fine-tuning with a vanishing lr keeps the weights: they really came from --init
    result = train(_config(lr=1e-12), tmp_path / "ft.pt", init=src, progress=False)
    _assert_same_weights(_weights(src), _weights(tmp_path / "ft.pt"), exact=False)
    assert result.meta.init == str(src)
    with pytest.raises(AdvrankError, match="embed_dim"):
        train(_config(embed_dim=8), tmp_path / "x.pt", init=src, progress=False)


def test_make_loss_and_bad_names():
    cos, euc = get_distance("cosine"), get_distance("euclidean")
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # well separated classes: zero triplet loss for both metrics
    assert make_loss("triplet", cos, 0.2)(emb, labels).item() == 0.0
    assert make_loss("triplet", euc, 1.0)(emb, labels).item() == 0.0
    assert make_loss("triplet", cos, 0.2)(emb, torch.tensor([0, 1, 0, 1])).item() > 0
    assert make_loss("contrastive", cos, 0.5)(emb, torch.tensor([0, 1, 0, 1])).item() > 0
    with pytest.raises(AdvrankError, match="unknown loss"):
        make_loss("arcface", cos, 0.1)
    with pytest.raises(AdvrankError, match="unknown dataset"):
        train(_config(dataset="cifar"), "unused.pt", progress=False)


def test_init_inherits_metric_loss_margin_and_refuses_conflicts(tmp_path, capsys):
    """``--init`` fine-tuning keeps the model's metric, loss, margin, arch and embed size;
    the defense attacks with that metric; an explicit conflicting option is refused."""
    from advrank.cli import main

    base = ["--dataset", "digits", "--epochs", "1", "--device", "cpu", "--quiet"]
    src = tmp_path / "euclid.pt"
    assert main(["train", *base, "--arch", "lenet", "--embed-dim", "12", "--metric",
                 "euclidean", "--loss", "contrastive", "--margin", "0.7", "--out", str(src)]) == 0
    defended = tmp_path / "est.pt"
    assert main(["train", *base, "--init", str(src), "--defense", "est", "--defense-steps", "2",
                 "--out", str(defended)]) == 0
    meta = load_checkpoint(defended)["meta"]
    assert (meta["metric"], meta["loss"], meta["margin"]) == ("euclidean", "contrastive", 0.7)
    assert (meta["arch"], meta["embed_dim"]) == ("lenet", 12)
    assert meta["defense_config"]["metric"] == "euclidean"
    capsys.readouterr()
    for option in (["--metric", "cosine"], ["--loss", "triplet"], ["--margin", "0.2"],
                   ["--arch", "c2f1"], ["--embed-dim", "16"]):
        assert main(["train", *base, "--init", str(src), *option,
                     "--out", str(tmp_path / "x.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("advrank: error: --init checkpoint has") and option[0][2:5] in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_siamese_loss_is_the_released_codes_pairwise_hinge(metric):
    """Over every ordered pair, the diagonal included: d for positives, [m - d]_+ for
    negatives, averaged over B^2 (the authors' ``*_c2f2_siamese.py``)."""
    dist = get_distance(metric)
    emb = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1])
    margin = default_margin("siamese", metric)
    assert margin == (0.2 if metric == "cosine" else 1.0)
    total = 0.0
    for i in range(5):
        for j in range(5):
            d = dist.paired(emb[i], emb[j]).item()
            total += d if labels[i] == labels[j] else max(0.0, margin - d)
    got = make_loss("siamese", dist, margin)(emb, labels).item()
    assert got == pytest.approx(total / 25, abs=1e-6)  # Euclidean d(x, x) is 1e-6, not 0
