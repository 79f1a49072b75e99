"""The query-only optimisers: each lowers a known score, stays in the threat model (on the
8-bit grid when the oracle uploads pictures), never spends past the budget, and keeps a
better start it is given."""

from __future__ import annotations

import pytest
import torch

from advrank.attacks.query import Ball, CountedObjective, QueryCounter, get_optimizer
from advrank.errors import AdvrankError
from advrank.registry import OPTIMIZERS

B, SHAPE = 6, (1, 8, 8)


def problem(seed: int = 0):
    """Clean pictures ``[B, 1, 8, 8]``, a target picture, and the squared distance to it."""
    g = torch.Generator().manual_seed(seed)
    x0, target = torch.rand(B, *SHAPE, generator=g), torch.rand(1, *SHAPE, generator=g)

    def score(x, rows):
        return ((x - target) ** 2).flatten(1).sum(1)

    return x0, target, score


@pytest.mark.parametrize("name", OPTIMIZERS.names())
@pytest.mark.parametrize("eight_bit", [False, True])
def test_each_optimizer_lowers_a_known_score_within_ball_and_budget(name, eight_bit):
    x0, target, score = problem()
    budget = 301  # not a multiple of any population: the last round must be refused
    counter = QueryCounter(B, budget)
    calls = []

    def counted(x, rows):
        calls.append(rows.numel())
        return score(x, rows)

    ball = Ball(x0, 0.25, eight_bit)
    x, value = get_optimizer(name).run(CountedObjective(counted, counter), ball,
                                       generator=torch.Generator().manual_seed(1))
    clean = score(ball.project(x0), None)
    assert torch.allclose(value, score(x, None))  # the value returned is the one queried
    assert (value < 0.8 * clean).all(), (value, clean)
    assert (x - x0).abs().max() <= 0.25 + 1e-6 and x.min() >= 0 and x.max() <= 1
    if eight_bit:
        assert torch.equal(x * 255, (x * 255).round())
    assert (counter.used <= budget).all() and sum(calls) == int(counter.used.sum())


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_a_start_at_the_optimum_is_kept(name):
    """Transfer-then-query: a start better than anything nearby is returned as it is."""
    x0, target, score = problem(2)
    ball = Ball(x0, 0.3)
    best = ball.project(target.expand_as(x0))
    x, _ = get_optimizer(name).run(CountedObjective(score, QueryCounter(B, 60)), ball,
                                   start=best, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, best)


def test_ball_rounds_inwards_on_the_grid():
    x0 = torch.tensor([0.1, 0.5, 0.99]).view(1, 1, 1, 3)
    ball = Ball(x0, 0.1, eight_bit=True)
    far = ball.project(torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3))
    assert ((far - x0).abs() <= 0.1).all() and torch.equal(far * 255, (far * 255).round())
    tiny = Ball(torch.full((1, 1, 1, 1), 0.5011), 1e-4, eight_bit=True)  # no grid value inside
    assert tiny.project(torch.ones(1, 1, 1, 1)).item() == pytest.approx(128 / 255)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(AdvrankError, match="even"):
        get_optimizer("nes", population=5)
    with pytest.raises(AdvrankError, match="takes no"):
        get_optimizer("spsa", sigma=0.1)
    with pytest.raises(AdvrankError):
        get_optimizer("random", p_init=0.0)
    with pytest.raises(AdvrankError, match="unknown optimizer"):
        get_optimizer("adam")
