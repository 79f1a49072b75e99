"""Query-only QA+/QA- (and ES, the untargeted top-k disruption) on a tiny digits model through
the local oracle: the §4 selection of the white-box kinds, the rank moved the right way from
the oracle's feedback alone, the budget kept, and the figures in the result."""

from __future__ import annotations

import pytest
import torch

from advrank.errors import AdvrankError
from advrank.experiments.query import run_query_attack
from advrank.oracles import make_oracle

T, BUDGET = 12, 120


@pytest.fixture(scope="module")
def target(trained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(trained_digits(16)), "cpu")


@pytest.mark.parametrize("attack,direction", [("QA+", -1), ("QA-", 1), ("ES", 1)])
def test_query_only_qa_moves_the_rank_the_right_way(target, attack, direction):
    from advrank.attacks import get_attack

    oracle = make_oracle("local", target, "full")
    kind = get_attack(attack, xi=0) if attack != "ES" else get_attack(attack)  # rank alone
    r = run_query_attack(target, kind, oracle, "random", 0.3, 1, T, BUDGET, seed=3)
    f = r.figures
    assert direction * (f["rank_after"] - f["rank_before"]) > 5.0, f
    assert r.extra["queries_used_max"] <= BUDGET and r.extra["queries_sent"] <= T * BUDGET
    assert r.extra["queries_used"] == pytest.approx(r.extra["queries_sent"] / T)
    # the figures are read from the endpoint, by queries counted apart from the budget
    assert oracle.queries == r.extra["queries_sent"] + r.extra["evaluation"]["evaluation_queries"]
    assert r.extra["evaluation"]["view"] == "ranks"  # the local oracle: exact ranks
    # the local oracle is the local copy: the endpoint's ranks are the local ones
    assert r.after["rank"] == pytest.approx(r.after["local:rank"], abs=1e-4)
    assert r.threat == {"norm": "Linf", "eps": 0.3, "eight_bit": False, "query_budget": BUDGET}
    if attack == "ES":  # ES: its rank starts at 0 and the shift is measured too
        assert f["local:shift_after"] > 0.05 > f["local:shift_before"]

    # the selection (and so "before") is the white-box kind's
    sel = get_attack(attack).select(target.gallery, 1, T, 3)
    clean = get_attack(attack).measure(target.gallery, sel, target.gallery.embeddings[
        sel.anchors])
    assert r.before["rank"] == pytest.approx(clean["rank"].tolist())


def test_the_sp_term_keeps_the_query_s_neighbours_near(target):
    """QA-'s SP term (the paper's xi = 100) in the query-only score: C_SP stays nearer than
    with the rank alone."""
    from advrank.attacks import get_attack

    figures = {}
    for xi in (0.0, 100.0):
        oracle = make_oracle("local", target, "full")
        figures[xi] = run_query_attack(target, get_attack("QA-", xi=xi), oracle, "random", 0.3,
                                       1, 8, 80, seed=5).figures
    assert figures[100.0]["sp_rank_after"] < figures[0.0]["sp_rank_after"] - 5, figures


def test_top_k_feedback_counts_the_candidates_searches_and_starts_where_told(target):
    """At top-k feedback the m candidates are searched first (counted); a given start (as
    from a transfer attack) is where the optimiser begins."""
    from advrank.attacks.query import get_optimizer

    oracle = make_oracle("local", target, "topk:10")
    nes = get_optimizer("nes", stop=False)  # every round spent, whatever the lists show
    r = run_query_attack(target, "QA-", oracle, nes, 0.2, 1, 4, 61, seed=1)
    assert r.extra["queries_used_max"] <= 61 and r.extra["feedback"] == "topk:10"
    # 1 neighbourhood search + 1 start + 2 rounds of 20 (NES); a third would pass the budget
    assert r.extra["queries_used"] == 42 and r.extra["queries_sent"] == 4 * 42
    from advrank.attacks import get_attack

    sel = get_attack("QA-").select(target.gallery, 1, 4, 1)
    start = (target.gallery.images(sel.anchors) + 0.05).clamp(0, 1)
    oracle = make_oracle("local", target, "full")
    r = run_query_attack(target, "QA-", oracle, "nes", 0.2, 1, 4, 1, seed=1, start=start)
    with torch.no_grad():
        emb = target.model(start)
    moved = get_attack("QA-").measure(target.gallery, sel, emb)["rank"]
    assert r.after["rank"] == pytest.approx(moved.tolist(), abs=1e-4)  # budget 1: the start


def test_kinds_without_a_query_form_and_bad_budgets_are_refused(target):
    oracle = make_oracle("local", target, "full")
    with pytest.raises(AdvrankError, match="no query-only form"):
        run_query_attack(target, "CA+", oracle, "random", 0.3, 1, 2, 10)
    for bad in (0, -5, float("nan")):
        with pytest.raises(AdvrankError, match="query budget"):
            run_query_attack(target, "QA+", oracle, "random", 0.3, 1, 2, bad)
    assert oracle.queries == 0


def test_checkpoints_measure_the_best_so_far_without_changing_the_attack(target):
    from advrank.attacks import get_attack

    kind = get_attack("QA+", xi=0)
    plain = run_query_attack(target, kind, make_oracle("local", target, "full"), "random", 0.3,
                             1, 6, 40, seed=3)
    traced = run_query_attack(target, kind, make_oracle("local", target, "full"), "random",
                              0.3, 1, 6, 40, seed=3, checkpoints=[40, 4, 10, 4])
    assert traced.figures == plain.figures  # watching the queries changes nothing
    points = traced.extra["checkpoints"]
    assert list(points) == [4, 10, 40]
    assert points[40]["rank_after"] == traced.figures["rank_after"]  # the full budget: the answer
    ranks = [p["rank_after"] for p in points.values()]
    assert all(0 <= r <= 100 for r in ranks) and ranks[0] > ranks[-1]
    assert "checkpoints" not in plain.extra
    with pytest.raises(AdvrankError, match="checkpoint 41 lies past the query budget 40"):
        run_query_attack(target, kind, make_oracle("local", target, "full"), "random", 0.3, 1,
                         2, 40, checkpoints=[41])


def test_query_only_order_attack_from_top_k_ids_alone(target):
    """ORDER through top-10 ids: the target order is reached far more often than by chance
    (tau up), the candidates stay near the top, and ES's disruption scored by ORDER's
    figures (``also``) does not reorder them."""
    from advrank.attacks import get_attack

    order = get_attack("ORDER")
    sel = order.select(target.gallery, 5, T, 2)
    oracle = make_oracle("local", target, "topk:10")
    r = run_query_attack(target, order, oracle, "nes", 0.3, 5, T, BUDGET, seed=2,
                         selection=sel)
    f = r.figures
    assert f["tau_after"] > f["tau_before"] + 0.3, f
    assert f["position_after"] < 10 and r.extra["queries_used_max"] <= BUDGET
    assert r.extra["queries_sent"] == T * r.extra["queries_used"]  # no neighbourhoods
    es = run_query_attack(target, "ES", make_oracle("local", target, "topk:10"), "nes", 0.3,
                          1, T, BUDGET, seed=2, selection=sel, also=(order,))
    e = es.figures
    assert e["ORDER:tau_before"] == pytest.approx(f["tau_before"])
    assert e["ORDER:tau_after"] < f["tau_after"] - 0.3, (e, f)
    assert e["ORDER:position_after"] > f["position_after"]


@pytest.mark.parametrize("optimizer", ["nes", "spsa", "square"])
def test_checkpoints_are_the_shorter_budgets_runs(target, optimizer):
    """For a prefix-consistent optimiser, the best so far at c queries is what a run with
    budget c returns: the same figures and the same queries spent."""
    long = run_query_attack(target, "ORDER", make_oracle("local", target, "topk:10"),
                            optimizer, 0.3, 3, 6, 100, seed=4, checkpoints=(30, 61, 100))
    for c in (30, 61, 100):
        short = run_query_attack(target, "ORDER", make_oracle("local", target, "topk:10"),
                                 optimizer, 0.3, 3, 6, c, seed=4)
        got = long.extra["checkpoints"][c]
        assert got["tau_after"] == pytest.approx(short.figures["tau_after"])
        assert got["position_after"] == pytest.approx(short.figures["position_after"])
        assert got["queries_used"] == pytest.approx(short.extra["queries_used"])
    assert long.extra["checkpoints"][100]["tau_after"] == pytest.approx(
        long.figures["tau_after"])
    with pytest.raises(AdvrankError, match="past the query budget"):
        run_query_attack(target, "ORDER", make_oracle("local", target, "topk:10"),
                         optimizer, 0.3, 3, 6, 100, checkpoints=(101,))


def test_early_stop_reports_the_goal_met_and_the_queries_saved(target):
    """ORDER through top-10 ids: an attack whose answer shows SRC = 1 stops there; the result
    says how many did and what they left unspent; without early stop nothing is saved."""
    from advrank.attacks import get_attack
    from advrank.attacks.query import get_optimizer

    order = get_attack("ORDER")
    sel = order.select(target.gallery, 3, T, 2)
    runs = {}
    for stop in (True, False):
        oracle = make_oracle("local", target, "topk:10")
        runs[stop] = run_query_attack(target, order, oracle, get_optimizer("square", stop=stop),
                                      0.3, 3, T, BUDGET, seed=2, selection=sel)
    on, off = runs[True].extra, runs[False].extra
    assert on["goal_reached"] > 0 and on["queries_saved"] > 0
    assert on["queries_used"] + on["queries_saved"] <= BUDGET + 1e-9
    assert on["queries_used"] < off["queries_used"] == BUDGET
    assert off["goal_reached"] == 0 and off["queries_saved"] == 0
    # an attack that met its goal returns the candidate that did: SRC = 1 (tau = 1 in view)
    assert runs[True].figures["src_after"] >= on["goal_reached"] - (1 - on["goal_reached"])
