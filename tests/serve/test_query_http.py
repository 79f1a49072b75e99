"""A query-only attack on ``advrank serve`` over HTTP, as the issue's checks run it: the PNG
path answers as the local oracle does on the 8-bit picture, ``advrank attack --oracle URL``
stays within its budget and reports it, and a service that does not match is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def service(digits_ckpt, serve):
    with serve(digits_ckpt, "--max-k", "100", "--max-concurrency", "3") as running:
        yield running[0]


def test_the_http_oracle_answers_as_the_local_one_on_the_8_bit_picture(service, digits_ckpt):
    from advrank.experiments.target import load_target
    from advrank.oracles import make_oracle

    target = load_target(str(digits_ckpt), "cpu")
    x = torch.rand(6, 1, 8, 8)
    remote = make_oracle(service, target, "topk:20", concurrency=4)
    try:
        got = remote.answer(x)
    finally:
        remote.close()
    want = make_oracle("local", target, "topk:20").answer((x * 255).round() / 255)
    assert torch.equal(got.ids, want.ids) and got.scores is None and remote.queries == 6
    assert remote.describe()["service"]["gallery_size"] == len(target.gallery)


def test_attack_through_the_service_keeps_its_budget(service, digits_ckpt, cli):
    status, out, err = cli(["attack", "--checkpoint", digits_ckpt, "--oracle", service,
                            "--attack", "QA-", "--feedback", "topk:10", "--query-budget", "25",
                            "--optimizer", "nes", "--eps", "0.3", "--num-attacks", "3",
                            "--device", "cpu", "--json", "--quiet"])
    assert status == 0, err
    r = json.loads(out)
    assert 0 < r["queries_used"] <= 25 and r["queries_used_max"] <= 25
    assert r["queries_sent"] == pytest.approx(3 * r["queries_used"])
    # at top-10 feedback the figures are what the endpoint shows: QA-'s success (C out of
    # the visible list), read from the service's answers, the local copy's rank beside
    assert r["headline"] == "success" and r["num_attacks"] == 3
    assert {"success_before", "success_after", "local:rank_after"} <= set(r)
    assert r["oracle"] == "http" and r["threat"]["eight_bit"] and r["optimizer"] == "nes"
    assert r["command"].startswith("advrank attack") and "commit" in r


def test_a_service_that_does_not_match_is_refused(service, digits_ckpt, cli, one_error_line):
    from advrank.errors import AdvrankError
    from advrank.oracles.http import HttpOracle

    # full feedback needs every id: the service gives at most 100 of 719
    status, out, err = cli(["attack", "--checkpoint", digits_ckpt, "--oracle", service,
                            "--attack", "QA+", "--feedback", "full", "--eps", "0.3",
                            "--num-attacks", "2", "--device", "cpu", "--quiet"])
    one_error_line(status, out, err, "--max-k 719")
    other = SimpleNamespace(gallery=[0] * 500, meta=SimpleNamespace(image_shape=(1, 8, 8)))
    with pytest.raises(AdvrankError, match="ranks 719 items"):
        HttpOracle.from_spec(service, other, "topk:10")
    # nothing listens on port 1
    status, out, err = cli(["attack", "--checkpoint", digits_ckpt, "--oracle",
                            "http://127.0.0.1:1", "--attack", "QA+", "--eps", "0.3",
                            "--num-attacks", "2", "--device", "cpu", "--quiet"])
    one_error_line(status, out, err, "cannot reach the search service")


def test_the_same_attack_through_the_local_oracle(digits_ckpt, cli):
    status, out, err = cli(["attack", "--checkpoint", digits_ckpt, "--oracle", "local:flat",
                            "--attack", "QA+", "--query-budget", "30", "--eps", "0.3",
                            "--num-attacks", "3", "--device", "cpu", "--json", "--quiet"])
    assert status == 0, err
    r = json.loads(out)
    assert r["queries_used_max"] <= 30 and r["feedback"] == "full" and r["optimizer"] == "random"
    assert r["index"]["index"] == "flat" and not r["threat"]["eight_bit"]


@pytest.fixture(scope="module")
def full_service(digits_ckpt, serve):
    """A service deep enough for full feedback (--max-k = |X|), batching 8 in flight."""
    with serve(digits_ckpt, "--max-k", "719", "--max-concurrency", "8") as running:
        yield running[0]


def test_full_feedback_over_http_asks_for_the_named_ranks_alone(full_service, digits_ckpt,
                                                                cli):
    """The HTTP oracle reads full feedback through rank_of: the attack's score is the one
    the whole list gives on the same 8-bit pictures, and the attack keeps its budget."""
    from advrank.attacks.feedback import FeedbackScore
    from advrank.experiments.target import load_target
    from advrank.oracles import make_oracle

    target = load_target(str(digits_ckpt), "cpu")
    remote = make_oracle(full_service, target, "full", concurrency=16)
    x, gen = torch.rand(24, 1, 8, 8), torch.Generator().manual_seed(2)
    targets = torch.randint(719, (24, 1), generator=gen)
    exclude, keep = torch.randint(719, (24, 1), generator=gen), torch.randint(
        719, (24, 5), generator=gen)
    try:
        assert remote.ranks_named and remote.describe()["ranks_named"]
        got = remote.answer(x, torch.cat([targets, exclude, keep], 1))
    finally:
        remote.close()
    whole = make_oracle("local", target, "full").answer((x * 255).round() / 255)
    score = FeedbackScore(True, targets, exclude, remote.feedback, 719, keep=keep, xi=1.0)
    rows = torch.arange(24)
    assert torch.equal(score(got, rows), score(whole, rows)) and remote.queries == 24
    status, out, err = cli(["attack", "--checkpoint", digits_ckpt, "--oracle", full_service,
                            "--attack", "QA+", "--feedback", "full", "--query-budget", "40",
                            "--eps", "0.3", "--num-attacks", "3", "--device", "cpu", "--json",
                            "--quiet"])
    assert status == 0, err
    r = json.loads(out)
    assert r["ranks_named"] and r["queries_used_max"] <= 40
    assert r["queries_sent"] == pytest.approx(3 * r["queries_used"])
