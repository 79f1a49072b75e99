"""The query budget's ledger: no request past the budget is sent, a resend is charged to the
attack whose request it is (and refused, not sent, once its budget is spent), a lost request
scores +inf and is never measured, and checkpoints keep what a shorter run would have
returned."""

from __future__ import annotations

import math

import pytest
import torch

from advrank.attacks.query.budget import (
    CountedObjective,
    OracleObjective,
    QueryCounter,
    ask,
    check_budget,
)
from advrank.errors import AdvrankError
from advrank.oracles.base import Answer, Oracle


class Echo(Oracle):
    """A fake endpoint: the id of each picture is its first pixel x 10 (top-1). Request i of
    every batch is "dropped" ``drops[i]`` times: the oracle asks ``resend(i)`` before each
    new send, and loses the request when it is refused."""

    name = "echo"

    def __init__(self, drops: dict[int, int] | None = None):
        super().__init__("topk:1", 10)
        self.drops = drops or {}
        self.asked: list[int] = []

    def exchange(self, images, depth, named, resend):
        n = images.shape[0]
        ids = (images.flatten(1)[:, 0] * 10).long().clamp(0, 9)[:, None]
        lost = torch.zeros(n, dtype=torch.bool)
        for i in range(n):
            self.queries += 1
            for _ in range(self.drops.get(i, 0)):
                self.asked.append(i)
                if resend is not None and not resend(i):
                    lost[i] = True
                    break
                self.queries += 1
        return Answer(torch.where(lost[:, None], -1, ids), lost=lost)


def test_budgets_are_checked():
    assert check_budget(2000) == 2000 and check_budget(50.0) == 50
    for bad in (0, -1, math.nan, math.inf, 1.5, True, "10"):
        with pytest.raises(AdvrankError):
            check_budget(bad)
    with pytest.raises(AdvrankError):
        QueryCounter(2, 0)


def test_the_counter_never_lets_a_query_past_the_budget():
    """Rounds of 3 against a budget of 7: the oracle itself sees 7 per attack, no more, and
    inactive attacks send nothing."""
    oracle, counter = Echo(), QueryCounter(4, 7)
    active = torch.tensor([True, True, False, True])
    for _ in range(5):
        answer, rows, sent = ask(oracle, counter, torch.rand(4, 3, 1, 2, 2), active)
        assert answer.ids.shape[0] == rows.numel() == int(sent.sum())
        assert (counter.used <= 7).all()
    assert counter.used.tolist() == [7, 7, 0, 7]
    assert oracle.queries == 21 and counter.remaining.tolist() == [0, 0, 7, 0]


def test_a_resend_is_charged_to_its_attack_and_refused_past_the_budget():
    """Request 0 of each batch (attack 0's) is dropped twice: each resend is charged to
    attack 0 while it can pay; then the request is lost, not sent. The ledger's count always
    equals what the endpoint was sent."""
    oracle, counter = Echo({0: 2}), QueryCounter(2, 5)
    x = torch.rand(2, 2, 1, 2, 2)
    answer, rows, _ = ask(oracle, counter, x)  # 2 + 2 for attack 0, 2 for attack 1
    assert counter.used.tolist() == [4, 2] and not answer.lost.any()
    answer, rows, _ = ask(oracle, counter, x)  # attack 0: 1 granted, 1 resend paid, 1 refused
    assert rows.tolist() == [0, 1, 1] and answer.lost.tolist() == [True, False, False]
    assert answer.ids[0].tolist() == [-1] and counter.lost.tolist() == [1, 0]
    assert counter.used.tolist() == [5, 4] and oracle.queries == int(counter.used.sum())


def test_a_lost_request_scores_inf_and_is_not_the_best():
    oracle, counter = Echo({1: 5}), QueryCounter(2, 4)
    calls = []

    def score(answer, rows):
        calls.append(answer.lost.clone())
        return answer.ids[:, 0].float()

    objective = OracleObjective(oracle, score, counter)
    x = torch.stack([torch.full((3, 1, 2, 2), v) for v in (0.3, 0.5)])  # [2, 3, ...]
    out = objective(x)
    # requests in order [0, 0, 0, 1, 1, 1] (their attacks): request 1, attack 0's second, is
    # dropped 5 times; one resend spends attack 0's last query, then it is lost
    assert torch.isinf(out[0, 1]) and out[0, 0] == 3 and out[0, 2] == 3
    assert out[1].tolist() == [5.0, 5.0, 5.0] and counter.used.tolist() == [4, 3]
    assert oracle.queries == 7 and calls[0].tolist() == [False, True] + [False] * 4


def test_a_counted_objective_refuses_a_non_finite_value_but_not_a_lost_one():
    objective = CountedObjective(lambda x, rows: torch.full((x.shape[0],), math.nan),
                                 QueryCounter(1, 5))
    with pytest.raises(AdvrankError, match="NaN or Infinity"):
        objective(torch.rand(1, 2, 1, 2, 2))


def test_checkpoints_keep_the_best_of_the_rounds_within_each_count():
    """Rounds of 2 on a budget of 7 with checkpoints 3 and 4: the round that would pass 3
    (queries 3-4) is not in the snapshot at 3; the one at 4 has both first rounds."""
    values = iter([torch.tensor([5.0, 4.0]), torch.tensor([1.0, 3.0]),
                   torch.tensor([0.5, 2.0]), torch.tensor([0.1])])
    objective = CountedObjective(lambda x, rows: next(values), QueryCounter(1, 7), at=(3, 4))
    rounds = [torch.full((1, 2, 1, 1, 1), float(r)) for r in range(4)]
    for x in rounds:
        objective(x)
    snaps = objective.snapshots()
    assert snaps[3][0].item() == 0.0 and snaps[3][1].tolist() == [2]  # round 0's best
    assert snaps[4][0].item() == 1.0 and snaps[4][1].tolist() == [4]  # round 1's best
    assert objective.counter.used.tolist() == [7]
