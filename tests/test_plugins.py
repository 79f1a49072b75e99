"""A third-party plugin (``tests/plugins/example``: a model, a dataset, an attack kind and a
defense, each one file) works through the CLI, loaded with ``--plugin`` and installed as a
package whose entry point advrank discovers by itself.

Each command runs in a subprocess, so the plugin's parts never leak into the registries of
the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugins" / "example"


def advrank(args: list[str], pythonpath: list[Path], cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "advrank", *args, "--json", "--quiet",
                           "--device", "cpu"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plugin_parts_via_the_plugin_option(tmp_path):
    path = [PLUGIN]
    trained = advrank(["--plugin", "advrank_example", "train", "--dataset", "blobs", "--arch",
                       "mlp", "--epochs", "3", "--batch-size", "30", "--out", "m.pt"],
                      path, tmp_path)
    assert trained["recall@1"] > 60  # three well separated patterns
    attacked = advrank(["attack", "--plugin", "advrank_example", "--checkpoint", "m.pt",
                        "--attack", "AWAY", "--eps", "0.2", "--num-attacks", "10"],
                       path, tmp_path)
    assert attacked["attack"] == "AWAY" and attacked["k_name"] is None
    assert attacked["rank_after"] > attacked["rank_before"]  # pushed away from its neighbour
    grid = advrank(["grid", "--plugin", "advrank_example", "--checkpoint", "m.pt", "--out",
                    "grid", "--attacks", "AWAY,CA+", "--k", "1", "--eps-values", "0,0.2",
                    "--num-attacks", "6"], path, tmp_path)
    assert {(c["attack"], c["eps"]) for c in grid["cells"]} == {
        ("AWAY", 0.0), ("AWAY", 0.2), ("CA+", 0.0), ("CA+", 0.2)}
    assert "AWAY k=1" in (tmp_path / "grid" / "table.md").read_text()
    defended = advrank(["train", "--plugin", "advrank_example", "--dataset", "blobs",
                        "--init", "m.pt", "--defense", "noise", "--defense-eps", "0.1",
                        "--epochs", "1", "--batch-size", "30", "--out", "d.pt"],
                       path, tmp_path)
    assert defended["defense"] == "noise" and defended["defense_eps"] == 0.1


def test_installed_plugin_is_discovered_through_its_entry_point(tmp_path):
    site, source = tmp_path / "site", tmp_path / "plugin-source"
    shutil.copytree(PLUGIN, source)  # pip builds in place: keep the repository clean
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(source)],
                         capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        pytest.fail(f"pip could not install the example plugin: {pip.stderr[-500:]}")
    # no --plugin: the entry point in the installed package's metadata brings the parts in
    trained = advrank(["train", "--dataset", "blobs", "--arch", "mlp", "--epochs", "2",
                       "--batch-size", "30", "--out", "m.pt"], [site], tmp_path)
    attacked = advrank(["attack", "--checkpoint", "m.pt", "--attack", "AWAY", "--eps", "0.2",
                        "--num-attacks", "5"], [site], tmp_path)
    assert trained["epochs"] == 2 and attacked["num_attacks"] == 5


#: run in one subprocess (one torch import; the plugin stays out of this process's registry)
PARAMETER_RUN = """
import contextlib, io, json, sys
from advrank.cli import build_parser, main
from advrank.registry import load_plugin

load_plugin("advrank_example")
out = {"help": {}}
commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and
                isinstance(a.choices, dict)).choices
for name in ("attack", "grid"):
    out["help"][name] = " ".join(commands[name].format_help().split())

def run(name, argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = main([*argv, "--json", "--quiet", "--device", "cpu"])
    assert status == 0, (name, status)
    out[name] = json.loads(buf.getvalue())

run("train", ["train", "--dataset", "blobs", "--arch", "mlp", "--epochs", "1", "--batch-size",
              "30", "--out", "m.pt"])
common = ["--checkpoint", "m.pt", "--num-attacks", "6", "--attack"]
run("pushed", ["attack", *common, "AWAY", "--eps", "0.2", "--neighbour", "2"])
run("pulled", ["attack", *common, "AWAY", "--eps", "0.2", "--neighbour", "2", "--toward",
               "true"])
run("grid", ["grid", *common[:-1], "--attacks", "AWAY", "--out", "grid", "--eps", "0.2",
             "--neighbour", "3"])
print(json.dumps(out))
"""


def test_plugin_kind_parameters_reach_help_and_results(tmp_path):
    """AWAY declares ``neighbour`` and ``toward`` once; with no CLI edit they are flags of
    ``attack`` and ``grid``, reach the kind, and every result records them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PLUGIN), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", PARAMETER_RUN], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for command, text in out["help"].items():
        assert "--neighbour N AWAY: which neighbour is the target" in text, command
        assert "--toward {true,false} AWAY: pull the query toward the target" in text
        assert "AWAY: push a query away from its nearest neighbour" in text
    pushed, pulled = out["pushed"], out["pulled"]
    assert (pushed["neighbour"], pushed["toward"]) == (2, False)
    assert (pulled["neighbour"], pulled["toward"]) == (2, True)
    assert pulled["rank_after"] < pushed["rank_after"]  # the flag changed the attack
    assert out["grid"]["cells"] and all(c["neighbour"] == 3 and c["toward"] is False
                                        for c in out["grid"]["cells"])
    stored = (tmp_path / "grid" / "results.json").read_text()
    assert '"neighbour": 3' in stored and '"toward": false' in stored
