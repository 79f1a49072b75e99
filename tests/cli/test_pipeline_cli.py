"""``--pipeline``/``--through-pipeline`` on attack, grid and audit, and ``--index`` on audit:
figures after the upload pipeline in the output, bad specs as one error line before any work."""

from __future__ import annotations

import json

import pytest

COMMON = ["--device", "cpu", "--quiet", "--json"]


@pytest.fixture(scope="module")
def ckpt(untrained_digits):
    return untrained_digits


def test_attack_and_grid_report_the_pipeline_figures(ckpt, tmp_path, cli):
    attack = ["attack", "--checkpoint", ckpt, "--attack", "QA+", "--eps", "0.1", "--steps", "3",
              "--num-attacks", "5", *COMMON]
    status, out, err = cli([*attack, "--pipeline", "jpeg:75", "--through-pipeline"])
    assert status == 0, err
    s = json.loads(out)
    assert s["threat"]["pipeline"] == "jpeg:75" and s["threat"]["through_pipeline"] is True
    assert {"rank_after", "rank_pipeline_before", "rank_pipeline_after"} <= set(s)
    status, out, err = cli([*attack[:-1], "--pipeline", "png"])  # the text line
    assert status == 0 and "rank_pipeline" in out, err

    grid = ["grid", "--checkpoint", ckpt, "--out", tmp_path / "g", "--eps-values", "0.1",
            "--ks", "1", "--attacks", "CA+", "--num-attacks", "3", "--paper", "none", *COMMON]
    status, out, err = cli([*grid, "--pipeline", "png", "--index", "flat"])
    assert status == 0, err
    (cell,) = json.loads(out)["cells"]
    assert {"rank_pipeline_after", "rank_topk_index_pipeline_after"} <= set(cell)
    status, out, err = cli([*grid, "--pipeline", "jpeg:75", "--index", "flat"])
    assert status == 2 and "pipeline='png', this run 'jpeg:75'" in err


def test_audit_takes_index_and_pipeline(ckpt, tmp_path, cli):
    argv = ["audit", "--checkpoint", ckpt, "--out", tmp_path / "a", "--eps", "0.1",
            "--attacks", "CA+", "--num-attacks", "3", "--steps", "2", "--examples", "0",
            "--index", "flat", "--pipeline", "png", *COMMON]
    status, out, err = cli(argv)
    assert status == 0, err
    (row,) = json.loads(out)["attacks"]
    assert {"rank_pipeline_after", "rank_topk_index_after"} <= set(row)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["config"]["index"] == "flat" and report["config"]["pipeline"] == "png"
    status, out, err = cli([*argv[:-len(COMMON) - 2], *COMMON])  # no pipeline: another audit
    assert status == 2 and "pipeline='png', this run None" in err


@pytest.mark.parametrize("spec,words", [
    ("jpeg:0", "1..100"), ("jpeg:101", "1..100"), ("jpeg:x", "1..100"),
    ("gif", "unknown pipeline 'gif'"), ("png:9", "takes no argument")])
def test_bad_pipeline_specs_are_one_error_line(ckpt, tmp_path, cli, one_error_line, spec,
                                               words):
    for argv in (["attack", "--checkpoint", ckpt, "--attack", "CA+", "--eps", "0.1"],
                 ["grid", "--checkpoint", ckpt, "--out", tmp_path / "g"],
                 ["audit", "--checkpoint", ckpt, "--out", tmp_path / "a"]):
        one_error_line(*cli([*argv, "--pipeline", spec, "--quiet"]), "--pipeline", words)
    assert not (tmp_path / "g").exists() and not (tmp_path / "a").exists()


def test_through_pipeline_needs_a_pipeline(ckpt, tmp_path, cli, one_error_line):
    for argv in (["attack", "--checkpoint", ckpt, "--attack", "CA+", "--eps", "0.1"],
                 ["grid", "--checkpoint", ckpt, "--out", tmp_path / "g"],
                 ["audit", "--checkpoint", ckpt, "--out", tmp_path / "a"]):
        one_error_line(*cli([*argv, "--through-pipeline", "--quiet"]), "needs a pipeline")
    assert not (tmp_path / "g").exists() and not (tmp_path / "a").exists()
