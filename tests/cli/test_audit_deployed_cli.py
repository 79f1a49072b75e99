"""``advrank audit --query-budget B [--feedback F]``: the deployed view's query-only rows in the
text and JSON output; bad query settings as one error line before any work."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38])
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, model, {"dataset": "digits", "arch": "c2f1", "metric": "cosine",
                                  "embed_dim": 16, "image_shape": [1, 8, 8], "mean": [0.3],
                                  "std": [0.38]})
    return path


def test_audit_prints_the_deployed_view(ckpt, tmp_path, cli):
    argv = ["audit", "--checkpoint", ckpt, "--out", tmp_path / "a", "--eps", "0.3",
            "--attacks", "QA+", "--num-attacks", "3", "--steps", "2", "--examples", "0",
            "--query-budget", "6", "--feedback", "topk:20", "--device", "cpu", "--quiet"]
    status, out, err = cli(argv)
    assert status == 0, err
    assert "deployed view:" in out and "| QA+ | query-only: 6 queries, topk:20 feedback" in out
    status, out, err = cli([*argv, "--json", "--transfer-from", ckpt])  # resumed, + transfer
    assert status == 0, err
    d = json.loads(out)["deployed"]
    assert [r["view"] for r in d["rows"]] == ["white-box", "transfer", "query-only"]
    white, moved = d["rows"][:2]  # from the audited model itself: the white-box attack
    assert moved["rank_after"] == white["rank_after"] == moved["source"]["rank_after"]
    assert d["query"]["feedback"] == "topk:20"
    assert (tmp_path / "a" / "rank_vs_queries.png").is_file()


@pytest.mark.parametrize("extra,words", [
    (["--feedback", "topk:5"], "give a query budget too"),
    (["--query-budget", "0"], "--query-budget"),
    (["--query-budget", "5", "--feedback", "top:5"], "feedback must be"),
    (["--query-budget", "5", "--attacks", "CA+,CA-"], "query-only form"),
    (["--transfer-from", "missing.pt"], "no checkpoint file missing.pt")])
def test_bad_query_settings_are_one_error_line(ckpt, tmp_path, cli, one_error_line, extra,
                                               words):
    one_error_line(*cli(["audit", "--checkpoint", ckpt, "--out", tmp_path / "a", *extra,
                         "--quiet"]), words)
    assert not (tmp_path / "a").exists()


def test_the_deployed_view_says_its_worst_case_and_top_100(ckpt, tmp_path, cli):
    """With an index and a pipeline, the deployed view has sentences of its own (its worst
    cases, also in the verdict), and every share in the top results says its depth."""
    argv = ["audit", "--checkpoint", ckpt, "--out", tmp_path / "a", "--eps", "0.3",
            "--attacks", "CA+,QA+", "--num-attacks", "4", "--steps", "2", "--examples", "0",
            "--index", "hnsw", "--pipeline", "png", "--device", "cpu", "--quiet"]
    status, out, err = cli(argv)
    assert status == 0, err
    assert "(% in top 100)" in out and "% in top results" not in out
    assert "Deployed, the strongest attack is" in out  # after the upload pipeline
    assert "Through the hnsw index" in out and "in the top 100 results" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    worst = report["summary"]["verdict"]["deployed"]
    assert worst["rank"]["view"] == "pipeline" and worst["depth"] == 100
    assert worst["topk"]["view"] in ("index", "index-pipeline")
    page = (tmp_path / "a" / "report.html").read_text()
    verdict = page[page.index('id="verdict"'):page.index("Retrieval quality")]
    assert "Through the hnsw index" in verdict and "in top 100<br>" in page
    assert "estimated / actual time" in page
