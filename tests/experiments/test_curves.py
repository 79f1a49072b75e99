"""Fig. 2 curves and the vanilla-vs-defended comparison (experiments/curves.py)."""

from __future__ import annotations

import csv
import json

import pytest

from advrank.cli import main
from advrank.defenses import make_defense
from advrank.experiments.curves import defense_comparison
from advrank.training import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A vanilla and an EST-defended digits model, one epoch each (trained once per module)."""
    root = tmp_path_factory.mktemp("ckpt")
    vanilla = train(TrainConfig(dataset="digits", epochs=1, embed_dim=16), root / "vanilla.pt",
                    progress=False)
    defended = train(TrainConfig(dataset="digits", epochs=1, embed_dim=16), root / "est.pt",
                     defense=make_defense("est", eps=0.1, steps=3), progress=False)
    return vanilla.checkpoint, defended.checkpoint


def test_curves_command_writes_and_resumes(checkpoints, tmp_path, capsys):
    vanilla, defended = checkpoints
    out = tmp_path / "curves"
    args = ["curves", "--checkpoint", vanilla, "--checkpoint", defended, "--out", str(out),
            "--num-attacks", "6", "--quiet", "--device", "cpu", "--json", "--eps-values"]
    assert main([*args, "0", "0.1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["computed"], result["reused"]) == (4, 0)
    stored = json.loads((out / "curves.json").read_text())
    assert len(stored["points"]) == 4 and len(stored["checkpoints"]) == 2
    with open(out / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["defense"] for r in rows} == {"", "est"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for p in stored["points"]:
        assert p["num_attacks"] == 6
        if p["eps"] == 0:
            assert p["shift_mean"] == 0 and p["CA+_after"] == p["CA+_before"]
        else:
            assert p["shift_mean"] > 0
    attacked = [p for p in stored["points"] if p["eps"] == 0.1 and p["defense"] is None][0]
    assert attacked["CA+_after"] < attacked["CA+_before"]  # CA+ raises the candidate

    # same request: everything reused; one more eps: only the new points computed
    assert main([*args, "0,0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] == 4
    assert main([*args, "0", "0.05", "0.1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["computed"], result["reused"]) == (2, 4)
    assert [p["eps"] for p in result["points"]] == [0.0, 0.05, 0.1] * 2


def test_curves_command_errors(checkpoints, tmp_path, capsys):
    base = ["curves", "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    assert main([*base, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--checkpoint", checkpoints[0], "--eps-values", "x"]) == 2
    assert "--eps-values" in capsys.readouterr().err
    assert main([*base, "--checkpoint", checkpoints[0], "--num-attacks", "0"]) == 2
    assert main([*base, "--checkpoint", checkpoints[0], "--eps-values", "2"]) == 2
    assert main([*base, "--checkpoint", checkpoints[0], "--num-attacks", "100000"]) == 2
    assert not (tmp_path / "curves.json").exists()


def test_defense_comparison(checkpoints):
    result = defense_comparison(*checkpoints, eps=0.1, num_attacks=4)
    rows = result["models"]
    assert rows["vanilla"]["defense"] is None and rows["defended"]["defense"] == "est"
    for row in rows.values():
        assert 0 < row["recall@1"] <= 100 and row["num_attacks"] == 4 and row["shift_mean"] > 0
    assert "vanilla" in result["text"] and "est, eps=0.1" in result["text"]
