"""Query-only targets drawn from what the endpoint shows (issue 29): QA- sinks a candidate of
the visible top K (not the top 1%, which a top-10 list hides), QA+ raises one from just beyond
it, ORDER reorders the first k, ES disrupts the clean top K; and their figures as a ranked
list shows them."""

from __future__ import annotations

import math

import pytest
import torch

from advrank.attacks import get_attack
from advrank.attacks.visible import PLUS_POOL, endpoint_form, ndcg_at_k
from advrank.errors import AdvrankError
from advrank.oracles.evaluation import Reading

K, T = 10, 6
LISTS = torch.stack([torch.randperm(500, generator=torch.Generator().manual_seed(i))[:200]
                     for i in range(T)])


def select(attack: str, size: int = 1, lists=LISTS, **options):
    form = endpoint_form(get_attack(attack, **options))
    return form, form.select(lists, torch.arange(T), torch.full((T,), -1), size, K,
                             torch.Generator().manual_seed(0))


def test_qa_minus_draws_from_the_visible_top_k_and_keeps_the_rest_near():
    _, sel = select("QA-", 2)
    for row, targets, sp in zip(LISTS, sel.targets, sel.sp, strict=True):
        assert set(targets.tolist()) <= set(row[:K].tolist())
        assert sp.tolist() == [i for i in row[:K].tolist() if i not in targets][:5]


def test_qa_plus_draws_from_just_beyond_the_visible_list():
    _, sel = select("QA+", 3)
    for row, targets, sp in zip(LISTS, sel.targets, sel.sp, strict=True):
        assert set(targets.tolist()) <= set(row[K : PLUS_POOL * K].tolist())
        assert sp.tolist() == row[:5].tolist()
    with pytest.raises(AdvrankError, match="QA\\+ needs 1 results at positions 10..99 of each "
                                           "query's list; the endpoint shows 10"):
        select("QA+", 1, LISTS[:, :K])
    short = torch.cat([LISTS[:, :12], torch.full((T, 8), -1)], 1)  # 2 beyond the top 10
    assert all(set(t.tolist()) <= set(row[K:12].tolist())
               for t, row in zip(select("QA+", 2, short)[1].targets, short, strict=True))


def test_order_and_es_read_the_first_of_the_visible_list():
    _, sel = select("ORDER", 4)
    assert all(set(t.tolist()) == set(row[:4].tolist()) for t, row in zip(sel.targets, LISTS,
                                                                          strict=True))
    _, es = select("ES")
    assert es.targets is None and torch.equal(es.extra["clean"], LISTS[:, :K])


class View:
    def __init__(self, full: bool, n: int = 500, k: int = K, beyond: int = 100):
        self.full, self.k = full, k
        self.beyond = n - 1 if full else beyond
        self.oracle = type("O", (), {"gallery_size": n})()


def test_ranked_figures_success_and_censoring():
    form, sel = select("QA+", 2)
    pos = torch.tensor([[0, 9, 1, 2, 3, 4, 5], [3, 10, 0, 1, 2, 3, 4],
                        [100, 100, 0, 1, 2, 3, 4]] + [[50, 50, 0, 1, 2, 3, 4]] * 3)
    f = form.figures(Reading(positions=pos), sel, View(False))
    assert f["success"].tolist() == [100, 0, 0, 0, 0, 0]
    assert f["in_topk"].tolist() == [100, 50, 0, 0, 0, 0]
    assert "rank" not in f and "sp_rank" not in f  # a censored view shows no ranks
    full = form.figures(Reading(positions=pos), sel, View(True))
    assert full["rank"][0].item() == pytest.approx(100 * 4.5 / 500)
    sink, sel_minus = select("QA-", 2)
    assert sink.figures(Reading(positions=pos), sel_minus, View(False))["success"].tolist() == \
        [0, 0, 100, 100, 100, 100]


def test_ndcg_matches_a_brute_force_sum():
    clean = torch.tensor([[1, 2, 3, 4]])
    for top in ([1, 2, 3, 4], [4, 3, 2, 1], [9, 1, 8, 2], [9, 8, 7, 6]):
        rel = {1: 4, 2: 3, 3: 2, 4: 1}
        dcg = sum(rel.get(i, 0) / math.log2(p + 2) for p, i in enumerate(top))
        ideal = sum(r / math.log2(p + 2) for p, r in enumerate([4, 3, 2, 1]))
        assert ndcg_at_k(torch.tensor([top]), clean).item() == pytest.approx(100 * dcg / ideal,
                                                                            rel=1e-5)


def test_es_figures_overlap_and_ndcg_against_the_clean_list():
    form, sel = select("ES")
    top = sel.extra["clean"].clone()
    top[:, 5:] = -1  # half of the clean top K gone
    f = form.figures(Reading(top=top), sel, View(False))
    assert f["overlap@k"].tolist() == [50.0] * T
    assert (f["ndcg@k"] > 50).all() and (f["ndcg@k"] < 100).all()
    assert form.figures(Reading(top=sel.extra["clean"]), sel, View(False))["ndcg@k"].tolist() \
        == pytest.approx([100.0] * T)


def test_a_kind_without_a_form_is_refused():
    with pytest.raises(AdvrankError, match="CA\\+ has no form an endpoint can show"):
        endpoint_form(get_attack("CA+"))


def test_an_early_stop_never_claims_a_goal_the_figures_would_deny():
    """QA-'s goal "gone" and ES's "clear" are claimed only from a list that shows K others:
    where the query's own copy takes one of the K places, a target at the K-th other place
    (out of the attacker's sight, inside the figures' top K) is not "gone"."""
    from advrank.attacks.feedback import FeedbackScore
    from advrank.oracles.base import Answer, parse_feedback

    k, own, target = 4, 99, 7
    score = FeedbackScore(False, torch.tensor([[target], [target]]),
                          torch.tensor([[own], [own]]), parse_feedback(f"topk:{k}"), 100)
    shown = torch.tensor([[own, 1, 2, 3],  # own at #0: the 4th other (maybe 7) is unseen
                          [1, 2, 3, 4]])  # four others and no 7: 7 is out of the top 4
    met = score.goal(Answer(shown), torch.arange(2))
    assert met.tolist() == [False, True]


def test_es_stops_only_once_its_clean_list_is_out_of_sight():
    """ES through an endpoint claims its goal ("clear") only where neither the query's own
    copy nor any of its clean top K is visible: the own copy's leaving alone is not enough
    (measured before this rule: every ES attack stopped with 9.7% of the clean top 10 still
    shown, results/endpoint-mnist/exact-es)."""
    from advrank.oracles.base import Answer, parse_feedback

    k, own = 4, torch.tensor([50, 60])
    lists = torch.stack([torch.tensor([1, 2, 3, 4, *range(100, 196)]),
                         torch.tensor([5, 6, 7, 8, *range(200, 296)])])
    form = endpoint_form(get_attack("ES"))
    part = form.select(lists, torch.arange(2), own, 1, k, torch.Generator().manual_seed(0))
    score = form.score(part, parse_feedback(f"topk:{k}"), None, range(1000))
    shown = torch.tensor([[9, 2, 10, 11],  # own copy gone, clean item 2 still shown
                          [12, 13, 14, 15]])  # own copy and clean list gone
    assert score.goal(Answer(shown), torch.arange(2)).tolist() == [False, True]
