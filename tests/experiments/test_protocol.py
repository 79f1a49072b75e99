"""Selection rules of §4 on hand-built galleries, rank measurement, batching, CLI fields."""

import json

import pytest
import torch
from torch import nn

from advrank.attacks import get_attack
from advrank.attacks.selection import Selection, sp_candidates, top_pool_size
from advrank.core.distances import EuclideanDistance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset
from advrank.errors import AdvrankError
from advrank.experiments.protocol import run_attack


def select(gallery, attack, k, num_attacks, seed=0):
    """The §4 selection of ``attack``: asked of the attack kind."""
    return get_attack(attack).select(gallery, k, num_attacks, seed)


def measure_ranks(gallery, attack, selection, emb):
    return get_attack(attack).measure(gallery, selection, emb)


def line_gallery(n: int = 201) -> Gallery:
    """Points 0, 1, 2, ... on a line (as 1x1x1 'images' = embeddings): neighbours are obvious."""
    pos = torch.arange(n, dtype=torch.float32)
    ds = TensorImageDataset((pos / n).view(n, 1, 1, 1), torch.arange(n) % 3)
    return Gallery(ds, pos[:, None], ds.labels, EuclideanDistance())


def test_top_pool_size():
    assert top_pool_size(10000) == 100
    assert top_pool_size(200) == 2
    assert top_pool_size(50) == 1


def test_minus_selection_draws_from_the_top_one_percent():
    gal = line_gallery(201)  # 200 others per anchor -> pool of 2: the two nearest points
    sel = select(gal, "CA-", 2, 50, seed=3)
    for c, q in zip(sel.anchors.tolist(), sel.targets.tolist(), strict=True):
        others = sorted(range(201), key=lambda x: (abs(x - c), x))
        others.remove(c)
        assert sorted(q) == sorted(others[:2])
    sel = select(gal, "QA-", 1, 50, seed=4)
    for q, (c,) in zip(sel.anchors.tolist(), sel.targets.tolist(), strict=True):
        assert abs(c - q) == 1


def test_plus_selection_is_random_distinct_and_excludes_the_anchor():
    gal = line_gallery(50)
    sel = select(gal, "QA+", 10, 50, seed=0)
    assert sorted(sel.anchors.tolist()) == list(range(50))  # T = |X|: every item once
    for a, t in zip(sel.anchors.tolist(), sel.targets.tolist(), strict=True):
        assert a not in t and len(set(t)) == 10
    far = (sel.targets - sel.anchors[:, None]).abs().float().mean()
    assert far > 5  # random, not the neighbourhood
    again = select(gal, "QA+", 10, 50, seed=0)
    assert torch.equal(again.targets, sel.targets)  # seeded


def test_sp_candidates_are_top_g_outside_c():
    gal = line_gallery(50)
    sp = sp_candidates(gal, torch.tensor([10]), torch.tensor([[11, 30]]), g=3)
    assert sorted(sp[0].tolist()) == [8, 9, 12]  # 10's nearest, skipping 11 (in C) and 10


def test_selection_errors_are_readable():
    gal = line_gallery(50)
    with pytest.raises(AdvrankError, match="larger than the top-1%"):
        select(gal, "CA-", 5, 10)
    with pytest.raises(AdvrankError, match="does not fit"):
        select(gal, "CA+", 60, 10)
    with pytest.raises(AdvrankError, match="only 50 items"):
        select(gal, "CA+", 1, 51)


def test_measure_ranks_matches_brute_force():
    gal = line_gallery(101)
    spec = "QA+"
    sel = Selection(torch.tensor([50]), torch.tensor([[60, 45]]), torch.tensor([[49, 51]]))
    out = measure_ranks(gal, spec, sel, gal.embeddings[[50]])
    # from 50: 45 has 9 closer others (49, 51, 48, 52, ..., 46, 54), 60 has 18 closer + 55..59
    def rank(q, c):
        return sum(1 for x in range(101) if x not in (q, c) and abs(x - q) < abs(c - q))
    expect = 100 * (rank(50, 60) + rank(50, 45)) / 2 / 101
    assert out["rank"].item() == pytest.approx(expect)
    assert out["sp_rank"].item() == pytest.approx(0.0)  # 49 and 51 tie for first: nothing closer
    # CA: the perturbed candidate 70 moved to 52's position: rank w.r.t. q = 50
    spec = "CA+"
    sel = Selection(torch.tensor([70]), torch.tensor([[50]]))
    out = measure_ranks(gal, spec, sel, torch.tensor([[52.5]]))
    assert out["rank"].item() == pytest.approx(100 * 4 / 101)  # 49, 51, 48, 52 are closer


@pytest.mark.parametrize("attack", ["CA+", "CA-", "QA+", "QA-"])
def test_batched_attacks_equal_one_by_one(digits_model, attack):
    model, gal = digits_model
    kw = dict(attack=attack, eps=0.1, k=1, num_attacks=6, seed=5)
    batched = run_attack(model, gal, batch_size=6, **kw)
    single = run_attack(model, gal, batch_size=1, **kw)
    assert batched.rank_after == pytest.approx(single.rank_after)
    assert batched.rank_before == pytest.approx(single.rank_before)


def test_attacks_move_ranks_the_right_way(digits_model):
    model, gal = digits_model
    up = run_attack(model, gal, "CA+", 0.3, 1, 20, seed=1).summary()
    down = run_attack(model, gal, "QA-", 0.3, 1, 20, seed=1).summary()
    zero = run_attack(model, gal, "CA+", 0.0, 1, 20, seed=1).summary()
    assert up["rank_after"] < up["rank_before"]
    assert down["rank_after"] > down["rank_before"]
    assert zero["rank_after"] == zero["rank_before"]
    assert "sp_rank_after" in down and "sp_rank_after" not in up


@pytest.fixture(scope="module")
def digits_ckpt(trained_digits):
    return trained_digits(32)


def test_attack_cli_json_fields(digits_ckpt, capsys):
    from advrank.cli import main

    code = main(["attack", "--checkpoint", str(digits_ckpt), "--attack", "QA+", "--eps", "0.1",
                 "--m", "2", "--num-attacks", "8", "--json", "--quiet", "--device", "cpu"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("rank_before", "rank_after", "num_attacks", "eps", "sp_rank_after", "k",
                "k_name", "commit", "seed", "hardware", "threat"):
        assert key in out, key
    assert out["num_attacks"] == 8 and out["eps"] == 0.1 and out["k"] == 2
    assert out["k_name"] == "m" and "m" not in out and "w" not in out  # one spelling
    assert out["threat"]["steps"] == 20 and out["threat"]["norm"] == "Linf"
    assert 0 <= out["rank_after"] <= 100


def test_sp_mean_reduction_is_the_sum_form_with_scaled_xi(digits_ckpt, capsys):
    """For PGD's sign step, averaging Eq. 12 over C and C_SP equals summing with xi * m / G."""
    from advrank.cli import main

    common = ["attack", "--checkpoint", str(digits_ckpt), "--attack", "QA-", "--eps", "0.1",
              "--m", "2", "--num-attacks", "12", "--json", "--quiet", "--device", "cpu"]
    outs = []
    for extra in (["--sp-reduction", "mean"], ["--sp-reduction", "sum", "--xi", str(100 * 2 / 5)],
                  []):
        assert main(common + extra) == 0
        outs.append(json.loads(capsys.readouterr().out))
    mean, scaled, plain = outs
    assert mean["sp_reduction"] == "mean" and scaled["sp_reduction"] == "sum"
    assert plain["sp_reduction"] == "mean"  # the authors' reading is the default
    assert plain["rank_after"] == mean["rank_after"]
    assert mean["rank_after"] == pytest.approx(scaled["rank_after"], abs=1e-9)
    assert mean["sp_rank_after"] == pytest.approx(scaled["sp_rank_after"], abs=1e-9)


def test_attack_cli_rejects_oversized_w(digits_ckpt, capsys):
    from advrank.cli import main

    code = main(["attack", "--checkpoint", str(digits_ckpt), "--attack", "CA+", "--eps", "0.1",
                 "--w", "5000", "--num-attacks", "2", "--quiet", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("advrank: error:") and "does not fit" in err


def test_linear_model_is_supported():
    # any nn.Module mapping [B, C, H, W] to [B, D] can be attacked
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    ds = TensorImageDataset(torch.rand(30, 1, 2, 2), torch.arange(30) % 3)
    gal = Gallery.build(model, ds, EuclideanDistance())
    res = run_attack(model, gal, "CA+", 0.2, 2, 5, seed=0)
    assert len(res.rank_after) == 5
