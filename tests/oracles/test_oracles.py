"""Oracles: feedback levels show what they promise and hide the rest, the local oracle through
a flat FAISS index answers as exact search, and an upload pipeline is what the oracle ranks
(the budget's ledger: tests/attacks/test_query_budget.py)."""

from __future__ import annotations

import pytest
import torch

from advrank.core.index import build_index
from advrank.errors import AdvrankError
from advrank.models import create_model
from advrank.oracles import Feedback, make_oracle, parse_feedback, split_oracle_spec
from advrank.oracles.local import LocalOracle


@pytest.fixture(scope="module")
def ranker():
    """A seeded tiny C2F1 (16-d) and a 120-picture gallery's embeddings."""
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16).eval()
    with torch.no_grad():
        gallery = model(torch.rand(120, 1, 8, 8))
    return model, gallery


def local(ranker, feedback, spec="exact"):
    model, gallery = ranker
    return LocalOracle(model, build_index(gallery, "cosine", spec), feedback)


def test_feedback_specs_parse_and_bad_ones_are_refused():
    assert parse_feedback("full") == Feedback("full")
    assert parse_feedback(" TopK:7 ") == Feedback("topk", 7)
    assert parse_feedback("topk-scores:3").scores
    for bad in ("topk", "topk:0", "topk:-2", "topk:x", "full:3", "scores:3", "", None, 5):
        with pytest.raises(AdvrankError):
            parse_feedback(bad)


def test_oracle_specs_are_checked():
    assert split_oracle_spec("local") == ("local", "")
    assert split_oracle_spec("local:hnsw") == ("local", "hnsw")
    assert split_oracle_spec("http://127.0.0.1:8000") == ("http", "http://127.0.0.1:8000")
    for bad in ("", "nowhere", "ftp://host", "http://", "http://:80", "local:\tx"):
        with pytest.raises(AdvrankError):
            split_oracle_spec(bad)


def test_feedback_levels_hide_what_they_should(ranker):
    x = torch.rand(5, 1, 8, 8)
    full = local(ranker, "full").answer(x)
    assert full.scores is None and full.ids.shape == (5, 120)
    assert (full.ids.sort(1).values == torch.arange(120)).all()  # the whole ranking
    top = local(ranker, "topk:4").answer(x)
    assert top.scores is None and torch.equal(top.ids, full.ids[:, :4])
    scored = local(ranker, "topk-scores:4").answer(x)
    assert torch.equal(scored.ids, top.ids) and scored.scores.shape == (5, 4)
    assert (scored.scores.diff(dim=1) >= 0).all()  # distances, nearest first
    assert local(ranker, "topk:500").answer(x).ids.shape == (5, 120)  # K beyond |X|


def test_local_oracle_through_a_flat_index_answers_as_exact_search(ranker):
    x = torch.rand(16, 1, 8, 8)
    exact = local(ranker, "topk-scores:20").answer(x)
    flat = local(ranker, "topk-scores:20", "flat").answer(x)
    assert torch.equal(exact.ids, flat.ids)
    assert torch.allclose(exact.scores, flat.scores, atol=1e-5)


def test_make_oracle_builds_the_local_one_for_a_target(ranker):
    from types import SimpleNamespace

    model, gallery = ranker
    target = SimpleNamespace(gallery=SimpleNamespace(embeddings=gallery), model=model,
                             meta=SimpleNamespace(metric="cosine"), fingerprint="f")
    oracle = make_oracle("local:flat", target, "topk:5")
    assert oracle.describe()["index"]["index"] == "flat" and oracle.gallery_size == 120
    assert oracle.eight_bit is False  # a simulation unless asked: no upload to round
    eight = make_oracle("local", target, "topk:5", eight_bit=True)  # a PNG upload's grid
    assert eight.eight_bit is True and eight.describe()["eight_bit"] is True
    x = torch.full((1, 1, 8, 8), 0.5 + 0.3 / 255)  # between two 8-bit levels
    assert torch.equal(eight.seen(x), torch.full_like(x, 128 / 255))


def test_an_answer_from_named_ranks_scores_as_the_whole_list(ranker):
    """Full feedback read through the ranks of the named ids alone (targets, the ids left out,
    C_SP) scores every attack exactly as the whole ranked list does."""
    from advrank.attacks.feedback import FeedbackScore
    from advrank.oracles.base import named_list

    oracle = local(ranker, "full")
    x, gen = torch.rand(6, 1, 8, 8), torch.Generator().manual_seed(1)
    targets, exclude = torch.randint(120, (6, 2), generator=gen), torch.arange(6)[:, None]
    keep = torch.randint(120, (6, 3), generator=gen)
    named = torch.cat([targets, exclude, keep], 1)
    whole = oracle.answer(x)
    ranks = oracle.rank(x, named)
    assert torch.equal(whole.ids.gather(1, ranks), named)  # each id where the list has it
    sparse = named_list(ranks, named, 120)
    assert sparse.shape == (6, 120) and ((sparse == 120).sum(1) <= 120 - 1).all()
    rows = torch.arange(6)
    for raise_rank in (True, False):
        score = FeedbackScore(raise_rank, targets, exclude, oracle.feedback, 120, keep=keep,
                              xi=0.5)
        got = score(type(whole)(sparse), rows)
        assert torch.equal(got, score(whole, rows))
    oracle.ranks_named = True  # answer() then builds the list from rank() alone
    assert torch.equal(oracle.answer(x, named).ids, sparse) and oracle.queries == 2 * 6
    for bad in (named[:3], named.float(), named + 120, named[0]):
        with pytest.raises(AdvrankError, match="named ids"):
            oracle.answer(x, bad)


def test_an_upload_pipeline_is_what_the_oracle_ranks(ranker):
    from advrank.core.pipeline import get_pipeline

    model, gallery = ranker
    x = torch.rand(5, 1, 8, 8)
    piped = LocalOracle(model, build_index(gallery, "cosine", "exact"), "topk-scores:7",
                        pipeline="jpeg:75")
    want = local(ranker, "topk-scores:7").answer(get_pipeline("jpeg:75")(x))
    got = piped.answer(x)
    assert torch.equal(got.ids, want.ids) and torch.allclose(got.scores, want.scores)
    assert piped.describe()["upload_pipeline"] == "jpeg:75"
    plain = LocalOracle(model, build_index(gallery, "cosine", "exact"), "topk:3",
                        pipeline="none")
    assert plain.pipeline is None and "upload_pipeline" not in plain.describe()


def test_a_query_only_attack_through_a_pipeline_is_measured_on_the_upload(untrained_digits):
    """Budget 1: the only query is the clean picture's upload, so "after" is its figure, and
    it is the JPEG round trip's, not the float picture's."""
    from advrank.attacks import get_attack
    from advrank.core.pipeline import get_pipeline
    from advrank.experiments.query import run_query_attack
    from advrank.experiments.target import load_target

    target = load_target(str(untrained_digits), "cpu")
    kind = get_attack("QA+", xi=0)
    oracle = make_oracle("local", target, "full", pipeline="jpeg:75")
    r = run_query_attack(target, kind, oracle, "random", 0.3, 1, 4, 1, seed=2)
    sel = kind.select(target.gallery, 1, 4, 2)
    with torch.no_grad():
        emb = target.model(get_pipeline("jpeg:75")(target.gallery.images(sel.anchors)))
    want = kind.measure(target.gallery, sel, emb)["rank"].tolist()
    assert r.after["rank"] == pytest.approx(want) and r.before["rank"] == pytest.approx(want)
    assert r.threat["pipeline"] == "jpeg:75" and r.extra["upload_pipeline"] == "jpeg:75"
