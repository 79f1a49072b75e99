"""The audit of an endpoint alone (issue 29): ``advrank audit --oracle URL --data DIR`` with
no model attacks the folder's pictures through ``advrank serve``, reads every figure from the
service's answers, writes report.json and report.html through the store (a rerun resumes
and computes nothing), and refuses what an endpoint audit cannot do, in one line each."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def service(untrained_digits, serve):
    with serve(untrained_digits, "--max-k", "50") as running:
        yield running[0]


def audit_argv(url: str, folder, out, *extra: str) -> list[str]:
    return ["audit", "--oracle", url, "--data", f"imagefolder:{folder}", "--out", out,
            "--eps", "0.3", "--num-attacks", "4", "--query-budget", "12", "--json",
            "--quiet", *extra]


def test_an_endpoint_alone_is_audited_from_its_answers_and_resumes(service, image_folder,
                                                                   tmp_path, cli):
    out = tmp_path / "audit"
    status, text, err = cli(audit_argv(service, image_folder, out))
    assert status == 0, err
    summary = json.loads(text)
    rows = {r["attack"]: r for r in summary["rows"]}
    assert set(rows) == {"QA+", "QA-", "ES", "ORDER"}  # the query-only kinds with a form
    assert summary["evaluation"]["view"] == "top-50"  # --max-k 50 < |X|: censored, said so
    assert summary["calibration"]["figures"] == {"determinism": 1.0}  # no local copy
    for row in rows.values():
        head = row["topk_headline"]
        assert row["queries_used_max"] <= 12 and row["optimizer"] == "random"
        assert [p["queries"] for p in row["checkpoints"]] == [2, 3, 6, 12]
        assert f"{head}_after" in row and not any(k.startswith("local:") for k in row)
    # the candidates come from each picture's visible list: QA- starts inside the top 10,
    # QA+ outside it, ES from the whole clean list
    assert rows["QA-"]["in_topk_before"] == 100.0 and rows["QA+"]["in_topk_before"] == 0.0
    assert rows["ES"]["overlap@k_before"] == 100.0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "advrank-endpoint-audit" and len(report["cells"]) == 4
    assert report["config"]["endpoint"]["gallery_size"] == 719 and report["config"]["commit"]
    page = (out / "report.html").read_text()
    assert 'id="verdict"' in page and "every figure is read from the endpoint" in page
    assert (out / "success_vs_queries.png").stat().st_size > 1000
    before = (out / "report.json").stat().st_mtime_ns
    status, text, err = cli(audit_argv(service, image_folder, out))  # resumes: nothing to do
    assert status == 0, err
    assert json.loads(text)["rows"] == summary["rows"]
    assert json.loads((out / "report.json").read_text())["cells"] == report["cells"]
    assert (out / "report.json").stat().st_mtime_ns >= before


def test_endpoint_audit_options_are_checked_before_any_work(service, image_folder, tmp_path,
                                                            cli, one_error_line):
    out = tmp_path / "refused"
    one_error_line(*cli([*audit_argv(service, image_folder, out), "--steps", "3"]),
                   "--steps apply to a model's audit")
    one_error_line(*cli([*audit_argv(service, image_folder, out), "--attacks", "CA+"]),
                   "CA+ has no form an endpoint can show")
    one_error_line(*cli(["audit", "--oracle", service, "--out", out, "--quiet"]),
                   "give --data imagefolder:DIR")
    one_error_line(*cli([*audit_argv("local", image_folder, out)]),
                   "needs an endpoint (--oracle http://HOST:PORT)")
    one_error_line(*cli(["audit", "--checkpoint", "x.pt", "--optimizer", "nes,spsa", "--out",
                         out]), "several optimizers apply to the audit of an endpoint alone")
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def deep_service(untrained_digits, serve):
    """The same model serving every depth: exact ranks through rank_of."""
    with serve(untrained_digits, "--max-k", "1000") as running:
        yield running[0]


def test_a_model_s_deployed_view_goes_through_the_endpoint_calibrated_first(
        deep_service, service, untrained_digits, untrained_checkpoint, tmp_path, cli,
        one_error_line, serve):
    """With a model, --oracle sends the deployed view's query-only rows through the endpoint:
    calibrated against the model first, every figure read from its answers (its ranks, the
    local copy's beside them); another model behind it is refused in one line."""
    argv = ["audit", "--checkpoint", untrained_digits, "--attacks", "QA+,ES", "--eps", "0.3",
            "--num-attacks", "3", "--steps", "2", "--examples", "0", "--query-budget", "8",
            "--feedback", "topk:10", "--device", "cpu", "--json", "--quiet"]
    status, text, err = cli([*argv, "--oracle", deep_service, "--out", tmp_path / "a"])
    assert status == 0, err
    deployed = json.loads(text)["deployed"]
    assert deployed["query"]["oracle"] == deep_service
    rows = [r for r in deployed["rows"] if r["view"] == "query-only"]
    assert {r["attack"] for r in rows} == {"QA+", "ES"}
    cells = json.loads((tmp_path / "a" / "report.json").read_text())["cells"]
    query = [c for key, c in cells.items() if key.startswith("query|")]
    assert all(c["calibration"]["passed"] and c["evaluation"]["view"] == "ranks" and
               c["rank_after"] == pytest.approx(c["local:rank_after"], abs=1e-3)
               for c in query)
    one_error_line(*cli([*argv, "--oracle", service, "--out", tmp_path / "b"]),
                   "the deployed view reads ranks", "--max-k 719")
    other = untrained_checkpoint(tmp_path / "other.pt", seed=1)
    with serve(other, "--max-k", "1000") as (url, _):
        one_error_line(*cli([*argv, "--oracle", url, "--out", tmp_path / "c"]),
                       "disagrees with the local copy", "overlap@10")
