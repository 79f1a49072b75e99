"""ERS: the formula against hand computations, the bootstrap interval, resuming, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import advrank.experiments.robustness as rob
from advrank.errors import AdvrankError
from advrank.experiments.robustness import (
    ROBRANK_FASHION,
    SCORE_NAMES,
    bootstrap_interval,
    ers,
)


def test_ers_of_a_fixed_score_vector_equals_the_hand_computation():
    raw = {"CA+": 10.0, "CA-": 30.0, "QA+": 20.0, "QA-": 40.0, "TMA": 0.5, "ES:D": 0.4,
           "ES:R": 60.0, "LTM": 70.0, "GTM": 80.0, "GTT": 90.0}
    value, rescaled = ers(raw)
    hand = [2 * 10, 100 - 30, 2 * 20, 100 - 40, 100 * (1 - 0.5), 100 * (2 - 0.4) / 2, 60, 70,
            80, 90]
    assert list(rescaled.values()) == pytest.approx(hand)
    assert list(rescaled) == list(SCORE_NAMES)
    assert value == pytest.approx(sum(hand) / 10) and value == pytest.approx(62.0)


@pytest.mark.parametrize("row,expected", [("rc2f2:ptripletC", 8.2), ("rc2f2d:ptripletC", 61.6),
                                          ("rc2f2p:ptripletC", 65.4)])
def test_ers_of_robranks_published_rows(row, expected):
    assert round(ers(ROBRANK_FASHION[row]["scores"])[0], 1) == expected


def test_ers_refuses_missing_scores():
    with pytest.raises(AdvrankError, match="missing GTT"):
        ers({name: 0.0 for name in SCORE_NAMES if name != "GTT"})


def _items(seed: int, t: int = 40) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for score in rob.SCORES:
        scale = 1.0 if score.figure in ("cosine", "shift") else 100.0
        vals = (torch.rand(t, generator=g) * scale).tolist()
        out.setdefault(score.attack, {})[score.figure] = vals
    return out


def test_bootstrap_interval_brackets_ers_is_seeded_and_collapses_without_spread():
    items = _items(0)
    raw = {s.name: sum(items[s.attack][s.figure]) / 40 for s in rob.SCORES}
    value = ers(raw)[0]
    low, high = bootstrap_interval(items, 500, seed=1)
    assert low < value < high and high - low < 20
    assert bootstrap_interval(items, 500, seed=1) == (low, high)
    assert bootstrap_interval(items, 500, seed=2) != (low, high)
    flat = {a: {f: [v[0]] * 40 for f, v in figs.items()} for a, figs in items.items()}
    flat_value = ers({s.name: flat[s.attack][s.figure][0] for s in rob.SCORES})[0]
    assert bootstrap_interval(flat, 50) == pytest.approx((flat_value, flat_value))


@pytest.fixture(scope="module")
def digits_ckpt(trained_digits):
    return trained_digits(16)


@pytest.fixture
def cheap_profile(monkeypatch):
    """rob28 with 3 PGD steps, so the tests stay fast."""
    monkeypatch.setitem(rob.PROFILES, "rob28", rob.Profile("rob28", 77 / 255, 12 / 255, 3))


def test_robustness_cli_json_fields_and_resume(digits_ckpt, tmp_path, capsys, monkeypatch,
                                               cheap_profile):
    from advrank.cli import main

    out = tmp_path / "ers"
    argv = ["robustness", "--checkpoint", str(digits_ckpt), "--profile", "rob28", "--out",
            str(out), "--num-attacks", "6", "--bootstrap", "200", "--device", "cpu", "--quiet",
            "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["scores"]) == set(SCORE_NAMES) == set(res["rescaled"])
    low, high = res["ers_ci"]
    assert low <= res["ers"] <= high
    assert res["ers"] == pytest.approx(ers(res["scores"])[0])
    assert res["num_attacks"] == 6 and res["profile"] == "rob28"
    assert res["config"]["threat"]["steps"] == 3 and "commit" in res["config"]
    assert (out / "robustness.md").read_text().count("| ES:D | ES | shift |") == 1

    # lose one attack, rerun: only that one runs again, and the figures are the same
    data = json.loads((out / "results.json").read_text())
    del data["cells"]["LTM"]
    (out / "results.json").write_text(json.dumps(data))
    ran = []
    real = rob._run_one
    monkeypatch.setattr(rob, "_run_one", lambda model, gal, attack, *a: ran.append(attack)
                        or real(model, gal, attack, *a))
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert ran == ["LTM"] and again["scores"] == res["scores"] and again["ers"] == res["ers"]

    # other settings into the same folder are refused, in one line
    assert main([*argv[:-6], "--num-attacks", "5", "--device", "cpu", "--quiet"]) == 2
    assert "num_attacks=6" in capsys.readouterr().err


def test_robustness_cli_rejects_unknown_profile(digits_ckpt, capsys):
    from advrank.cli import main

    assert main(["robustness", "--checkpoint", str(digits_ckpt), "--profile", "rob32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("advrank: error:") and "rob28" in err


def test_comparison_table_lays_out_robrank_rows():
    from advrank.reports.robustness import comparison_markdown

    pub = ROBRANK_FASHION["rc2f2p:ptripletC"]
    text = comparison_markdown([{"label": "robrank ACT", **pub, "ers": ers(pub["scores"])[0]},
                                {"label": "ours", "recall@1": 80.0, "scores": pub["scores"],
                                 "ers": 50.0, "ers_ci": [48.0, 52.5]}], "t")
    lines = text.splitlines()
    assert lines[2].split(" | ")[1:6] == ["R@1", "R@2", "mAP", "NMI", "CA+"]
    assert "| robrank ACT | 78.1 | 86.8 | 67.9 | 66.8 | 32.2 | 14.7 | 36.9 | 12.0 | 0.288 | " \
           "0.182 | 51.5 | 68.5 | 60.1 | 0.4 | 65.4 |" in lines
    assert lines[-1].endswith("| 50.0 [48.0, 52.5] |") and "| ours | 80.0 | – |" in lines[-1]
