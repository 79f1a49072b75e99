"""White-box CA± through the catalog (a real ``advrank serve --writable --pipeline png`` on an
exact index, the tiny digits checkpoint): the rank read from the endpoint after ingestion
equals the lab's rank of the 8-bit upload (the same arithmetic: q and c left out), and lies
within the 8-bit quantisation of the lab's float rank; the run leaves the catalog as it found
it (gallery size, a fixed picture's answer), its uploads listed and deleted; the CLI option
only parses and refuses, in one line, where it does not apply."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")

TOKEN = "catalog-token-for-tests"
T, W = 4, 2


@pytest.fixture(scope="module")
def service(trained_digits, serve):
    with serve(trained_digits(16), "--writable", "--token", TOKEN, "--max-k",
                            "100000", "--pipeline", "png") as (url, _):
        yield url


@pytest.fixture(scope="module")
def target(trained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(trained_digits(16)), "cpu", progress=False)


@pytest.fixture(scope="module")
def outcome(service, target):
    from advrank.attacks.threat import LinfThreatModel
    from advrank.experiments.catalog import run_catalog_attack
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle

    oracle = HttpOracle(service, "topk:1")
    oracle.check_service()
    fixed = target.gallery.images(torch.tensor([11]))[0]
    try:
        catalog = CatalogClient(oracle, TOKEN, T)
        answer0, info0 = catalog.top(fixed, 50), catalog.read_info()
        with catalog:
            result = run_catalog_attack(target.model, target.gallery, "CA+", catalog, 0.3, W,
                                        T, seed=3, threat=LinfThreatModel(0.3, steps=8),
                                        progress=False)
        yield result, (answer0, info0), (catalog.top(fixed, 50), catalog.read_info())
    finally:
        oracle.close()


def test_the_endpoint_reads_the_labs_rank_of_the_8bit_upload(outcome):
    result, _, _ = outcome
    n = result.gallery_size
    step = 100.0 / n  # one position, in % of |X|
    for when in (result.before, result.after):
        for endpoint, seen in zip(when["endpoint"], when["rank_seen"], strict=True):
            assert abs(endpoint - seen) <= step / W + 1e-4  # ties aside: the same count
    # the clean c is found where the lab ranks it, within the queries' own 8-bit rounding
    # (a position or two); c~ within the 8-bit quantisation of its float pixels
    assert result.before["endpoint"] == pytest.approx(result.before["rank"], abs=2 * step)
    assert result.figures["endpoint_after"] < result.figures["endpoint_before"]
    assert result.figures["endpoint_after"] == pytest.approx(result.figures["rank_after"],
                                                             abs=5.0)


def test_the_catalog_is_left_as_found(outcome):
    result, (answer0, info0), (answer1, info1) = outcome
    cat = result.extra["catalog"]
    assert info1.gallery_size == info0.gallery_size and answer1 == answer0
    assert info1.id_bound == info0.id_bound + T  # ids are never reused
    assert cat["uploads_used"] == T and cat["deletions"] == T and cat["held_after"] == []
    assert cat["uploaded_ids"] == list(range(info0.id_bound, info0.id_bound + T))
    assert cat["searches_used"] == T * W and cat["read_by"] == "rank_of"
    assert cat["censored_at"] is None and cat["pipeline"] == "png"
    assert cat["clean_candidate"].startswith("kept")
    assert TOKEN not in repr(result.to_dict())


def test_the_attack_command_refuses_the_catalog_where_it_does_not_apply(
        cli, one_error_line, tmp_path, trained_digits):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    ckpt = str(trained_digits(16))
    for extra, message in (
            (["--attack", "QA+", "--oracle", "http://127.0.0.1:9", "--token-file",
              str(token)], "--catalog runs CA+ or CA-"),
            (["--attack", "CA+", "--token-file", str(token)], "--catalog needs --oracle"),
            (["--attack", "CA+", "--oracle", "http://127.0.0.1:9"], "--token-file"),
            (["--attack", "CA+", "--oracle", "http://127.0.0.1:9", "--token", "abcdefgh1",
              "--pipeline", "png"], "--pipeline do not apply to --catalog"),
            (["--attack", "CA+", "--oracle", "local", "--token-file", str(token)],
             "http://HOST:PORT")):
        one_error_line(*cli(["attack", "--checkpoint", ckpt, "--eps", "0.3", "--quiet",
                             "--catalog", *extra]), message)


def test_the_attack_command_runs_through_the_catalog(cli, tmp_path, service, trained_digits):
    import json

    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    status, out, err = cli(["attack", "--checkpoint", str(trained_digits(16)), "--attack",
                            "CA+", "--eps", "0.3", "--k", "1", "--num-attacks", "2", "--steps",
                            "4", "--catalog", "--oracle", service, "--token-file", str(token),
                            "--json", "--quiet"])
    assert status == 0, err
    s = json.loads(out)
    assert s["catalog"]["uploads_used"] == 2 and s["catalog"]["held_after"] == []
    assert "endpoint_after" in s and TOKEN not in out + err
    status, out, err = cli(["attack", "--checkpoint", str(trained_digits(16)), "--attack",
                            "CA-", "--eps", "0.3", "--num-attacks", "1", "--steps", "2",
                            "--catalog", "--oracle", service, "--token", TOKEN, "--json",
                            "--quiet"])
    assert status == 0, err
    s = json.loads(out)
    assert s["attack"] == "CA-" and "--token <token>" in s["command"]
    assert TOKEN not in out + err and s["catalog"]["held_after"] == []


def test_query_only_ca_through_uploads_keeps_both_budgets(service, target):
    from advrank.experiments.catalog_query import run_catalog_query_attack
    from advrank.oracles.catalog import CatalogClient
    from advrank.oracles.http import HttpOracle

    oracle = HttpOracle(service, "topk:1")
    oracle.check_service()
    fixed = target.gallery.images(torch.tensor([11]))[0]
    try:
        catalog = CatalogClient(oracle, TOKEN, 2 * 5)
        answer0, size0 = catalog.top(fixed, 50), catalog.read_info().gallery_size
        with catalog:
            r = run_catalog_query_attack(target.model, target.gallery, "CA+", catalog, 0.3, 2,
                                         2, uploads=5, searches=6, seed=1)
        cat = r.extra["catalog"]
        # searches bind first: the first read and two more (w = 2 searches each)
        assert cat["uploads_used"] == [3, 3] and cat["searches_used"] == [6, 6]
        assert catalog.searches == 12 + 1 and catalog.ledger.used == 6
        assert cat["held_after"] == [] and len(cat["uploaded_ids"]) == 6
        for before, after in zip(r.before["endpoint"], r.after["endpoint"], strict=True):
            assert after <= before + 1e-9  # the best so far, the clean photo included
        assert catalog.top(fixed, 50) == answer0
        assert catalog.read_info().gallery_size == size0
    finally:
        oracle.close()
