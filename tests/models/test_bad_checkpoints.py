"""A corpus of crafted bad checkpoints: every one is refused by every command that reads
checkpoints (``evaluate``, ``export``, ``train --init``) with one ``advrank: error:`` line and
exit status 2, before any work; no pickle payload ever runs (its marker file never appears).

The corpus is generated here from one valid tiny checkpoint: corrupt and truncated files,
pickles whose unsafe loading would write a marker file, every metadata field missing or of
the wrong type, non-finite weights, and weights that do not fit the declared model/dataset.
"""

from __future__ import annotations

import builtins
import copy
import os
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from advrank.models import create_model
from advrank.models.checkpoint import REQUIRED_META, save_checkpoint

META = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "loss": "triplet",
        "margin": 0.2, "embed_dim": 8, "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38],
        "seed": 0, "epochs": 1, "epochs_done": 1, "recall@1": 50.0, "train_seconds": 1.0,
        "history": [{"epoch": 1, "loss": 0.1, "recall@1": 50.0, "seconds": 1.0}]}
WEIGHT = "backbone.1.weight"  # the embedding layer of c2f1: [embed_dim, 256]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict:
    """A valid checkpoint's payload (as torch.load returns it), and its file."""
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 8, mean=[0.3], std=[0.38])
    path = tmp_path_factory.mktemp("valid") / "valid.pt"
    save_checkpoint(path, model, META, torch.optim.Adam(model.parameters()), epoch=1)
    return {"path": path, "payload": torch.load(path, weights_only=True)}


# ----------------------------------------------------------------------- pickle payloads


class Payload:
    """Unpickling this unsafely calls ``func(*args)``; each payload writes the marker file."""

    def __init__(self, func: Callable, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    code = f"open({str(marker)!r}, 'w').write('executed')"
    return {
        "exec": Payload(builtins.exec, code),
        "eval": Payload(builtins.eval, code),
        "os.system": Payload(os.system, f"echo executed > '{marker}'"),
        "pathlib": Payload(Path.write_text, Path(marker), "executed"),
    }


def _zip_with_evil_pickle(valid_path: Path, path: Path, evil: bytes) -> None:
    """A torch zip checkpoint whose ``data.pkl`` was swapped for a malicious pickle: the
    shape CVE-2025-32434 exploits."""
    with zipfile.ZipFile(valid_path) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, evil if item.filename.endswith("data.pkl") else data)


# ----------------------------------------------------------------------------- the corpus


def _edited(valid: dict, edit: Callable[[dict], None]) -> dict:
    payload = copy.deepcopy(valid["payload"])
    edit(payload)
    return payload


def _meta(**changes) -> Callable[[dict], None]:
    def edit(p):
        for key, value in changes.items():
            if value is _DROP:
                p["meta"].pop(key)
            else:
                p["meta"][key] = value
    return edit


def _weights(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda p: fn(p["model"])


_DROP = object()

#: (id, edit of a valid payload) -> torch.save of the edited payload
EDITED: list[tuple[str, Callable[[dict], None]]] = [
    ("not-a-dict", lambda p: p.clear() or p.update({"x": [1, 2]})),
    ("no-format-marker", lambda p: p.pop("format")),
    ("foreign-format-marker", lambda p: p.update(format="someone-elses")),
    ("format-version-string", lambda p: p.update(format_version="1")),
    ("format-version-float", lambda p: p.update(format_version=1.5)),
    ("format-version-bool", lambda p: p.update(format_version=True)),
    ("format-version-zero", lambda p: p.update(format_version=0)),
    ("format-version-future", lambda p: p.update(format_version=99)),
    ("meta-missing", lambda p: p.pop("meta")),
    ("meta-a-list", lambda p: p.update(meta=[1, 2])),
    ("model-missing", lambda p: p.pop("model")),
    ("model-a-tensor", lambda p: p.update(model=torch.zeros(3))),
    ("epoch-negative", lambda p: p.update(epoch=-1)),
    ("epoch-string", lambda p: p.update(epoch="3")),
    ("optimizer-a-list", lambda p: p.update(optimizer=[1])),
    *[(f"meta-{f}-missing", _meta(**{f: _DROP})) for f in REQUIRED_META],
    *[(f"meta-{f}-none", _meta(**{f: None})) for f in ("dataset", "metric")],
    ("meta-dataset-int", _meta(dataset=3)),
    ("meta-dataset-unknown", _meta(dataset="cifar")),
    ("meta-dataset-bad-argument", _meta(dataset="digits:extra")),
    ("meta-arch-list", _meta(arch=["c2f1"])),
    ("meta-arch-unknown", _meta(arch="vgg")),
    ("meta-metric-dict", _meta(metric={"name": "cosine"})),
    ("meta-metric-unknown", _meta(metric="l1")),
    ("meta-embed-dim-string", _meta(embed_dim="8")),
    ("meta-embed-dim-float", _meta(embed_dim=8.0)),
    ("meta-embed-dim-bool", _meta(embed_dim=True)),
    ("meta-embed-dim-zero", _meta(embed_dim=0)),
    ("meta-embed-dim-huge", _meta(embed_dim=10**12)),
    ("meta-image-shape-string", _meta(image_shape="1,8,8")),
    ("meta-image-shape-2d", _meta(image_shape=[8, 8])),
    ("meta-image-shape-floats", _meta(image_shape=[1.0, 8.0, 8.0])),
    ("meta-image-shape-wrong-dataset", _meta(image_shape=[1, 28, 28])),
    ("meta-mean-string", _meta(mean="0.3")),
    ("meta-mean-nan", _meta(mean=[float("nan")])),
    ("meta-mean-two-channels", _meta(mean=[0.3, 0.3])),
    ("meta-mean-nested", _meta(mean=[[0.3]])),
    ("meta-std-zero", _meta(std=[0.0])),
    ("meta-std-negative", _meta(std=[-0.38])),
    ("meta-std-inf", _meta(std=[float("inf")])),
    ("meta-margin-string", _meta(margin="0.2")),
    ("meta-margin-nan", _meta(margin=float("nan"))),
    ("meta-recall-inf", _meta(**{"recall@1": float("inf")})),
    ("meta-loss-int", _meta(loss=5)),
    ("meta-defense-list", _meta(defense=["est"])),
    ("meta-history-string", _meta(history="x")),
    ("meta-history-of-numbers", _meta(history=[1, 2])),
    ("meta-train-seconds-string", _meta(train_seconds="soon")),
    ("meta-epochs-done-negative", _meta(epochs_done=-2)),
    ("meta-seed-float", _meta(seed=0.5)),
    ("weights-nan", _weights(lambda w: w[WEIGHT].fill_(float("nan")))),
    ("weights-inf", _weights(lambda w: w[WEIGHT].view(-1)[7:9].fill_(float("inf")))),
    ("weights-minus-inf-bias", _weights(lambda w: w["backbone.1.bias"].fill_(-float("inf")))),
    ("weights-nan-half", _weights(lambda w: w.update(
        {WEIGHT: torch.full_like(w[WEIGHT], float("nan")).half()}))),
    ("normalize-std-zero", _weights(lambda w: w["normalize.std"].zero_())),
    ("normalize-std-not-meta", _weights(lambda w: w["normalize.std"].fill_(7.0))),
    ("weights-missing-tensor", _weights(lambda w: w.pop(WEIGHT))),
    ("weights-extra-tensor", _weights(lambda w: w.update(extra=torch.zeros(2)))),
    ("weights-wrong-shape", _weights(lambda w: w.update({WEIGHT: torch.zeros(9, 256)}))),
    ("weights-name-not-a-string", _weights(lambda w: w.update({5: torch.zeros(1)}))),
    ("weights-value-not-a-tensor", _weights(lambda w: w.update({WEIGHT: 1.5}))),
    ("weights-integer-dtype", _weights(lambda w: w.update({WEIGHT: w[WEIGHT].long()}))),
    ("weights-complex", _weights(lambda w: w.update({WEIGHT: w[WEIGHT].to(torch.complex64)}))),
    ("weights-sparse", _weights(lambda w: w.update({WEIGHT: w[WEIGHT].to_sparse()}))),
    ("weights-meta-device", _weights(lambda w: w.update(
        {WEIGHT: torch.empty_like(w[WEIGHT], device="meta")}))),
    ("weights-of-another-arch", _meta(arch="lenet")),
    ("weights-of-another-embed-dim", _meta(embed_dim=16)),
    ("weights-for-28px-images", lambda p: p.update(model=create_model(
        "c2f1", (1, 28, 28), 8, mean=[0.3], std=[0.38]).state_dict())),
]


def _raw_files(valid: dict, marker: Path) -> dict[str, bytes]:
    """Files that are not an edit of a valid payload: corrupt, truncated, foreign, malicious."""
    data = valid["path"].read_bytes()
    rng = random.Random(0)
    files = {
        "empty": b"",
        "text": b"hello, I am not a checkpoint\n",
        "random-bytes": rng.randbytes(4096),
        "random-bytes-with-zip-magic": b"PK\x03\x04" + rng.randbytes(2000),
        "truncated-10-bytes": data[:10],
        "truncated-half": data[: len(data) // 2],
        "truncated-last-byte": data[:-1],
        "flipped-bytes": bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(data)),
        "json": b'{"format": "advrank-checkpoint", "meta": {}}',
    }
    for name, payload in _payloads(marker).items():
        files[f"pickle-{name}"] = pickle.dumps(payload, protocol=2)
        files[f"pickle0-{name}"] = pickle.dumps(payload, protocol=0)
    return files


def _write_corpus(valid: dict, root: Path, marker: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    corpus = {}
    for name, edit in EDITED:
        corpus[name] = root / f"{name}.pt"
        torch.save(_edited(valid, edit), corpus[name])
    for name, data in _raw_files(valid, marker).items():
        corpus[name] = root / f"{name}.pt"
        corpus[name].write_bytes(data)
    for name, payload in _payloads(marker).items():
        # inside a well-formed advrank checkpoint: in the metadata, in the weights, at the top
        corpus[f"torch-meta-{name}"] = root / f"torch-meta-{name}.pt"
        torch.save(_edited(valid, _meta(dataset=payload)), corpus[f"torch-meta-{name}"])
        corpus[f"torch-weights-{name}"] = root / f"torch-weights-{name}.pt"
        torch.save(_edited(valid, _weights(lambda w, p=payload: w.update({WEIGHT: p}))),
                   corpus[f"torch-weights-{name}"])
        corpus[f"zip-data-pkl-{name}"] = root / f"zip-data-pkl-{name}.pt"
        _zip_with_evil_pickle(valid["path"], corpus[f"zip-data-pkl-{name}"],
                              pickle.dumps(payload, protocol=2))
    return corpus


RAW = ["empty", "text", "random-bytes", "random-bytes-with-zip-magic", "truncated-10-bytes",
       "truncated-half", "truncated-last-byte", "flipped-bytes", "json"]


def corpus_ids() -> list[str]:
    names = [name for name, _ in EDITED] + RAW
    for name in _payloads(Path("x")):
        names += [f"pickle-{name}", f"pickle0-{name}", f"torch-meta-{name}",
                  f"torch-weights-{name}", f"zip-data-pkl-{name}"]
    return names


@pytest.fixture(scope="module")
def corpus(valid, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-checkpoints")
    marker = root / "MARKER"
    files = _write_corpus(valid, root / "files", marker)
    assert sorted(files) == sorted(corpus_ids())
    return {"files": files, "marker": marker, "root": root}


def test_corpus_is_large_and_the_payloads_are_live(valid, corpus, tmp_path):
    """Control: at least 30 bad files, and each pickle payload really writes its marker when
    loaded unsafely (so 'no marker' below means 'nothing ran', not 'nothing would have')."""
    assert len(corpus["files"]) >= 30
    for name, payload in _payloads(tmp_path / "control").items():
        marker = tmp_path / "control"
        pickle.loads(pickle.dumps(payload, protocol=2))
        assert marker.read_text().strip() == "executed", name
        marker.unlink()
        zipped = tmp_path / f"{name}.pt"
        _zip_with_evil_pickle(valid["path"], zipped, pickle.dumps(payload, protocol=2))
        torch.load(zipped, weights_only=False)
        assert marker.exists(), name
        marker.unlink()


def test_the_valid_checkpoint_is_accepted(valid, cli, tmp_path):
    status, out, err = cli(["evaluate", "--checkpoint", valid["path"], "--device", "cpu",
                            "--quiet"])
    assert status == 0 and out.startswith("digits/c2f1/cosine"), err
    status, _, err = cli(["export", "--checkpoint", valid["path"], "--out", tmp_path / "c.pt"])
    assert status == 0, err


@pytest.mark.parametrize("name", corpus_ids())
def test_bad_checkpoint_is_refused_with_one_line(corpus, name, cli, one_error_line, tmp_path):
    path, marker = corpus["files"][name], corpus["marker"]
    commands = {
        "evaluate": ["evaluate", "--checkpoint", path, "--device", "cpu", "--quiet"],
        "export": ["export", "--checkpoint", path, "--out", tmp_path / "copy.pt"],
        "train --init": ["train", "--dataset", "digits", "--init", path, "--epochs", "1",
                         "--out", tmp_path / "tuned.pt", "--device", "cpu", "--quiet"],
    }
    for command, argv in commands.items():
        line = one_error_line(*cli(argv))
        assert str(path) in line, (command, line)
        assert len(line) < 300 + len(str(path)), (command, line)
        assert not marker.exists(), f"{command} ran the payload of {name}"
    assert not (tmp_path / "copy.pt").exists() and not (tmp_path / "tuned.pt").exists()
