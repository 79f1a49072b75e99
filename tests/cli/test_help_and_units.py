"""The first hour: ``--version``, every default visible in ``--help``, progress on stderr, and
one unit per kind of figure in the JSON (percent for recall, mAP, NMI and ranks)."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

import advrank
from advrank.cli import build_parser, main
from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"advrank {advrank.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _has_default(action: argparse.Action) -> bool:
    d = action.default
    return (action.option_strings and action.nargs != 0 and d is not None and d is not False
            and d != [] and d is not argparse.SUPPRESS)


def _help_entries(sub: argparse.ArgumentParser) -> dict[str, str]:
    """Option name -> its help text (wrapped lines joined), from the formatted --help."""
    options = sub.format_help().split("\noptions:", 1)[1]  # after the usage lines
    entries = re.split(r"\n(?=  -)", options)  # each entry starts on a line "  -x, --xx ..."
    out = {}
    for entry in entries:
        head = re.split(r"\s{2,}", entry.strip())[0]  # "-h, --help" or "--k K" before the help
        for name in re.findall(r"(?:^|, )(--?[a-zA-Z][\w-]*)", head):
            out[name] = " ".join(entry.split())
    return out


def test_help_shows_every_default():
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        entries = _help_entries(sub)
        for action in sub._actions:
            if _has_default(action):
                opt = action.option_strings[-1]
                if "default" not in entries.get(opt, ""):
                    missing.append(f"{name} {opt}")
    assert not missing, f"help without its default: {missing}"


def test_help_has_no_doubled_percent(capsys):
    for sub in _subparsers(build_parser()).values():
        assert "%%" not in sub.format_help()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("units") / "m.pt"
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38])
    save_checkpoint(path, model, {"dataset": "digits", "arch": "c2f1", "metric": "cosine",
                                  "embed_dim": 16, "image_shape": [1, 8, 8], "mean": [0.3],
                                  "std": [0.38], "recall@1": 80.0})
    return path


PERCENT = re.compile(r"^(recall@\d+|map|nmi|(sp_)?rank|recall@1)(_(before|after))?$")


def _check_units(obj) -> int:
    """Every figure named like a percentage lies in [0, 100]; returns how many were seen."""
    seen = 0
    if isinstance(obj, dict):
        for key, value in obj.items():
            if PERCENT.match(key) and isinstance(value, (int, float)):
                assert 0.0 <= value <= 100.0, (key, value)
                seen += 1
            seen += _check_units(value)
    elif isinstance(obj, list):
        seen += sum(_check_units(v) for v in obj)
    return seen


def _json(capsys, argv) -> dict:
    assert main([*argv, "--json", "--quiet", "--device", "cpu"]) == 0
    out, _ = capsys.readouterr()
    return json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_json_figures_are_percent(ckpt, tmp_path, capsys):
    ev = _json(capsys, ["evaluate", "--checkpoint", str(ckpt), "--nmi"])
    assert {"recall@1", "recall@8", "map", "nmi"} <= set(ev)
    assert _check_units(ev) >= 4
    assert ev["map"] > 1.0  # percent, not a fraction (this model ranks far better than 1%)
    at = _json(capsys, ["attack", "--checkpoint", str(ckpt), "--attack", "QA-", "--eps",
                        "8/255", "--num-attacks", "6", "--steps", "3"])
    assert at["eps"] == pytest.approx(8 / 255) and at["k"] == 1 and at["k_name"] == "m"
    assert _check_units(at) >= 6
    grid = _json(capsys, ["grid", "--checkpoint", str(ckpt), "--out", str(tmp_path), "--k", "1",
                          "--eps-values", "0,0.1", "--num-attacks", "4", "--attacks", "CA+"])
    assert _check_units(grid) >= 8


def test_progress_goes_to_stderr_and_quiet_silences_it(ckpt, capsys):
    assert main(["attack", "--checkpoint", str(ckpt), "--attack", "CA+", "--eps", "0.1",
                 "--num-attacks", "4", "--steps", "2", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("CA+ eps=0.1 w=1") and "attack" in err  # the tqdm bar
    assert main(["attack", "--checkpoint", str(ckpt), "--attack", "CA+", "--eps", "0.1",
                 "--num-attacks", "4", "--steps", "2", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
