"""The audit's verdict from hand-made rows, and the choice of example panels."""

from __future__ import annotations

import torch

from advrank.experiments.audit import _largest_moves
from advrank.experiments.verdict import VULNERABLE_MOVE, audit_verdict, success_move


def _row(attack, eps, before, after, direction="down", seconds=1.0):
    return {"attack": attack, "eps": eps, "rank_before": before, "rank_after": after,
            "direction": direction, "seconds": seconds}


def _example(attack, before, after, direction, target=(900, 0)):
    return {"attack": attack, "eps": 0.3, "direction": direction, "gallery_size": 1000,
            "anchor": {"name": "a.png"}, "measure_before": {"rank": before},
            "measure_after": {"rank": after},
            "targets": [{"rank_before": target[0], "rank_after": target[1]}]}


def test_success_move_follows_the_direction():
    assert success_move(_row("CA+", 0.1, 50, 20)) == 30        # down: lower is success
    assert success_move(_row("CA-", 0.1, 1, 31, "up")) == 30   # up: higher is success
    assert success_move(_row("CA+", 0.1, 20, 50)) == -30       # the attack made it worse


def test_verdict_names_the_first_vulnerable_eps_and_the_strongest_attack():
    rows = [_row("CA+", 0.01, 50, 48), _row("CA+", 0.1, 50, 30),
            _row("CA-", 0.01, 1, 1 + VULNERABLE_MOVE - 0.5, "up"),
            _row("CA-", 0.1, 1, 60, "up", seconds=2.5)]
    v = audit_verdict(rows, [_example("CA+", 90.0, 0.0, "down"),
                             _example("CA-", 0.5, 40.0, "up")])
    assert v["vulnerable"] and v["first_eps"] == 0.1   # 9.5 points at 0.01 is below the bar
    assert v["strongest_at_largest"]["attack"] == "CA-"
    assert v["strongest_at_largest"]["move"] == 59
    assert v["strongest_at_smallest"]["attack"] == "CA-"
    worst = v["worst_example"]
    assert worst["attack"] == "CA+" and worst["move"] == 90
    assert (worst["position_before"], worst["position_after"]) == (901, 1)
    assert v["seconds"] == 1 + 1 + 1 + 2.5 and v["ers"] is None


def test_a_model_no_attack_moves_is_not_called_vulnerable():
    v = audit_verdict([_row("QA+", 0.03, 50, 49.5)], [])
    assert not v["vulnerable"] and v["first_eps"] is None and v["worst_example"] is None


class _Kind:
    def __init__(self, direction):
        self.direction = direction


def test_examples_are_the_largest_moves_in_the_success_direction():
    before = torch.tensor([50.0, 50.0, 50.0, 50.0])
    after = torch.tensor([40.0, 10.0, 60.0, 10.0])
    assert _largest_moves(_Kind("down"), before, after, 2).tolist() == [1, 3]  # ties: order
    assert _largest_moves(_Kind("up"), before, after, 1).tolist() == [2]
    assert _largest_moves(_Kind("down"), before, after, 9).numel() == 4
