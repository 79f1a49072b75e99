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


# ------------------------------------------------------------ seeds, early stop, schedules


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_a_seed_reproduces_the_run(name):
    x0, _, score = problem(3)
    runs = []
    for _ in range(2):
        ball = Ball(x0, 4 / 255, eight_bit=True)
        runs.append(get_optimizer(name).run(CountedObjective(score, QueryCounter(B, 120)), ball,
                                            generator=torch.Generator().manual_seed(7)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def goal_problem(threshold: float):
    """The squared distance of :func:`problem`, whose goal is met below ``threshold``
    (``evaluate`` returns the values and where the goal is met, as a kind's score does)."""
    x0, target, score = problem(4)

    def evaluate(x, rows):
        values = score(x, rows)
        return values, values < threshold

    return x0, score, evaluate


@pytest.mark.parametrize("name", ["nes", "spsa", "square"])
def test_early_stop_ends_an_attack_at_its_goal_and_saves_the_rest(name):
    x0, score, evaluate = goal_problem(0.0)
    clean = score(Ball(x0, 0.3).project(x0), None)
    _, _, evaluate = goal_problem(float(clean.min()) * 0.9)  # met by some attacks, soon
    budget = 2000
    counter = QueryCounter(B, budget)
    objective = CountedObjective(evaluate, counter)
    x, value = get_optimizer(name, stop=True).run(objective, Ball(x0, 0.3),
                                                  generator=torch.Generator().manual_seed(0))
    reached = objective.reached
    assert reached.any() and (counter.used[reached] < budget).all()
    assert (score(x, None)[reached] < float(clean.min()) * 0.9).all()  # what it returns met it
    assert torch.allclose(value, score(x, None))
    counter2 = QueryCounter(B, budget)
    get_optimizer(name, stop=False).run(CountedObjective(evaluate, counter2), Ball(x0, 0.3),
                                        generator=torch.Generator().manual_seed(0))
    assert (counter2.used == budget - (budget - 1) % (1 if name == "square" else 20)).all()


def test_a_candidate_that_meets_the_goal_beats_a_lower_value():
    from advrank.attacks.query import Best

    best = Best(torch.zeros(2, 1), torch.tensor([5.0, 5.0]))
    cand = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])  # [B=2, P=2, 1]
    best.update(cand, torch.tensor([[1.0, 3.0], [2.0, 4.0]]),
                met=torch.tensor([[False, True], [False, False]]))
    assert best.x.flatten().tolist() == [2.0, 3.0] and best.met.tolist() == [True, False]
    best.update(cand, torch.tensor([[0.0, 0.0], [0.0, 0.0]]))  # lower, but not met
    assert best.x.flatten().tolist() == [2.0, 3.0]


def reference_fraction(p_init: float, it: int) -> float:
    """The Square attack paper's schedule, written out case by case (10,000 iterations)."""
    if it <= 10:
        return p_init
    for bound, div in ((50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                       (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def test_the_square_schedule_is_the_paper_s():
    from advrank.attacks.query.square import window_fraction, window_side

    for it in range(0, 10_000, 7):
        assert window_fraction(0.8, it, 10_000) == reference_fraction(0.8, it)
        assert window_fraction(0.8, it // 10, 1000) == reference_fraction(0.8, (it // 10) * 10)
    assert window_side(0.3, 28, 28) == round((0.3 * 784) ** 0.5) == 15
    assert window_side(1e-6, 28, 28) == 1 and window_side(1.0, 28, 20) == 20


def test_square_windows_set_one_square_to_the_ball_s_vertices():
    from advrank.attacks.query.square import square_masks, stripes, windows

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 10, 10, generator=g) * 0.8 + 0.1
    ball = Ball(x0, 0.05)
    cur = stripes(ball, g)
    assert torch.allclose((cur - x0).abs(), torch.full_like(x0, 0.05))
    d = cur - x0
    assert torch.allclose(d[..., 0:1, :].expand_as(d), d)  # vertical: constant along a column
    mask = square_masks(3, 4, 10, 10, 3, g, "cpu")
    assert (mask.flatten(2).sum(-1) == 9).all()
    sign = torch.ones(3, 4, 2, 1, 1)
    cand = windows(ball, cur, mask, sign)
    inside = mask.expand_as(cand)
    assert torch.allclose(cand[inside], (x0[:, None] + 0.05).expand_as(cand)[inside])
    assert torch.equal(cand[~inside], cur[:, None].expand_as(cand)[~inside])
    again = windows(ball, cand[:, 0], mask[:, :1], sign[:, :1])  # would repeat: flipped
    assert not (again[:, 0] == cand[:, 0]).flatten(1).all(1).any()


def test_lengths_have_floors_in_8_bit_levels_and_legacy_options_are_the_old_formula():
    from advrank.attacks.query.nes import NES
    from advrank.attacks.query.schedule import length

    eps = 4 / 255
    old = NES.legacy
    assert length(None, eps, old["sigma_scale"], old["sigma_floor"]) == 1 / 255  # eps/4 < 1
    assert length(None, 0.3, old["sigma_scale"], old["sigma_floor"]) == 0.075
    assert length(None, 0.3, 0.1, 2, half_life=100, spent=100) == pytest.approx(0.015)
    assert length(None, 0.3, 0.1, 2, half_life=100, spent=2000) == 2 / 255
    assert length(0.01, 0.3, 0.1, 2) == 0.01


def test_adam_moments_match_the_formula():
    from advrank.attacks.query.schedule import Moments

    g1, g2 = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    m = Moments(g1, 0.9, 0.999)
    m.adam(g1, torch.tensor([True]))
    step = m.adam(g2, torch.tensor([True]))
    mm = 0.1 * 0.9 * g1 + 0.1 * g2
    vv = 0.001 * 0.999 * g1**2 + 0.001 * g2**2
    want = (mm / (1 - 0.9**2)) / ((vv / (1 - 0.999**2)).sqrt() + 1e-12)
    assert torch.allclose(step, want, rtol=1e-3)  # float32 powers of 0.999
    plain = Moments(g1, 0.0)
    assert torch.equal(plain.momentum(g2, torch.tensor([True])), g2)


def test_bad_schedule_options_are_refused():
    for name, options, match in [("nes", {"sigma_scale": 0.0}, "sigma_scale"),
                                 ("nes", {"momentum": 1.0}, "momentum"),
                                 ("nes", {"half_life": 0}, "half_life"),
                                 ("spsa", {"lr_floor": -1}, "lr_floor"),
                                 ("square", {"stripes": "maybe"}, "stripes"),
                                 ("square", {"horizon": 0}, "horizon"),
                                 ("square", {"stop": "yes"}, "stop")]:
        with pytest.raises(AdvrankError, match=match):
            get_optimizer(name, **options)


@pytest.mark.parametrize("options", [{"horizon": None}, {"population": 3},
                                     {"stripes": "always", "ties": False}, {"stripes": "off"}])
def test_square_variants_stay_in_ball_and_budget(options):
    x0, _, score = problem(5)
    counter = QueryCounter(B, 97)
    x, value = get_optimizer("square", **options).run(
        CountedObjective(score, counter), Ball(x0, 0.1, eight_bit=True),
        generator=torch.Generator().manual_seed(3))
    assert (counter.used <= 97).all() and torch.allclose(value, score(x, None))
    assert (x - x0).abs().max() <= 0.1 + 1e-6 and torch.equal(x * 255, (x * 255).round())
    assert (value < score(Ball(x0, 0.1, eight_bit=True).project(x0), None)).all()
