"""One threat object: the L-inf threat model gives PGD its steps and a query-only attack its
ball, and describes itself the same way in both results."""

from __future__ import annotations

import pytest
import torch

from advrank.attacks.threat import GRID, Ball, LinfThreatModel
from advrank.errors import AdvrankError


def test_the_query_only_ball_comes_from_the_threat_model():
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    threat = LinfThreatModel(8 / 255).for_queries(eight_bit=True, query_budget=50)
    ball, plain = threat.ball(x0), Ball(x0, 8 / 255, eight_bit=True)
    assert torch.equal(ball.lo, plain.lo) and torch.equal(ball.hi, plain.hi)
    x = ball.project(torch.rand(3, 5, 1, 4, 4))
    assert torch.equal(torch.round(x * GRID) / GRID, x)  # on the 8-bit grid
    assert ((x - x0[:, None]).abs() <= 8 / 255 + 1e-6).all()
    off_grid = LinfThreatModel(0.1).for_queries(eight_bit=False, query_budget=5).ball(x0)
    assert not off_grid.eight_bit and off_grid.eps == pytest.approx(0.1)


def test_a_query_only_threat_describes_itself_without_pgd_steps():
    white = LinfThreatModel(0.1, pipeline="png").describe()
    assert list(white) == ["norm", "eps", "step_size", "steps", "random_start", "pipeline",
                           "through_pipeline"]
    query = LinfThreatModel(0.1).for_queries(eight_bit=True, query_budget=20).describe()
    assert query == {"norm": "Linf", "eps": 0.1, "eight_bit": True, "query_budget": 20}
    assert list(query) == ["norm", "eps", "eight_bit", "query_budget"]
    with pytest.raises(AdvrankError, match="query budget"):
        LinfThreatModel(0.1).for_queries(eight_bit=False, query_budget=0)
