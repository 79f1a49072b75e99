"""The audit's catalog rows (``advrank audit --catalog``) against a real ``advrank serve
--writable`` on the tiny digits checkpoint: the rows catalog-lab, catalog-upload and
catalog-query are written with the uploads and searches they used (within budget) and the
ids they uploaded, listed in report.json and report.html; the service's size and a fixed
picture's answer are the same afterwards (the catalog left as found); a rerun resumes without
uploading; a service that takes no uploads, a missing token or --catalog without a service
are refused in one line before any work. The attack command's query-only catalog attack
(``--query-budget --upload-budget``) keeps both budgets."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
import torch

pytest.importorskip("fastapi")

TOKEN = "audit-catalog-token"
T, UPLOADS, SEARCHES = 2, 3, 4


@pytest.fixture(scope="module")
def service(trained_digits, serve):
    with serve(trained_digits(16), "--writable", "--token", TOKEN, "--max-k",
                            "100000") as (url, _):
        yield url


def _state(url: str, picture: bytes) -> tuple[int, list[int], int]:
    """(gallery size, the ids answering a fixed picture, id bound)."""
    info = httpx.get(f"{url}/info", timeout=10).json()
    top = httpx.post(f"{url}/search?k=20", content=picture,
                     headers={"content-type": "image/png"}, timeout=10).json()
    return info["gallery_size"], top["ids"], info["id_bound"]


@pytest.fixture(scope="module")
def picture(trained_digits):
    from advrank.experiments.target import load_target
    from advrank.oracles.http import png_bytes

    target = load_target(str(trained_digits(16)), "cpu", progress=False)
    return png_bytes(target.gallery.images(torch.tensor([11])))[0]


def _audit(cli, ckpt, url, token_file, out, *extra):
    return cli(["audit", "--checkpoint", str(ckpt), "--attacks", "CA+", "--eps", "0.3",
                "--num-attacks", str(T), "--steps", "2", "--examples", "0",
                "--max-queries", "50", "--query-budget", str(SEARCHES), "--upload-budget",
                str(UPLOADS), "--catalog", "--oracle", url, "--token-file", str(token_file),
                "--out", str(out), "--json", *extra])


def test_the_audit_writes_the_catalog_rows_and_leaves_the_catalog_as_found(
        cli, tmp_path, service, trained_digits, picture):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    size0, top0, bound0 = _state(service, picture)
    status, out, err = _audit(cli, trained_digits(16), service, token, tmp_path / "a")
    assert status == 0, err
    summary = json.loads(out)
    size1, top1, bound1 = _state(service, picture)
    assert (size1, top1) == (size0, top0) and bound1 > bound0  # ids are never reused
    d = summary["deployed"]
    rows = {r["view"]: r for r in d["rows"] if r["view"].startswith("catalog")}
    assert set(rows) == {"catalog-lab", "catalog-upload", "catalog-query"}
    assert rows["catalog-upload"]["uploads_used"] == T
    assert rows["catalog-upload"]["searches_used"] == T  # w = 1 query per attack
    query = rows["catalog-query"]
    assert query["uploads_used"] <= T * UPLOADS and query["searches_used"] <= T * SEARCHES
    assert (query["uploads_per_attack"], query["searches_per_attack"]) == (UPLOADS, SEARCHES)
    for row in rows.values():
        assert 0 <= row["rank_after"] <= 100 and row["eps"] == 0.3
    ids = d["catalog"]["uploaded_ids"]
    assert ids == sorted(rows["catalog-upload"]["uploaded_ids"]
                         + rows["catalog-query"]["uploaded_ids"])
    assert len(ids) == bound1 - bound0 - 2  # the probe's two uploads aside
    assert all(bound0 <= i < bound1 for i in ids)
    worst = summary["verdict"]["deployed"]["rank"]
    assert worst["view"] in ("catalog-upload", "catalog-query")
    html = (tmp_path / "a" / "report.html").read_text()
    assert "Through the catalog" in html and str(ids[-1]) in html
    assert TOKEN not in html + (tmp_path / "a" / "report.json").read_text() + out + err
    # the same command again resumes: nothing left to run, nothing uploaded
    status, out, err = _audit(cli, trained_digits(16), service, token, tmp_path / "a")
    assert status == 0, err
    assert _state(service, picture) == (size1, top1, bound1), err


@pytest.fixture(scope="module")
def read_only(trained_digits, serve):
    with serve(trained_digits(16)) as (url, _):
        yield url


def test_the_audit_refuses_the_catalog_before_any_work(cli, one_error_line, tmp_path,
                                                       service, read_only, trained_digits):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    ckpt, out = str(trained_digits(16)), tmp_path / "never"
    for argv, message in (
            (["--catalog", "--oracle", read_only, "--token-file", str(token)],
             "takes no uploads"),
            (["--catalog", "--oracle", service], "--catalog needs --token-file"),
            (["--catalog", "--token", TOKEN], "--catalog needs --oracle"),
            (["--token", TOKEN], "--token is for --catalog"),
            (["--catalog", "--oracle", service, "--token", TOKEN, "--attacks", "QA+"],
             "CA+ or CA-"),
            (["--catalog", "--oracle", service, "--token", TOKEN, "--query-budget", "1"],
             "searches per attack")):
        one_error_line(*cli(["audit", "--checkpoint", ckpt, "--eps", "0.3", "--out", str(out),
                             *argv]), message)
        assert not out.exists()
    one_error_line(*cli(["audit", "--oracle", service, "--data", "digits", "--catalog",
                         "--token", TOKEN, "--out", str(out)]), "--checkpoint or --model")


def test_a_service_of_another_size_is_refused():
    from advrank.errors import AdvrankError
    from advrank.experiments.audit.catalog import CatalogLink

    link = CatalogLink("http://127.0.0.1:9", "t0ken")
    link.info = SimpleNamespace(gallery_size=10, id_bound=12)
    link.check_size(10)  # items added and removed since: fine
    with pytest.raises(AdvrankError, match="holds 10 items, the local gallery 11"):
        link.check_size(11)
    assert "t0ken" not in repr(link)


def test_catalog_cells_are_checked_before_reuse():
    from advrank.experiments.audit.catalog import check_catalog_cell

    cell = {"attack": "CA+", "eps": 0.3, "k": 1, "rank_before": 50.0, "rank_after": 10.0,
            "rank_after_se": 1.0, "endpoint_before": 50.0, "endpoint_after": 12.0,
            "endpoint_after_se": 1.0, "service_key": "abc",
            "catalog": {"uploaded_ids": [20, 21], "held_after": [], "uploads_used": [2, 3],
                        "searches_used": [4, 4], "uploads_per_attack": 3,
                        "searches_per_attack": 4}}
    key = "catalog-query|CA+|0.3|1|abc|3|4"
    assert check_catalog_cell(key, cell) is None
    assert "service" in check_catalog_cell(key.replace("abc", "xyz"), cell)
    assert "budget" in check_catalog_cell("catalog-query|CA+|0.3|1|abc|2|4", cell)
    assert "key" in check_catalog_cell("catalog-query|CA+|0.3|1|abc|x|4", cell)
    assert "key" in check_catalog_cell("catalog|CA+|0.3|1", cell)
    held = {**cell, "catalog": {**cell["catalog"], "held_after": [21]}}
    assert "deleted" in check_catalog_cell(key, held)
    over = {**cell, "catalog": {**cell["catalog"], "searches_used": [4, 5]}}
    assert "past the budget" in check_catalog_cell(key, over)


def test_the_attack_command_runs_query_only_through_uploads(cli, one_error_line, tmp_path,
                                                           service, trained_digits, picture):
    ckpt = str(trained_digits(16))
    before = _state(service, picture)[:2]
    status, out, err = cli(["attack", "--checkpoint", ckpt, "--attack", "CA+", "--eps", "0.3",
                            "--num-attacks", str(T), "--catalog", "--oracle", service,
                            "--token", TOKEN, "--query-budget", str(SEARCHES),
                            "--upload-budget", str(UPLOADS), "--json", "--quiet"])
    assert status == 0, err
    cat = json.loads(out)["catalog"]
    assert len(cat["uploads_used"]) == T and max(cat["uploads_used"]) <= UPLOADS
    assert max(cat["searches_used"]) <= SEARCHES and cat["held_after"] == []
    assert len(cat["uploaded_ids"]) == sum(cat["uploads_used"]) == cat["deletions"]
    assert _state(service, picture)[:2] == before and TOKEN not in out + err
    base = ["attack", "--checkpoint", ckpt, "--attack", "CA+", "--eps", "0.3", "--quiet"]
    for extra, message in (
            (["--catalog", "--oracle", service, "--token", TOKEN, "--upload-budget", "3"],
             "add --query-budget"),
            (["--catalog", "--oracle", service, "--token", TOKEN, "--query-budget", "4",
              "--steps", "3"], "--steps apply to white-box PGD"),
            (["--upload-budget", "3"], "--upload-budget is for --catalog"),
            (["--catalog", "--oracle", service, "--token", TOKEN, "--query-budget", "1"],
             "below one read")):
        one_error_line(*cli(base + extra), message)
