"""robrank's attack kinds (TMA, ES, LTM, GTM, GTT) against brute-force references on a tiny
gallery: selection, objective value and gradient, and the score each one is measured by."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.attacks import get_attack
from advrank.attacks.selection import Selection
from advrank.core.distances import CosineDistance, EuclideanDistance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset
from advrank.errors import AdvrankError
from advrank.experiments.protocol import run_attack

DISTANCES = [CosineDistance(), EuclideanDistance()]
KINDS = ["TMA", "ES", "LTM", "GTM", "GTT"]


def _d(dist, a, b):
    """Brute-force distance of two vectors."""
    if isinstance(dist, CosineDistance):
        return 1 - torch.dot(a, b) / (a.norm() * b.norm())
    return (a - b).norm()


def _cos(a, b):
    return torch.dot(a, b) / (a.norm() * b.norm())


def _ranking(dist, e, gallery, own):
    """Gallery indices by distance to e, nearest first, ``own`` left out (Python sort)."""
    ds = [(_d(dist, e, gallery[j]).item(), j) for j in range(len(gallery)) if j != own]
    return [j for _, j in sorted(ds)]


def tiny_gallery(dist) -> Gallery:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(14, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    return Gallery(TensorImageDataset(torch.zeros(14, 1, 1, 1), labels), emb, labels, dist)


def brute_objective(kind, dist, gal, part, b, e):
    """The kind's loss for attack b at embedding e, written out from its definition."""
    x, labels, q = gal.embeddings, gal.labels, int(part.anchors[b])
    if kind == "TMA":
        return 1 - _cos(e, x[int(part.targets[b, 0])])
    if kind == "ES":
        return -_d(dist, e, x[q])
    if kind in ("LTM", "LTM-robrank"):  # robrank's code keeps q's own copy among P(q)
        own = kind == "LTM-robrank"
        pos = [_d(dist, e, x[j]) for j in range(len(x))
               if labels[j] == labels[q] and (own or j != q)]
        neg = [_d(dist, e, x[j]) for j in range(len(x)) if labels[j] != labels[q]]
        return torch.relu(max(neg) - min(pos))
    if kind == "GTM":
        return _d(dist, e, x[int(part.targets[b, 0])])
    m = int(part.targets[b, 0])  # GTT: every x pushed ahead of m
    return sum(torch.relu(_d(dist, e, x[j]) - _d(dist, e, x[m])) for j in range(len(x)))


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("kind", [*KINDS, "LTM-robrank"])
def test_objective_value_and_gradient_match_brute_force(dist, kind):
    gal = tiny_gallery(dist)
    attack = (get_attack("LTM", own_copy_positive=True) if kind == "LTM-robrank"
              else get_attack(kind))
    part = attack.select(gal, 1, 5, seed=1)
    g = torch.Generator().manual_seed(7)
    emb = gal.embeddings[part.anchors] + 0.3 * torch.randn(5, 5, generator=g,
                                                             dtype=torch.float64)
    clean = gal.embeddings[part.anchors]
    loss, grad = attack.objective(gal.embeddings, dist, part, clean).value_and_grad(emb)
    assert loss.shape == (5,) and grad.shape == emb.shape
    for b in range(5):
        z = emb[b].clone().requires_grad_(True)
        ref = brute_objective(kind, dist, gal, part, b, z)
        (ref_grad,) = torch.autograd.grad(ref, z)
        assert loss[b].item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)
        assert torch.allclose(grad[b], ref_grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
def test_selections_match_brute_force(dist):
    gal = tiny_gallery(dist)
    x, labels = gal.embeddings, gal.labels
    gtm = get_attack("GTM").select(gal, 1, 8, seed=2)
    gtm_robrank = get_attack("GTM", target="robrank").select(gal, 1, 8, seed=2)
    gtt = get_attack("GTT").select(gal, 1, 8, seed=2)
    tma = get_attack("TMA").select(gal, 1, 14, seed=2)
    ltm = get_attack("LTM").select(gal, 1, 8, seed=2)
    assert torch.equal(gtm.anchors, gtt.anchors)  # one anchor draw per seed, whatever the kind
    for b, q in enumerate(gtm.anchors.tolist()):
        order = _ranking(dist, x[q], x, q)
        assert gtt.targets[b, 0] == order[0]  # GTT: q's top-1, its own copy left out
        other = [j for j in order if labels[j] != labels[order[0]]]
        assert gtm.targets[b, 0] == other[0]  # GTM: nearest of another class than the top-1
        # robrank's code: u's position among the members of other labels, used as an index
        position = sum(1 for j in range(other[0]) if labels[j] != labels[order[0]])
        assert gtm_robrank.targets[b, 0] == position
        assert torch.equal(ltm.extra["labels"][b], labels)
    assert (tma.targets[:, 0] != tma.anchors).all()  # TMA: a random *other* item
    again = get_attack("TMA").select(gal, 1, 14, seed=2)
    assert again.same_as(tma) and not get_attack("TMA").select(gal, 1, 14, seed=3).same_as(tma)


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
def test_scores_match_brute_force(dist):
    gal = tiny_gallery(dist)
    x, labels = gal.embeddings, gal.labels
    g = torch.Generator().manual_seed(11)
    for kind in KINDS:
        attack = get_attack(kind)
        part = attack.select(gal, 1, 6, seed=4)
        emb = x[part.anchors] + 0.8 * torch.randn(6, 5, generator=g, dtype=torch.float64)
        out = attack.measure(gal, part, emb)
        for b, q in enumerate(part.anchors.tolist()):
            order = _ranking(dist, emb[b], x, q)
            r1 = 100.0 * (labels[order[0]] == labels[q]).item()
            if "recall@1" in out:
                assert out["recall@1"][b].item() == r1
            if kind == "TMA":
                ref = _cos(emb[b], x[int(part.targets[b, 0])])
                assert out["cosine"][b].item() == pytest.approx(ref.item(), rel=1e-9)
            if kind == "ES":
                assert out["shift"][b].item() == pytest.approx(_d(dist, emb[b], x[q]).item())
            if kind == "GTT":
                m = int(part.targets[b, 0])
                assert out["retain@4"][b].item() == 100.0 * (m in order[:4])
                assert out["retain@1"][b].item() == 100.0 * (m == order[0])
        assert set(out) >= {attack.headline}


def test_es_nudged_start_has_a_gradient_at_the_clean_point():
    for dist in DISTANCES:
        gal = tiny_gallery(dist)
        part = get_attack("ES").select(gal, 1, 4, seed=0)
        clean = gal.embeddings[part.anchors]
        plain = get_attack("ES").objective(gal.embeddings, dist, part, clean)
        nudged = get_attack("ES", start="nudge").objective(gal.embeddings, dist, part, clean)
        assert plain.value_and_grad(clean)[1].abs().max() < 1e-6  # flat at r = 0
        assert (nudged.value_and_grad(clean)[1].abs().sum(1) > 0).all()
        assert get_attack("ES").random_start and not get_attack("ES", start="nudge").random_start
    with pytest.raises(AdvrankError, match="ES start"):
        get_attack("ES", start="zero")
    with pytest.raises(AdvrankError, match="GTM target"):
        get_attack("GTM", target="far")


def test_kinds_have_no_size_and_ltm_needs_its_selection():
    gal = tiny_gallery(CosineDistance())
    with pytest.raises(AdvrankError, match="no size parameter"):
        get_attack("GTM").select(gal, 2, 3)
    with pytest.raises(AdvrankError, match="takes no xi"):
        get_attack("TMA", xi=1.0)
    bare = Selection(torch.full((2,), -1), None)
    with pytest.raises(AdvrankError, match="LTM needs a selection"):
        get_attack("LTM").objective(gal.embeddings, gal.distance, bare)


@pytest.mark.parametrize("kind", KINDS)
def test_kinds_batch_independently_and_move_their_figure_the_right_way(digits_model, kind):
    model, gal = digits_model
    kw = dict(attack=kind, eps=0.3, k=1, num_attacks=6, seed=5)
    batched = run_attack(model, gal, batch_size=6, **kw)
    single = run_attack(model, gal, batch_size=1, **kw)
    fig = get_attack(kind).headline
    assert batched.after[fig] == pytest.approx(single.after[fig])  # ES: keyed random starts
    s = batched.summary()
    assert s["headline"] == fig
    sign = 1 if get_attack(kind).direction == "up" else -1
    assert sign * (s[f"{fig}_after"] - s[f"{fig}_before"]) > 0
    assert s["threat"]["random_start"] == (kind == "ES")


def test_new_kinds_in_attack_and_grid_commands(tmp_path, capsys, trained_digits):
    from advrank.cli import main

    ckpt = trained_digits(16)
    base = ["--checkpoint", str(ckpt), "--quiet", "--device", "cpu"]
    assert main(["attack", *base, "--attack", "GTT", "--eps", "0.1", "--num-attacks", "4",
                 "--steps", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attack"] == "GTT" and out["headline"] == "retain@4"
    assert 0 <= out["retain@4_after"] <= 100 and out["k_name"] is None
    assert main(["attack", *base, "--attack", "ES", "--eps", "0.1", "--num-attacks", "4",
                 "--steps", "3"]) == 0
    assert capsys.readouterr().out.startswith("ES eps=0.1 k=1: shift 0.0000 -> ")
    assert main(["grid", *base, "--out", str(tmp_path / "g"), "--attacks", "CA+,TMA,LTM",
                 "--ks", "1,2", "--eps-values", "0.1", "--num-attacks", "3", "--paper",
                 "none"]) == 0
    table = (tmp_path / "g" / "table.md").read_text()
    assert "TMA k=1" in table and "LTM k=1" in table and "CA+ w=2" in table
    assert "TMA k=2" not in table  # a kind without a size has one column
    cells = json.loads((tmp_path / "g" / "results.json").read_text())["cells"]
    assert sorted(cells) == ["CA+|0.1|1", "CA+|0.1|2", "LTM|0.1|1", "TMA|0.1|1"]
    capsys.readouterr()


def test_rank_only_experiments_refuse_other_kinds(digits_model):
    from advrank.experiments.transfer import transfer_attack
    from advrank.experiments.universal import universal_attack

    model, gal = digits_model
    with pytest.raises(AdvrankError, match="transfer reports normalized ranks; TMA"):
        transfer_attack(model, model, gal.dataset, "TMA", 0.1, source_gallery=gal,
                        target_gallery=gal)
    with pytest.raises(AdvrankError, match="universal attack reports normalized ranks; ES"):
        universal_attack(model, gal, "ES", 0.1)
