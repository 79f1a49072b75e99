"""Transfer attacks, the resumable transfer matrix and universal perturbations (§5), and their
commands.

Two tiny digits checkpoints are trained once for the module; attacks use few PGD steps.
"""

from __future__ import annotations

import json

import pytest
import torch

from advrank.attacks import LinfThreatModel, RankingAttack, get_attack, pgd, universal_pgd
from advrank.attacks.qa import QueryAttack
from advrank.cli import main
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.data import load_dataset
from advrank.errors import AdvrankError
from advrank.experiments import transfer as transfer_mod
from advrank.experiments.protocol import run_attack
from advrank.experiments.transfer import transfer_attack, transfer_matrix
from advrank.experiments.universal import universal_attack
from advrank.models.checkpoint import model_from_checkpoint
from advrank.training import TrainConfig, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads fighting a busy CPU make these tiny models ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("blackbox")
    paths, models, galleries = [], [], []
    dataset = load_dataset("digits", "test")
    for seed in (0, 1):
        path = root / f"digits-{seed}.pt"
        train(TrainConfig(dataset="digits", arch="c2f1", epochs=1, embed_dim=32, device="cpu",
                          seed=seed), path, progress=False)
        model, meta = model_from_checkpoint(path)
        paths.append(path)
        models.append(model)
        galleries.append(Gallery.build(model, dataset, get_distance(meta.metric)))
    return {"paths": paths, "models": models, "galleries": galleries, "dataset": dataset,
            "root": root}


# ------------------------------------------------------------------------------ universal


def test_universal_is_one_perturbation_within_eps_for_every_member(env):
    model, gallery = env["models"][0], env["galleries"][0]
    eps = 0.1
    res = universal_attack(model, gallery, "CA+", eps, seed=3, steps=8, chunk_size=10,
                                   mode="own")
    r = res["perturbation"]
    assert r.shape == (1, *gallery.dataset.image_shape)
    assert r.abs().max() <= eps + 1e-7 and r.abs().max() > 0
    n = len(gallery)
    assert res["set_size"] == round(0.05 * n) == len(res["seen"]) == len(res["unseen"])
    assert not set(res["seen"]) & set(res["unseen"])
    # The reported ranks are those of clip(x + r) with the same r for every member.
    kind = get_attack("CA+")
    seen = kind.select(gallery, 1, 2 * res["set_size"], 3).slice(0, res["set_size"])
    assert seen.anchors.tolist() == res["seen"]
    clean = gallery.images(seen.anchors)
    with torch.no_grad():
        adv_emb = model((clean + r).clamp(0, 1))
    ranks = kind.measure(gallery, seen, adv_emb)["rank"]
    assert ranks.mean().item() == pytest.approx(res["rank_after"], abs=1e-4)
    assert res["rank_after"] < res["rank_before"]  # CA+ raises the candidates' ranks


def test_chunked_universal_pgd_equals_whole_batch_pgd(env):
    model, gallery = env["models"][0], env["galleries"][0]
    sel = get_attack("QA-", g=0).select(gallery, 1, 24, seed=5)
    threat = LinfThreatModel(0.2, steps=6)
    atk = RankingAttack(model, gallery.embeddings, gallery.distance, "QA-", threat, xi=0.0, g=0)
    images = gallery.images(sel.anchors)
    adv = pgd(model, images, atk.objective(sel), threat, universal=True)
    one = [(0, 24, atk.objective(sel))]
    r1, hist = universal_pgd(model, images, one, threat)
    assert len(hist) == 6 and r1.shape == (1, *images.shape[1:])
    # pgd(universal=True) moved every member by this same r, except where [0, 1] clipped it.
    diff, shifted = adv - images, (images + r1).expand_as(images)
    free = (shifted > 0) & (shifted < 1)
    assert free.float().mean() > 0.3 and r1.abs().max() > 0
    assert torch.allclose(diff[free], r1.expand_as(diff)[free], atol=1e-6)
    assert torch.equal(adv[~free], shifted[~free].clamp(0, 1))
    assert torch.equal((images + r1).clamp(0, 1), adv)  # one chunk: the same computation
    chunks = [(s, s + 8, atk.objective(sel.slice(s, s + 8))) for s in range(0, 24, 8)]
    r3, _ = universal_pgd(model, images, chunks, threat)
    # Chunked accumulation only reorders a float sum: sign steps agree almost everywhere.
    assert (r3 == r1).float().mean() > 0.95


def test_universal_shared_mode_and_bad_arguments(env):
    model, gallery = env["models"][0], env["galleries"][0]
    res = universal_attack(model, gallery, "QA+", 0.1, seed=1, steps=4, mode="shared")
    assert res["mode"] == "shared" and res["reported"] == res["set_size"]
    with pytest.raises(AdvrankError):
        universal_attack(model, gallery, "QA+", 0.1, fraction=0.8)
    with pytest.raises(AdvrankError):
        universal_attack(model, gallery, "QA+", 0.1, mode="bogus")


# ------------------------------------------------------------------------------- transfer


@pytest.mark.parametrize("attack", ["CA-", "QA+"])
def test_transfer_to_itself_equals_white_box(env, attack):
    model, gallery = env["models"][0], env["galleries"][0]
    threat = LinfThreatModel(0.1, steps=4)
    out = transfer_attack(model, model, env["dataset"], attack, 0.1, num_attacks=20,
                                   seed=7, batch_size=8, threat=threat, source_gallery=gallery,
                                   target_gallery=gallery)
    ref = run_attack(model, gallery, attack, 0.1, 1, 20, seed=7, batch_size=8,
                     threat=threat).summary()
    for key in ("rank_before", "rank_after", "rank_after_se"):
        assert out[key] == pytest.approx(ref[key], abs=1e-9)
        assert out["source"][key] == pytest.approx(ref[key], abs=1e-9)
    assert out["rank_after"] != pytest.approx(out["rank_before"])


@pytest.mark.parametrize("select_on", ["source", "target"])
def test_transfer_ranks_the_same_selection_on_both_models(env, monkeypatch, select_on):
    (m0, m1), (g0, g1) = env["models"], env["galleries"]
    kind = get_attack("QA-")
    expected = kind.select(g0 if select_on == "source" else g1, 1, 16, 2)
    other = kind.select(g1 if select_on == "source" else g0, 1, 16, 2)
    assert not torch.equal(expected.targets, other.targets)  # the choice is observable

    calls = []
    real = QueryAttack.measure

    def spy(self, gallery, selection, adv_emb):
        calls.append((gallery, selection))
        return real(self, gallery, selection, adv_emb)

    monkeypatch.setattr(QueryAttack, "measure", spy)
    out = transfer_attack(m0, m1, env["dataset"], "QA-", 0.1, num_attacks=16, seed=2,
                                   batch_size=16, threat=LinfThreatModel(0.1, steps=3),
                                   select_on=select_on, source_gallery=g0, target_gallery=g1)
    assert {id(g) for g, _ in calls} == {id(g0), id(g1)}
    for _, sel in calls:
        assert torch.equal(sel.anchors, expected.anchors)
        assert torch.equal(sel.targets, expected.targets)
        assert torch.equal(sel.sp, expected.sp)  # C_SP too
    assert out["select_on"] == select_on and out["num_attacks"] == 16
    # The target ranks the selection with its own embeddings: its "before" differs.
    assert out["rank_before"] != pytest.approx(out["source"]["rank_before"])


def test_transfer_matrix_resumes_after_interruption(env, monkeypatch, tmp_path):
    ckpts = {"A": str(env["paths"][0]), "B": str(env["paths"][1])}
    kwargs = {"eps": 0.1, "num_attacks": 8, "steps": 3, "out_dir": tmp_path, "seed": 4}
    real = transfer_mod._transfer_row
    calls = []

    def flaky(source, kind, *args):
        calls.append((kind.name, source))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(source, kind, *args)

    monkeypatch.setattr(transfer_mod, "_transfer_row", flaky)
    with pytest.raises(KeyboardInterrupt):
        transfer_matrix(ckpts, attacks=("CA+", "QA-"), **kwargs)
    saved = json.loads((tmp_path / "transfer.json").read_text())
    assert saved["complete"] is False
    assert set(saved["results"]["CA+"]) == {"A"} and set(saved["results"]["CA+"]["A"]) == {
        "A", "B"}
    assert "…" in (tmp_path / "transfer.md").read_text()

    calls.clear()
    monkeypatch.setattr(transfer_mod, "_transfer_row",
                        lambda source, kind, *a: calls.append((kind.name, source))
                        or real(source, kind, *a))
    matrix = transfer_matrix(ckpts, attacks=("CA+", "QA-"), **kwargs)
    assert calls == [("CA+", "B"), ("QA-", "A"), ("QA-", "B")]  # the finished row is kept
    assert matrix["complete"] is True
    final = json.loads((tmp_path / "transfer.json").read_text())
    assert final["results"]["CA+"]["A"] == saved["results"]["CA+"]["A"]
    for attack in ("CA+", "QA-"):
        for src in "AB":
            for tgt in "AB":
                cell = final["results"][attack][src][tgt]
                assert 0 <= cell["rank_after"] <= 100 and cell["num_attacks"] == 8
    md = (tmp_path / "transfer.md").read_text()
    assert "…" not in md and "| From \\ To | A | B |" in md and "→" in md

    calls.clear()
    transfer_matrix(ckpts, attacks=("CA+",), **kwargs)  # a subset: nothing to do
    assert calls == []
    with pytest.raises(AdvrankError, match="other settings"):
        transfer_matrix(ckpts, attacks=("CA+",), **{**kwargs, "eps": 0.2})
    with pytest.raises(AdvrankError, match="other settings .models="):  # other checkpoints
        transfer_matrix({"A": ckpts["A"], "B": ckpts["A"]}, attacks=("CA+",),
                                 **kwargs)


# ------------------------------------------------------------------------------------ CLI


def _run(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json", "--quiet", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_transfer_json(env, capsys):
    p0, p1 = map(str, env["paths"])
    out = _run(capsys, ["transfer", "--source", p0, "--target", p1, "--attack", "CA−",
                        "--eps", "0.1", "--num-attacks", "8", "--steps", "3", "--seed", "1"])
    assert out["attack"] == "CA-" and out["num_attacks"] == 8
    assert 0 <= out["rank_before"] <= 100 and 0 <= out["rank_after"] <= 100
    assert out["target_checkpoint"] == p1 and "rank_after" in out["source"]


def test_cli_transfer_records_each_models_own_distance(capsys, tmp_path, untrained_checkpoint):
    """A Euclidean source and a cosine target: the JSON names the distance each ranking used
    (it once said "cosine" for both, whatever the checkpoints)."""
    src = untrained_checkpoint(tmp_path / "euclid.pt", metric="euclidean")
    tgt = untrained_checkpoint(tmp_path / "cos.pt", seed=1)
    out = _run(capsys, ["transfer", "--source", str(src), "--target", str(tgt), "--attack",
                        "CA+", "--eps", "0.1", "--num-attacks", "4", "--steps", "2"])
    assert (out["source_distance"], out["target_distance"]) == ("euclidean", "cosine")


def test_cli_universal_json_and_png(env, capsys, tmp_path, monkeypatch):
    argv = ["universal", "--checkpoint", str(env["paths"][0]), "--attack", "QA-", "--eps",
            "0.1", "--steps", "3"]
    out = _run(capsys, [*argv, "--out", str(tmp_path / "out")])
    monkeypatch.chdir(tmp_path)  # without --out: the same figures, in memory, no file written
    memory = _run(capsys, argv)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "out"]
    varies = ("png", "perturbation_file", "date", "seconds", "command")
    assert {k: v for k, v in out.items() if k not in varies} \
        == {k: v for k, v in memory.items() if k not in varies}
    for key in ("rank_before", "rank_after", "rank_after_unseen", "rank_before_unseen"):
        assert 0 <= out[key] <= 100
    assert out["attack"] == "I-QA-" and out["threat"]["steps"] == 3
    with open(out["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    r = torch.load(out["perturbation_file"], weights_only=True)
    assert r.abs().max().item() == pytest.approx(out["perturbation_linf"])


def test_cli_transfer_matrix_and_errors(env, capsys, tmp_path):
    p0, p1 = map(str, env["paths"])
    out = _run(capsys, ["transfer-matrix", "--checkpoint", f"lo={p0}", "--checkpoint",
                        f"hi={p1}", "--attacks", "QA+", "--eps", "0.1", "--num-attacks", "4",
                        "--steps", "2", "--out", str(tmp_path)])
    assert list(out["models"]) == ["lo", "hi"] and out["complete"] is True
    assert set(out["results"]["QA+"]["hi"]) == {"lo", "hi"}
    assert (tmp_path / "transfer.md").exists()
    capsys.readouterr()
    for argv, fragment in (
            (["transfer", "--source", p0, "--target", p1, "--attack", "XA+", "--eps", "0.1"],
             "unknown attack 'XA+'"),
            (["transfer-matrix", "--checkpoint", p0, "--out", str(tmp_path)], "NAME=PATH")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("advrank: error:") and fragment in err[0]
