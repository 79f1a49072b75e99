"""Checkpoints: round trip, and corrupt / foreign / malicious / mismatched files refused."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

import advrank
from advrank.cli import main
from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.models.checkpoint import (
    export_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

SHAPE = (1, 8, 8)
META = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 16,
        "image_shape": list(SHAPE), "mean": [0.3], "std": [0.38], "seed": 7,
        "history": [{"epoch": 1, "recall@1": 91.5}]}


def _touch(path: str) -> None:
    Path(path).write_text("executed")


class WritesMarker:
    """Unpickling this (unsafely) would call ``_touch(path)``: a stand-in for malicious code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("c2f1", SHAPE, 16, mean=[0.3], std=[0.38])
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(4, *SHAPE)).sum().backward()
    optimizer.step()
    path = tmp_path / "sub" / "model.pt"  # the parent folder is created
    save_checkpoint(path, model, META, optimizer, epoch=3)
    return path, model


def _assert_readable(err, path):
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 600


def test_round_trip(saved):
    path, model = saved
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "advrank-checkpoint" and ckpt["epoch"] == 3
    assert ckpt["meta"] == {**META, "advrank_version": advrank.__version__}
    assert ckpt["optimizer"]["state"]  # Adam moments kept for resuming
    loaded, meta = model_from_checkpoint(path)
    assert not loaded.training and meta.seed == 7
    x = torch.rand(5, *SHAPE)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # from an already-loaded dict too
    again, _ = model_from_checkpoint(ckpt)
    assert torch.equal(again.normalize.std, torch.tensor([0.38]).view(1, 1, 1, 1))


def test_export_keeps_weights_and_drops_optimizer_state(saved, tmp_path, capsys):
    path, model = saved
    out = tmp_path / "weights.pt"
    assert main(["export", "--checkpoint", str(path), "--out", str(out), "--json"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["optimizer"] is None and ckpt["meta"]["exported_from"] == str(path)
    assert out.stat().st_size < path.stat().st_size / 2  # Adam's two moments are gone
    loaded, _ = model_from_checkpoint(out)
    x = torch.rand(3, *SHAPE)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(AdvrankError, match="different output path"):
        export_checkpoint(path, path)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_overwrite_is_atomic_replacement(saved):
    path, model = saved
    save_checkpoint(path, model, {**META, "seed": 8})
    assert load_checkpoint(path)["meta"]["seed"] == 8
    assert len(list(path.parent.iterdir())) == 1


def test_missing_file(tmp_path):
    with pytest.raises(AdvrankError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(seed).randbytes(64 + 40 * seed))
    with pytest.raises(AdvrankError, match="not a readable advrank checkpoint") as err:
        load_checkpoint(path)
    _assert_readable(err, path)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_checkpoint(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) - 1)
    path.write_bytes(data[:n])
    with pytest.raises(AdvrankError, match="not a readable advrank checkpoint") as err:
        load_checkpoint(path)
    _assert_readable(err, path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world\n")
    with pytest.raises(AdvrankError) as err:
        load_checkpoint(path)
    _assert_readable(err, path)


@pytest.mark.parametrize("payload", [{"weights": torch.zeros(3)}, torch.zeros(3), [1, 2]],
                         ids=["dict", "tensor", "list"])
def test_foreign_torch_file(tmp_path, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(AdvrankError, match="no 'advrank-checkpoint' marker") as err:
        load_checkpoint(path)
    _assert_readable(err, path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_object_is_not_executed(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(WritesMarker(marker)))
    else:
        torch.save({"format": "advrank-checkpoint", "meta": WritesMarker(marker)}, path)
    with pytest.raises(AdvrankError, match="nothing in it was executed") as err:
        load_checkpoint(path)
    _assert_readable(err, path)
    assert not marker.exists()
    with pytest.raises(AdvrankError):
        model_from_checkpoint(path)
    assert not marker.exists()
    # control: the payload really does run under an unsafe load
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(WritesMarker(control)))
    assert control.read_text() == "executed"


def test_incomplete_and_newer_format(tmp_path, saved):
    path, _ = saved
    ckpt = load_checkpoint(path)
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, bad)
    with pytest.raises(AdvrankError, match="incomplete"):
        load_checkpoint(bad)
    torch.save({**ckpt, "format_version": 99}, bad)
    with pytest.raises(AdvrankError, match="newer"):
        load_checkpoint(bad)


def test_mismatched_weights(tmp_path, saved):
    path, _ = saved
    ckpt = load_checkpoint(path)
    for meta in ({**ckpt["meta"], "embed_dim": 32}, {**ckpt["meta"], "arch": "lenet"}):
        with pytest.raises(AdvrankError, match="do not fit"):
            model_from_checkpoint({**ckpt, "meta": meta})
    lacking = {k: v for k, v in ckpt["meta"].items() if k != "image_shape"}
    with pytest.raises(AdvrankError, match="lacks"):
        model_from_checkpoint({**ckpt, "meta": lacking})
    with pytest.raises(AdvrankError, match="unknown model"):
        model_from_checkpoint({**ckpt, "meta": {**ckpt["meta"], "arch": "vgg"}})
    # on disk as well
    other = create_model("c2f1", SHAPE, 8)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, other, META)  # META says embed_dim 16
    with pytest.raises(AdvrankError, match="do not fit a c2f1 model"):
        model_from_checkpoint(wrong)
