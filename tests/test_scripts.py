"""The defense-table scripts: their --dry-run command lines parse with advrank's own parser
(every option valid, nothing run), with the recipe each table promises; the table script
turns result files into the rows they hold."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from advrank.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, monkeypatch):
    """``scripts/NAME.py`` as a module, with scripts/ on the path (as `python scripts/...`
    finds its own helpers)."""
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    done = subprocess.run(["bash", str(REPO / "scripts" / script), "--dry-run", *args],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def parsed(line: str):
    """advrank's parsed namespace of one printed ``advrank ... > FILE`` line."""
    words = shlex.split(line.split(" > ")[0])
    assert words[0] == "advrank"
    return build_parser().parse_args(words[1:])


def test_tab_sota_dry_run_is_the_cvpr22_recipe():
    lines = dry_run("tab_sota.sh")
    commands = [parsed(x) for x in lines if x.startswith("advrank ")]
    assert len(commands) == 3 * 5 * 3 and lines[-1].startswith("python3 scripts/defense_table")
    trains = [a for a in commands if a.func.__name__ == "cmd_train"]
    assert {(a.dataset, a.defense) for a in trains} == {
        (d, x) for d in ("cub", "cars", "sop") for x in (None, "est", "act", "hm", "hm-ics")}
    for a in trains:
        assert (a.arch, a.pretrained, a.loss, a.epochs, a.batch_size) == (
            "resnet18", "DEFAULT", "triplet", 75, 56)
        if a.defense:
            assert (a.defense_eps, a.defense_steps, a.defense_step_size) == pytest.approx(
                (8 / 255, 32, 1 / 255))
    ers = [a for a in commands if a.func.__name__ == "cmd_robustness"]
    assert len(ers) == 15 and {a.profile for a in ers} == {"rob224"}
    assert {a.checkpoint for a in ers} == {a.out for a in trains}


def test_tab_sota_refuses_an_unknown_dataset():
    done = subprocess.run(["bash", str(REPO / "scripts" / "tab_sota.sh"), "--dry-run", "cifar"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown dataset cifar" in done.stderr


def test_fashion_defenses_dry_run_has_one_budget():
    lines = dry_run("fashion_defenses.sh", STEPS="8", STEP_SIZE="12/255")
    commands = [parsed(x) for x in lines if x.startswith("advrank ")]
    trains = [a for a in commands if a.func.__name__ == "cmd_train"]
    assert [a.defense for a in trains] == [None, "est", "act", "hm", "hm-ics"]
    assert {(a.dataset, a.arch, a.epochs, a.batch_size, a.lr, a.seed) for a in trains} == {
        ("fashion", "c2f1", 8, 128, 1e-3, 0)}
    assert {(a.defense_eps, a.defense_steps, a.defense_step_size) for a in trains[1:]} == {
        (77 / 255, 8, 12 / 255)}
    ers = [a for a in commands if a.func.__name__ == "cmd_robustness"]
    assert [a.profile for a in ers] == ["rob28"] * 5 and min(a.num_attacks for a in ers) >= 500
    assert "--scores" in lines[-1]


def test_defense_table_rows(tmp_path):
    scores = {f"S{i}": float(i) for i in range(10)}
    for defense, r1, ers in (("hm", 80.25, 31.0), ("none", 90.0, 5.5)):
        folder = tmp_path / "fashion" / defense
        folder.mkdir(parents=True)
        (folder / "evaluate.json").write_text(json.dumps({"recall@1": r1}))
        (folder / "robustness.json").write_text(json.dumps(
            {"ers": ers, "ers_ci": [ers - 1, ers + 2], "scores": scores}))
    (tmp_path / "fashion" / "act").mkdir()  # not measured yet
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "defense_table.py"),
                           str(tmp_path), "fashion", "--scores"],
                          capture_output=True, text=True, timeout=60, check=True)
    rows = done.stdout.splitlines()
    assert rows[0].split(" | ")[3:5] == ["S0", "S1"] and rows[0].endswith("ERS [95% CI] |")
    assert rows[2] == "| fashion | vanilla | 90.0 | " + " | ".join(
        f"{v:.3g}" for v in scores.values()) + " | 5.5 [4.5, 7.5] |"
    assert rows[3] == "| fashion | ACT | - | " + "- | " * 10 + "- |"
    assert rows[4].startswith("| fashion | HM | 80.2 |") and rows[4].endswith("31.0 [30.0, 33.0] |")


@pytest.mark.parametrize("oracle", ["local", "http"])
def test_order_attacks_script_writes_its_table_and_record(tmp_path, monkeypatch, oracle):
    """scripts/order_attacks.py on a tiny digits model: one row per attack and budget (and
    the white-box ceiling), the record (command, seed, commit, hardware), advorder's curve;
    ``http``: through `advrank serve` started (and stopped) by the script on loopback."""

    from advrank.training import TrainConfig, train

    ckpt = tmp_path / "digits.pt"
    train(TrainConfig(dataset="digits", epochs=1, embed_dim=16, device="cpu"), ckpt,
          progress=False)
    script = load_script("order_attacks", monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--checkpoint", str(ckpt), "--out", str(out), "--num-attacks", "4",
                        "--budgets", "41,21", "--k", "3", "--seed", "5",
                        "--oracle", oracle]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["seconds"]["ORDER queries/s"] > 0 and record["settings"]["oracle"] == oracle
    assert {"command", "seed", "commit", "hardware"} <= set(record) and record["seed"] == 5
    rows = [(r["attack"], r["budget"]) for r in record["rows"]]
    assert rows == [("ORDER", None), ("ORDER", 21), ("ES", 21), ("ORDER", 41), ("ES", 41)]
    assert all(r["queries_used"] <= r["budget"] for r in record["rows"][1:])
    assert all(-1 <= r["tau_after"] <= 1 for r in record["rows"])
    table = (out / "results.md").read_text()
    assert table.count("| ORDER |") == 3 and "| NES | 0.309 |" in table
    assert ("through the HTTP service" in table) == (oracle == "http")


def test_query_sweep_script_writes_cells_tables_and_resumes(tmp_path, monkeypatch):
    """scripts/query_sweep.py on a tiny digits model: one cell per (kind, eps, configuration)
    with a figure per budget (a budget-following optimiser run once per budget), the record,
    the tables; a second run finds every cell done and runs nothing."""

    from advrank.training import TrainConfig, train

    ckpt = tmp_path / "digits.pt"
    train(TrainConfig(dataset="digits", epochs=1, embed_dim=16, device="cpu"), ckpt,
          progress=False)
    script = load_script("query_sweep", monkeypatch)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--out", str(out), "--num-attacks", "3", "--budgets",
            "10,25", "--kinds", "ORDER,QA-", "--eps", "8/255,0.3", "--seed", "2",
            "--configs", "random (old CLI default),square (default)"]
    assert script.main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert {"command", "seed", "commit", "hardware", "date"} <= set(record)
    cells = record["cells"]
    assert len(cells) == 2 * 2 * 2
    for c in cells:
        assert set(c["budgets"]) == {"10", "25"}
        assert all(b["queries_used"] <= int(n) for n, b in c["budgets"].items())
        runs = 2 if c["config"].startswith("random") else 1  # random: one run per budget
        assert c["queries_sent"] <= 3 * (10 + 25 if runs == 2 else 25) + 3 * runs
    table = (out / "results.md").read_text()
    assert "## digits.pt, ORDER" in table and "| square (default) |" in table
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert script.main(argv) == 0  # resumes: nothing left to run
    assert (out / "cells.jsonl").read_text().splitlines() == lines


@pytest.mark.parametrize("study", ["kinds", "optimizers"])
def test_endpoint_figures_script_reads_the_service_beside_the_local_copy(
        tmp_path, monkeypatch, untrained_digits, study):
    """scripts/endpoint_figures.py at tiny size through `advrank serve` (started and stopped
    by the script): one row per kind (or optimiser) and budget, the endpoint's top-k figures
    beside the local copy's ranks, the calibration and the record."""

    pytest.importorskip("fastapi")
    script = load_script("endpoint_figures", monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--checkpoint", str(untrained_digits), "--out", str(out), "--study",
                        study, "--num-attacks", "3", "--budgets", "21,41", "--kinds",
                        "QA+,ES", "--optimizers", "random,nes", "--seed", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert {"command", "seed", "commit", "hardware"} <= set(record) and record["seed"] == 2
    rows = [(r["attack"], r["optimizer"], r["budget"]) for r in record["rows"]]
    if study == "kinds":
        assert rows == [("ES", "nes", 21), ("ES", "nes", 41), ("QA+", "nes", 21),
                        ("QA+", "nes", 41)]
    else:  # the random search: one run per budget; NES: one run with checkpoints
        assert rows == [("QA+", "nes", 21), ("QA+", "nes", 41), ("QA+", "random", 21),
                        ("QA+", "random", 41)]
        assert len(record["runs"]) == 3
    for r in record["rows"]:
        assert r["queries_used"] <= r["budget"]
        assert r["endpoint:rank_after"] == pytest.approx(r["local:rank_after"], abs=1e-3)
    assert all(run["calibration"]["passed"] and run["figures_from"].startswith("endpoint, ")
               for run in record["runs"])
    assert "Every figure is read from the service's answers" in (out / "results.md").read_text()


def test_endpoint_figures_script_has_a_local_stand_in(tmp_path, monkeypatch, untrained_digits):
    """``--oracle local``: no service, the local copy as an 8-bit oracle; no calibration, and
    the table says where its figures come from."""
    script = load_script("endpoint_figures", monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--checkpoint", str(untrained_digits), "--out", str(out), "--study",
                        "optimizers", "--oracle", "local", "--num-attacks", "3", "--budgets",
                        "21,41", "--optimizers", "random,square", "--seed", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert [(r["optimizer"], r["budget"]) for r in record["rows"]] == [
        ("random", 21), ("random", 41), ("square", 21), ("square", 41)]
    assert all(run["oracle"] == "local" and run["eight_bit"] and "calibration" not in run
               for run in record["runs"])
    assert all(r["queries_used"] <= r["budget"] for r in record["rows"])
    assert "the local copy as an 8-bit oracle" in (out / "results.md").read_text()


def test_audit_estimates_script_records_estimate_and_time(tmp_path, monkeypatch):
    """scripts/audit_estimates.py --smoke: both audits at toy sizes from empty folders, each
    with the estimate it printed, the estimate and actual time from its report.json, the
    command's wall time and the script's record; the pictures are the same for the same seed."""

    script = load_script("audit_estimates", monkeypatch)
    out, work = tmp_path / "out", tmp_path / "work"
    assert script.main(["--smoke", "--out", str(out), "--work", str(work)]) == 0
    for name in ("digits", "photos"):
        row = json.loads((out / f"{name}.json").read_text())
        assert row["printed"].startswith("audit: estimated time about ")
        assert row["estimated_seconds"] > 0 and row["actual_seconds"] > 0
        assert row["wall_seconds"] >= row["actual_seconds"] and row["cells"]
        assert row["command"].startswith("advrank audit ")
    record = json.loads((out / "results.json").read_text())
    assert {"command", "commit", "hardware", "date"} <= set(record)
    assert "| digits |" in (out / "results.md").read_text()
    again = script.make_pictures(tmp_path / "again", 4, 48)
    assert all((again / p.relative_to(work / "photos")).read_bytes() == p.read_bytes()
               for p in (work / "photos").rglob("*.jpg"))


def test_text_attacks_script_writes_its_table_and_record(tmp_path, monkeypatch):
    """scripts/text_attacks.py on an untrained digits clip-tiny: text and picture CA+/CA- per
    eps, both retrieval qualities, and the record (command, seed, commit, hardware)."""

    pytest.importorskip("open_clip")
    import torch

    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("clip-tiny", (1, 8, 8), 16, [0.3], [0.38])
    ckpt = tmp_path / "dual.pt"
    save_checkpoint(ckpt, model, {"dataset": "digits", "arch": "clip-tiny", "metric": "cosine",
                                  "embed_dim": 16, "image_shape": [1, 8, 8], "mean": [0.3],
                                  "std": [0.38]})
    script = load_script("text_attacks", monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--checkpoint", str(ckpt), "--out", str(out), "--num-attacks", "3",
                        "--eps", "8/255,0.1", "--seed", "2"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert {"command", "seed", "commit", "hardware"} <= set(record) and record["seed"] == 2
    cells = {(c["query_form"], c["attack"], c["eps_text"]) for c in record["cells"]}
    assert cells == {(f, a, e) for f in ("text", "picture") for a in ("CA+", "CA-")
                     for e in ("8/255", "0.1")}
    assert record["text_retrieval"]["query_texts"] == 40
    assert all(0 <= c["rank_after"] <= 100 for c in record["cells"])
    table = (out / "results.md").read_text()
    assert table.count("| 8/255 |") == 1 and "text CA+ rank" in table


def test_catalog_attacks_script_reads_ranks_after_ingestion(tmp_path, monkeypatch,
                                                           trained_digits):
    """scripts/catalog_attacks.py at tiny size: the lab's CA+ images through `advrank serve
    --writable` (started by the script) under two pipelines and two indexes, one row each
    with the lab's and the endpoint's ranks, every upload deleted, the record written."""

    pytest.importorskip("fastapi")
    pytest.importorskip("faiss")
    script = load_script("catalog_attacks", monkeypatch)
    out = tmp_path / "out"
    assert script.main(["--checkpoint", str(trained_digits(16)), "--out", str(out),
                        "--num-attacks", "3", "--steps", "4", "--seed", "1",
                        "--query-attacks", "2", "--query-uploads", "3"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert {"command", "seed", "commit", "hardware"} <= set(record) and record["seed"] == 1
    rows = record["rows"]
    assert [(r["index"], r["pipeline"]) for r in rows] == [
        ("flat", "png"), ("flat", "jpeg:75"), ("hnsw", "png"), ("hnsw", "jpeg:75")]
    for r in rows:
        assert r["uploads_used"] == 3 and r["deletions"] == 3 and r["held_after"] == []
        assert r["rank_after"] == rows[0]["rank_after"]  # the same lab images everywhere
        assert 0 <= r["endpoint_after"] <= 100
        assert r["query:uploads_used"] == [3, 3] and r["query:held_after"] == []
    flat_png = rows[0]
    assert flat_png["endpoint_after"] == pytest.approx(flat_png["rank_seen_after"], abs=0.2)
    assert "token" not in json.dumps(record["settings"])
    assert "| flat | png |" in (out / "results.md").read_text()
    assert "Query-only CA+ through uploads" in (out / "results.md").read_text()
