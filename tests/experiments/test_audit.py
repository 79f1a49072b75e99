"""The audit experiment on a digits checkpoint: the figures, report.json's fields, the HTML
page (self-contained), resuming an interrupted audit and refusing other settings."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from advrank.errors import AdvrankError
from advrank.experiments import audit as audit_module
from advrank.experiments.audit import AuditConfig, run_audit
from advrank.experiments.audit import experiment as audit_experiment
from advrank.experiments.audit import plan as plan_module
from advrank.experiments.target import load_target

ATTACKS = ("CA+", "CA-", "QA+", "QA-", "ES")


@pytest.fixture(scope="module")
def digits_target(untrained_digits):
    return load_target(untrained_digits, "cpu")


def _config(**kw):
    return AuditConfig(**{"eps_values": [0.1, 0.3], "num_attacks": 4, "steps": 2,
                          "examples": 1, "top": 3, **kw})


def test_audit_figures_report_and_page(digits_target, tmp_path, inspect_page):
    out = tmp_path / "audit"
    summary = run_audit(digits_target, out, _config(), digits_target.record(0))
    assert summary["gallery_size"] == 719 and 0 < summary["recall@1"] <= 100
    assert 0 < summary["map"] <= 100 and summary["unreadable_images"] == 0
    rows = summary["attacks"]
    assert [(r["attack"], r["eps"]) for r in rows] == [(a, e) for a in ATTACKS
                                                       for e in (0.1, 0.3)]
    for r in rows:
        assert {"attack", "eps", "k", "rank_before", "rank_after"} <= set(r)
        assert r["num_attacks"] == 4 and 0 <= r["rank_after"] <= 100
    es = [r for r in rows if r["attack"] == "ES"]
    assert es[0]["rank_before"] == 0.0 and es[1]["shift_after"] > es[0]["shift_before"]

    report = json.loads((out / "report.json").read_text())
    cfg = report["config"]
    for key in ("command", "seed", "commit", "hardware", "date", "model_sha", "data_sha",
                "fingerprint", "checkpoint", "metric", "num_attacks", "audit"):
        assert cfg.get(key) is not None, key
    assert len(cfg["model_sha"]) == 64 and len(cfg["data_sha"]) == 64
    assert set(report["cells"]) == {"retrieval"} | {f"{a}|{e:g}|1" for a in ATTACKS
                                                    for e in (0.1, 0.3)}
    assert report["summary"]["recall@1"] == summary["recall@1"]
    assert [e["attack"] for e in report["examples"]] == list(ATTACKS)
    for example in report["examples"]:
        assert example["eps"] == 0.3 and len(example["top_after"]) == 3
        assert example["linf"] <= 0.3 + 1e-6 and example["targets"]

    page = (out / "report.html").read_text()
    found = inspect_page(page)
    assert found["urls"] and all(u.startswith("data:image/png;base64,") for u in found["urls"])
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for src in found["images"]:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the plot, then per panel: (query,) original, perturbation, adversarial, the lists
    expected = 1
    for e in report["examples"]:
        expected += 3 + (e["query"] is not None)
        for when in ("before", "after"):
            shown = {t["index"] for t in e[f"top_{when}"]}
            expected += len(shown) + len([t for t in e["targets"][:3] if t["index"] not in shown])
    assert len(found["images"]) == expected
    assert found["tags"].count("table") == 4 and page.count('class="panel"') == 5


def test_audit_resumes_and_refuses_other_settings(digits_target, tmp_path, monkeypatch):
    out = tmp_path / "audit"
    real = audit_experiment.run_attack
    calls = []

    def dies_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[2].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_experiment, "run_attack", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_audit(digits_target, out, _config(examples=0))
    assert len(json.loads((out / "report.json").read_text())["cells"]) == 1 + 3
    assert not (out / "report.html").exists()
    calls.clear()
    monkeypatch.setattr(audit_experiment, "run_attack",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = run_audit(digits_target, out, _config(examples=0))
    assert len(calls) == 7 and len(resumed["attacks"]) == 10
    calls.clear()
    run_audit(digits_target, out, _config(examples=0))
    assert calls == [] and (out / "report.html").is_file()
    with pytest.raises(AdvrankError, match="other settings.*num_attacks"):
        run_audit(digits_target, out, _config(num_attacks=5))


def test_bad_audit_settings_are_refused_before_work(digits_target, tmp_path):
    for config, message in [(_config(eps_values=[]), "at least one eps"),
                            (_config(eps_values=[1.5]), "eps.*<= 1"),
                            (_config(attacks=["CA+", "XX"]), "unknown attack 'XX'"),
                            (_config(num_attacks=1000), "1000 attacks requested")]:
        with pytest.raises(AdvrankError, match=message):
            run_audit(digits_target, tmp_path / "a", config)
    assert not (tmp_path / "a" / "report.json").exists()


def test_audit_plan_estimates_from_a_timed_probe(digits_target, monkeypatch):
    config = _config(attacks=["CA+", "ES"], eps_values=[0.0, 0.1, 0.3], batch_size=3)
    kinds = config.validate()
    todo = [(a, e) for a in kinds for e in config.eps_values]
    probes = []
    monkeypatch.setattr(plan_module, "probe_seconds",
                        lambda target, batch: probes.append(batch) or 0.5)
    plan = audit_module.audit_plan(digits_target, kinds, config, 4, todo)
    # eps 0 runs no PGD; 2 batches of 3 (T = 4) x 2 steps per cell, then the example panels'
    # pool (4 attacks at the largest eps) per kind: 2 batches x 2 steps each
    assert plan["steps"] == 2 * 2 * 2 * 2 + 2 * 2 * 2
    assert plan["attacks"] == 6 * 4 + 2 * 4
    assert probes == [3] and plan["seconds"] == pytest.approx(0.5 * plan["steps"])
    message = audit_module.estimate_message(plan)
    assert "estimated time about 12 s" in message and "warning" not in message
    monkeypatch.setattr(plan_module, "LONG_AUDIT_SECONDS", 1.0)
    long = audit_module.estimate_message(audit_module.audit_plan(digits_target, kinds, config,
                                                                 4, todo))
    assert "warning" in long and audit_module.FAST_SETTING in long
    assert audit_module.audit_plan(digits_target, kinds, config, 4, [])["steps"] == 8
    assert audit_module.probe_seconds(digits_target, 3) > 0  # the real probe runs


def test_default_t_fits_the_collection_with_a_note(digits_target, tmp_path):
    notes = []
    summary = run_audit(digits_target, tmp_path / "a",
                        _config(attacks=["CA+"], eps_values=[0.0], num_attacks=None,
                                examples=0), log=notes.append)
    assert summary["attacks"][0]["num_attacks"] == 719
    assert any("note: T = 719" in n for n in notes)
    assert any("estimated time" in n or "no attack left" in n for n in notes)


def test_probe_halves_a_batch_that_does_not_fit(digits_target):
    from types import SimpleNamespace

    sizes = []

    def small_memory(images):
        sizes.append(images.shape[0])
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("no room")
        return digits_target.model(images)

    probe = SimpleNamespace(gallery=digits_target.gallery, model=small_memory)
    assert audit_module.probe_seconds(probe, 8) > 0 and sizes == [8, 4, 2]


def _deployed_config(**kw):
    return _config(attacks=["CA+", "QA+"], examples=0, step_size=0.05, pipeline="png", **kw)


def test_deployed_view_adds_query_only_rows_to_a_finished_audit(digits_target, tmp_path,
                                                                 monkeypatch, inspect_page):
    from advrank.experiments import query as query_module

    out = tmp_path / "audit"
    first = run_audit(digits_target, out, _deployed_config())
    assert {(r["attack"], r["view"]) for r in first["deployed"]["rows"]} == {
        (a, v) for a in ("CA+", "QA+") for v in ("white-box", "pipeline")}
    assert first["deployed"]["query"] is None and not (out / "rank_vs_queries.png").exists()
    real, calls = audit_experiment.run_attack, []
    monkeypatch.setattr(audit_experiment, "run_attack", lambda *a, **k: calls.append(1) or
                        real(*a, **k))
    summary = run_audit(digits_target, out, _deployed_config(query_budget=12))
    assert calls == []  # the white-box cells are resumed; only the query-only ones run

    d = summary["deployed"]
    assert d["query"] == {"budget": 12, "feedback": "full", "optimizer": "random",
                          "oracle": "local", "marks": [2, 3, 6, 12],
                          "plot": "rank_vs_queries.png"}
    rows = {(r["attack"], r["eps"], r["view"]): r for r in d["rows"]}
    assert not any(r["view"] == "query-only" and r["attack"] == "CA+" for r in d["rows"])
    for eps in (0.1, 0.3):
        white, query = rows[("QA+", eps, "white-box")], rows[("QA+", eps, "query-only")]
        assert query["rank_before"] == white["rank_before"]  # the same attacked items
        assert rows[("QA+", eps, "pipeline")]["rank_before"] == pytest.approx(
            white["rank_before"], abs=5.0)  # the clean pictures after png: nearly the same
        points = query["checkpoints"]
        assert [p["queries"] for p in points] == [2, 3, 6, 12]
        assert points[-1]["rank_after"] == query["rank_after"]
        assert all(0 <= p["rank_after"] <= 100 for p in points)
        assert query["queries_used_max"] <= 12
    assert rows[("QA+", 0.3, "query-only")]["rank_after"] < rows[("QA+", 0.3,
                                                                 "query-only")]["rank_before"]

    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["deployed"] == d
    assert "query|QA+|0.3|1|12|full|random" in report["cells"]
    assert (out / "rank_vs_queries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    found = inspect_page(page)
    assert "Deployed view" in page and "query-only: 12 queries, full feedback" in page
    assert "white-box, after png" in page and "Rank vs queries" in page
    assert len(found["images"]) == 2 and found["tags"].count("table") == 5

    cells = report["cells"]
    cells["query|QA+|0.3|1|12|full|random"]["checkpoints"][0]["rank_after"] = 150.0
    (out / "report.json").write_text(json.dumps(report))
    monkeypatch.setattr(query_module, "run_query_attack", None)  # refused before any work
    with pytest.raises(AdvrankError, match="damaged cell.*checkpoint.*150"):
        run_audit(digits_target, out, _deployed_config(query_budget=12))


def test_bad_query_settings_are_refused_before_work(digits_target, tmp_path):
    for config, message in [(_config(feedback="topk:5"), "give a query budget"),
                            (_config(attacks=["CA+"], query_budget=5), "query-only form"),
                            (_config(query_budget=0), "query budget"),
                            (_config(query_budget=5, feedback="topk"), "feedback must be")]:
        with pytest.raises(AdvrankError, match=message):
            run_audit(digits_target, tmp_path / "a", config)
    assert not (tmp_path / "a" / "report.json").exists()


def test_audit_plan_counts_the_query_only_rounds(digits_target, monkeypatch):
    config = _config(attacks=["CA+", "QA+"], eps_values=[0.1], batch_size=3, examples=0,
                     query_budget=10)
    kinds = config.validate()
    monkeypatch.setattr(plan_module, "probe_seconds",
                        lambda target, batch, backward=True: 0.5 if backward else 0.1)
    plan = audit_module.audit_plan(digits_target, kinds, config, 4, [], [("QA+", 0.1)])
    # no PGD left; one query-only cell: 2 batches of 3 (T = 4) x 10 queries each
    assert plan["steps"] == 0 and plan["query_rounds"] == 2 * 10
    assert plan["seconds"] == pytest.approx(0.1 * 20) and plan["attacks"] == 4
    assert "20 query-only rounds" in audit_module.estimate_message(plan)


def test_deployed_view_ranks_a_source_models_attacks(digits_target, tmp_path, inspect_page,
                                                      untrained_checkpoint):
    from types import SimpleNamespace

    path = untrained_checkpoint(tmp_path / "source.pt", seed=1)
    source = load_target(path, "cpu")
    config = _config(attacks=["QA+"], eps_values=[0.0, 0.3], examples=0, step_size=0.05)
    summary = run_audit(digits_target, tmp_path / "a", config, source=source)
    d = summary["deployed"]
    rows = {(r["eps"], r["view"]): r for r in d["rows"]}
    assert sorted(rows) == [(0.0, "white-box"), (0.3, "transfer"), (0.3, "white-box")]
    moved, white = rows[(0.3, "transfer")], rows[(0.3, "white-box")]
    assert moved["rank_before"] == white["rank_before"]  # the same items, the same ranking
    assert moved["source"]["rank_after"] != moved["rank_after"]  # another model ranks them
    assert d["transfer"]["fingerprint"] == source.fingerprint
    page = (tmp_path / "a" / "report.html").read_text()
    assert "transfer from source.pt" in page and "No transfer rows" not in page
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    key = f"transfer|QA+|0.3|1|{source.fingerprint}"
    report["cells"][key]["source"]["rank_after"] = -3.0
    (tmp_path / "a" / "report.json").write_text(json.dumps(report))
    with pytest.raises(AdvrankError, match="damaged cell.*source's figures.*-3"):
        run_audit(digits_target, tmp_path / "a", config, source=source)

    stranger = SimpleNamespace(gallery=[0] * 5, source="other.pt")
    with pytest.raises(AdvrankError, match="another collection"):
        run_audit(digits_target, tmp_path / "b", config, source=stranger)
    assert not (tmp_path / "b").exists()
