"""Bad options are refused before the work starts: options that are wrong on their own before
any checkpoint or data is read, options that do not fit the gallery (T, w/m, G, pools, set
sizes) once its size is known and before it is embedded (the slow part on real data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import advrank.core.gallery as gallery_mod
import advrank.experiments.target as target_mod
import advrank.training.trainer as trainer_mod
from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]),
                    {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 8,
                     "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]})
    return path


def _forbid(monkeypatch, module, name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran before the options were checked")

    monkeypatch.setattr(module, name, refuse)


# options wrong whatever the checkpoint: refused before it is even read
STATIC = [
    ("takes no xi", ["attack", "--attack", "CA+", "--eps", "0.1", "--xi", "1"]),
    ("--w does not apply", ["attack", "--attack", "QA+", "--eps", "0.1", "--w", "2"]),
    ("give the size once", ["attack", "--attack", "QA+", "--eps", "0.1", "--k", "1", "--m",
                            "2"]),
    ("applies to none", ["grid", "--out", "OUT", "--attacks", "CA+", "--G", "3"]),
    ("unknown paper table", ["grid", "--out", "OUT", "--paper", "cifar"]),
    ("not a folder", ["grid", "--out", "FILE"]),
    ("takes no sp_reduction", ["transfer", "--target", "CKPT", "--attack", "CA-", "--eps", "0.1",
                               "--sp-reduction", "sum"]),
    ("names must be distinct", ["transfer-matrix", "--checkpoint", "a=CKPT", "--checkpoint",
                                "a=CKPT", "--out", "OUT"]),
    ("takes no xi", ["universal", "--attack", "CA+", "--eps", "0.1", "--xi", "1"]),
    ("not a folder", ["universal", "--attack", "CA+", "--eps", "0.1", "--out", "FILE"]),
    ("not a folder", ["curves", "--out", "FILE"]),
    ("not writable", ["grid", "--out", "/proc/self"]),
    ("not writable", ["curves", "--out", "/proc/self"]),
    ("not writable", ["transfer-matrix", "--checkpoint", "a=CKPT", "--out", "/proc/self"]),
    ("not writable", ["universal", "--attack", "CA+", "--eps", "0.1", "--out", "/proc/self"]),
    ("not writable", ["train", "--dataset", "digits", "--arch", "c2f1", "--out",
                      "/proc/self/m.pt"]),
    ("not writable", ["export", "--checkpoint", "CKPT", "--out", "/proc/self/m.pt"]),
    ("is a folder", ["train", "--dataset", "digits", "--arch", "c2f1", "--out", "DIR"]),
    ("need --defense", ["train", "--dataset", "digits", "--defense-eps", "0.1", "--out",
                        "NEW"]),
]
# options that do not fit the 719-image digits test set: refused before it is embedded
SIZED = [
    ("720 attacks", ["attack", "--attack", "CA+", "--eps", "0.1", "--num-attacks", "720"]),
    ("top-1% pool", ["attack", "--attack", "CA-", "--eps", "0.1", "--w", "9", "--num-attacks",
                     "5"]),
    ("G = 9000", ["attack", "--attack", "QA+", "--eps", "0.1", "--G", "9000", "--num-attacks",
                  "5"]),
    ("m = 718", ["attack", "--attack", "QA+", "--eps", "0.1", "--k", "718", "--num-attacks",
                 "5"]),
    ("m = 20", ["grid", "--out", "OUT", "--attacks", "CA+,QA-", "--ks", "1,20",
                "--num-attacks", "5", "--eps-values", "0.1"]),
    ("720 attacks", ["curves", "--out", "OUT", "--num-attacks", "720"]),
    ("720 attacks", ["audit", "--out", "OUT", "--num-attacks", "720"]),
    ("720 attacks", ["robustness", "--profile", "rob28", "--out", "OUT", "--num-attacks",
                     "720"]),
    ("m = 50", ["transfer", "--target", "CKPT", "--attack", "QA-", "--eps", "0.1", "--k",
                "50"]),
    ("999 attacks", ["transfer-matrix", "--checkpoint", "a=CKPT", "--out", "OUT",
                     "--num-attacks", "999"]),
    ("exceed |X|", ["universal", "--attack", "CA+", "--eps", "0.1", "--fraction", "0.5",
                    "--k", "10"]),
    ("top-1% pool", ["universal", "--attack", "QA-", "--eps", "0.1", "--mode", "own", "--k",
                     "9"]),
]


def _argv(words, ckpt, tmp_path):
    first_checkpoint = {"attack": "--checkpoint", "grid": "--checkpoint", "audit":
                        "--checkpoint", "robustness": "--checkpoint", "curves":
                        "--checkpoint", "universal": "--checkpoint", "transfer": "--source"}
    subs = {"CKPT": str(ckpt), "OUT": str(tmp_path / "out"), "FILE": str(ckpt),
            "DIR": str(tmp_path), "NEW": str(tmp_path / "new.pt")}
    argv = [w.replace("a=CKPT", f"a={ckpt}") for w in words]
    argv = [subs.get(w, w) for w in argv]
    if words[0] in first_checkpoint:
        argv += [first_checkpoint[words[0]], str(ckpt)]
    if any(w.startswith("/proc/self") for w in words) and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc, where no file can be created")
    return argv if words[0] == "export" else [*argv, "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("fragment,words", STATIC, ids=[" ".join(w[:4]) for _, w in STATIC])
def test_options_wrong_on_their_own_are_refused_before_reading_anything(
        fragment, words, ckpt, tmp_path, monkeypatch, cli, one_error_line):
    _forbid(monkeypatch, target_mod, "model_from_checkpoint")
    _forbid(monkeypatch, target_mod, "load_dataset")
    _forbid(monkeypatch, trainer_mod, "load_dataset")
    one_error_line(*cli(_argv(words, ckpt, tmp_path)), fragment)


@pytest.mark.parametrize("fragment,words", SIZED, ids=[" ".join(w[:6]) for _, w in SIZED])
def test_options_that_do_not_fit_the_gallery_are_refused_before_embedding(
        fragment, words, ckpt, tmp_path, monkeypatch, cli, one_error_line):
    _forbid(monkeypatch, gallery_mod, "embed_dataset")
    one_error_line(*cli(_argv(words, ckpt, tmp_path)), fragment)
