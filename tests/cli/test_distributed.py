"""``torchrun --nproc-per-node 2 -m advrank attack|grid|train`` on CPU (gloo, loopback) against
one process with the same seed: attack and grid give identical figures, train the same run up
to floating-point summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from advrank.cli import main
from advrank.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

VOLATILE = {"seconds", "date", "processes", "command", "checkpoint", "train_seconds", "out"}


def torchrun(args: list[str], cwd) -> str:
    """stdout of ``torchrun --standalone --nproc-per-node 2 -m advrank ARGS`` (must succeed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "advrank", *args],
                         capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def one_process(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "digits.pt"
    assert main(["train", "--dataset", "digits", "--arch", "c2f1", "--embed-dim", "16",
                 "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--quiet",
                 "--out", str(path)]) == 0
    return path


def _same(a: dict, b: dict) -> None:
    keys = (set(a) | set(b)) - VOLATILE
    assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}


def test_attack_under_torchrun_equals_one_process(ckpt, tmp_path, capsys):
    # --k, not --m: torchrun's own parser takes --m for an abbreviation of its options
    args = ["attack", "--checkpoint", str(ckpt), "--attack", "QA+", "--eps", "0.1", "--k", "2",
            "--num-attacks", "22", "--batch-size", "4", "--steps", "4", "--device", "cpu",
            "--json", "--quiet"]
    two = json.loads(torchrun(args, tmp_path))
    one = json.loads(one_process(args, capsys))
    assert two["processes"] == 2 and "processes" not in one
    assert two["num_attacks"] == 22  # 6 batches of 4: 3 per process, the last one short
    _same(one, two)


def test_grid_under_torchrun_equals_one_process(ckpt, tmp_path, capsys):
    args = ["grid", "--checkpoint", str(ckpt), "--eps-values", "0.01", "--ks", "1",
            "--attacks", "CA-,QA+", "--num-attacks", "18", "--batch-size", "4", "--device",
            "cpu", "--quiet"]
    torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    one_process([*args, "--out", str(tmp_path / "one")], capsys)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["config"]["processes"] == 2
    assert set(two["cells"]) == set(one["cells"]) and len(one["cells"]) == 2
    for key, cell in one["cells"].items():
        _same(cell, two["cells"][key])
    assert (tmp_path / "two" / "table.md").is_file()


def test_train_under_torchrun_is_the_same_run(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--arch", "c2f1", "--embed-dim", "16", "--epochs",
            "1", "--batch-size", "64", "--device", "cpu", "--quiet", "--json"]
    two = json.loads(torchrun([*args, "--out", str(tmp_path / "two.pt")], tmp_path))
    one = json.loads(one_process([*args, "--out", str(tmp_path / "one.pt")], capsys))
    assert load_checkpoint(tmp_path / "two.pt")["meta"]["processes"] == 2
    # the same batches, the loss of the whole batch: equal up to summation order
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=0.02)
    assert two["recall@1"] == pytest.approx(one["recall@1"], abs=1.5)
    w_one = load_checkpoint(tmp_path / "one.pt")["model"]
    w_two = load_checkpoint(tmp_path / "two.pt")["model"]
    for name, value in w_one.items():
        assert torch.allclose(value, w_two[name], atol=5e-3), name


def test_commands_that_do_not_share_their_work_are_refused(ckpt, tmp_path):
    # what torchrun gives its workers (the refusal comes before any rendezvous)
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "2", "RANK": "0",
           "LOCAL_RANK": "0"}
    out = subprocess.run([sys.executable, "-m", "advrank", "universal", "--checkpoint",
                          str(ckpt), "--attack", "CA+", "--eps", "0.1", "--out",
                          str(tmp_path / "u")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "advrank: error: universal does not run under torchrun with several processes "
        "(commands that do: attack, grid, train, evaluate); run it as one process"]


def test_an_error_under_torchrun_is_printed_by_rank_0_alone(ckpt, tmp_path):
    """Every process fails the same way; the error line appears once, each exits with 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "advrank", "attack", "--checkpoint",
                          str(ckpt), "--attack", "CA+", "--eps", "0.1", "--num-attacks",
                          "100000", "--device", "cpu", "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if "advrank: error:" in line]
    assert len(errors) == 1 and "100000" in errors[0], out.stderr[-3000:]
    assert "exitcode  : 2" in out.stderr or "exit code: 2" in out.stderr.lower() or \
        "exitcode: 2" in out.stderr.replace(" ", ""), out.stderr[-3000:]
