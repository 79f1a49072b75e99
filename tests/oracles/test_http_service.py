"""The HTTP oracle against the real ``advrank serve``, behind a counting proxy: every search
that reaches the service is charged to an attack's budget, resends after a dropped
connection included (two attacks on a budget of 12 make at most 24 searches, and the proxy's
count equals ``queries_used`` summed, plus the calibration's queries, counted apart); a
service whose answers are garbage ends the attack in one error line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("faiss")

BUDGET, T = 12, 2


@pytest.fixture(scope="module")
def ckpt(untrained_digits):
    return untrained_digits


@pytest.fixture(scope="module")
def service(ckpt, serve):
    with serve(ckpt, "--max-k", "20", "--max-concurrency", "2") as running:
        yield running[0]


def attack_argv(ckpt, url: str, *extra: str) -> list[str]:
    return ["attack", "--checkpoint", ckpt, "--oracle", url, "--attack", "QA+", "--feedback",
            "topk:10", "--query-budget", str(BUDGET), "--optimizer", "random", "--eps", "0.3",
            "--num-attacks", str(T), "--device", "cpu", "--json", "--quiet", *extra]


def test_resends_after_dropped_connections_are_charged_to_the_budget(service, ckpt, cli,
                                                                     net):
    """The proxy drops the connection after every 4th search the service answered: the
    client sends it again and the ledger pays for it, so the service's searches never
    exceed the budgets and equal what the result reports."""
    with net.counting_proxy(service, drop_every=4) as (url, stats):
        status, out, err = cli(attack_argv(ckpt, url))
    assert status == 0, err
    r = json.loads(out)
    calibration = r["calibration"]["queries"]  # counted apart from the attacks' budgets
    assert stats.dropped >= 2 and stats.searches - calibration <= BUDGET * T
    assert r["queries_used_max"] <= BUDGET and calibration >= 2 * T
    assert stats.searches - calibration == round(r["queries_used"] * T) == r["queries_sent"]
    assert r["queries_lost"] <= stats.dropped


def test_without_drops_every_search_is_one_query(service, ckpt, cli, net):
    with net.counting_proxy(service) as (url, stats):
        status, out, err = cli(attack_argv(ckpt, url))
    assert status == 0, err
    r = json.loads(out)
    assert stats.searches == round(r["queries_used"] * T) + r["calibration"]["queries"]
    assert r["queries_sent"] == round(r["queries_used"] * T) and r["queries_lost"] == 0
    assert r["service"]["gallery_size"] == 719 and r["calibration"]["passed"]


def _ids_as_strings(path: str, body: bytes) -> bytes:
    if not path.startswith("/search"):
        return body
    answer = json.loads(body)
    return json.dumps({**answer, "ids": [str(i) for i in answer["ids"]]}).encode()


def test_a_service_that_answers_ids_as_strings_ends_in_one_error_line(service, ckpt, cli, net,
                                                                      one_error_line):
    with net.counting_proxy(service, mutate=_ids_as_strings) as (url, stats):
        status, out, err = cli(attack_argv(ckpt, url))
    one_error_line(status, out, err, "/search answered an invalid SearchAnswer: ids.0")


def test_a_query_only_attack_through_a_pipeline_records_it(service, ckpt, cli):
    status, out, err = cli(attack_argv(ckpt, service, "--pipeline", "jpeg:75"))
    assert status == 0, err
    r = json.loads(out)
    assert r["threat"]["pipeline"] == "jpeg:75" and r["upload_pipeline"] == "jpeg:75"
