"""Objectives against brute-force references, PGD's projection, and batched == one-by-one."""

import itertools

import pytest
import torch
from torch import nn

from advrank.attacks import (
    CandidateObjective,
    EmbeddingShiftObjective,
    LinfThreatModel,
    QueryObjective,
    RankingAttack,
    get_attack,
    paper_step_size,
    paper_steps,
    pgd,
    project,
)
from advrank.attacks.selection import Selection
from advrank.core.distances import CosineDistance, EuclideanDistance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset
from advrank.errors import AdvrankError

DISTANCES = [CosineDistance(), EuclideanDistance()]


def _d(dist, a, b):
    """Brute-force distance of two vectors."""
    if isinstance(dist, CosineDistance):
        return 1 - torch.dot(a, b) / (a.norm() * b.norm())
    return (a - b).norm()


# Our Euclidean distance clamps its square at 1e-12 (finite gradients), hence abs=1e-5 below.
def _hinge(x):
    return x if x > 0 else x * 0


def brute_ca(direction, z, queries, gallery, dist):
    """sum_q sum_x [±(d(q, c) - d(q, x))]_+ with explicit Python loops."""
    sign = 1 if direction == "+" else -1
    total = z.sum() * 0
    for q, x in itertools.product(queries, gallery):
        total = total + _hinge(sign * (_d(dist, q, z) - _d(dist, q, x)))
    return total


def brute_qa(direction, z, cands, sp, xi, gallery, dist):
    sign = 1 if direction == "+" else -1
    total = z.sum() * 0
    for c, x in itertools.product(cands, gallery):
        total = total + _hinge(sign * (_d(dist, z, c) - _d(dist, z, x)))
    for c, x in itertools.product(sp, gallery):
        total = total + xi * _hinge(_d(dist, z, c) - _d(dist, z, x))
    return total


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(9, 4, generator=g, dtype=torch.float64)
    emb = torch.randn(3, 4, generator=g, dtype=torch.float64)
    return gallery, emb


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("direction", ["+", "-"])
def test_candidate_objective_matches_brute_force(small, dist, direction):
    gallery, emb = small
    qidx = torch.tensor([[0, 3], [1, 2], [8, 4]])
    obj = CandidateObjective(direction == "+", gallery[qidx], gallery, dist, chunk=4)
    loss, grad = obj.value_and_grad(emb)
    for b in range(3):
        z = emb[b].clone().requires_grad_(True)
        ref = brute_ca(direction, z, gallery[qidx[b]], gallery, dist)
        (ref_grad,) = torch.autograd.grad(ref, z)
        assert loss[b].item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-5)
        assert torch.allclose(grad[b], ref_grad, atol=1e-9)
    assert torch.allclose(obj(emb), loss)


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("direction", ["+", "-"])
def test_query_objective_with_sp_matches_brute_force(small, dist, direction):
    gallery, emb = small
    cidx = torch.tensor([[0, 3], [1, 2], [8, 4]])
    sp = torch.tensor([[5], [6], [7]])
    xi = 1.0 if direction == "+" else 100.0
    obj = QueryObjective(direction == "+", cidx, gallery, dist, sp_candidates=sp, xi=xi, chunk=4,
                         reduction="sum")
    loss, grad = obj.value_and_grad(emb)
    for b in range(3):
        z = emb[b].clone().requires_grad_(True)
        ref = brute_qa(direction, z, gallery[cidx[b]], gallery[sp[b]], xi, gallery, dist)
        (ref_grad,) = torch.autograd.grad(ref, z)
        assert loss[b].item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-5)
        assert torch.allclose(grad[b], ref_grad, atol=1e-8)
    # chunked value_and_grad equals one unchunked autograd pass
    assert torch.allclose(obj(emb), loss)


def _dense_reference(direction, d_ab, d_ax, xi_terms=None):
    """sum over X of the hinge as one dense tensor: d_ab [B, k], d_ax [B, N] (or [B, k, N])."""
    sign = 1 if direction == "+" else -1
    d_ax = d_ax if d_ax.dim() == 3 else d_ax[:, None, :]
    return torch.relu(sign * (d_ab[:, :, None] - d_ax)).sum(dim=(1, 2))


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("direction", ["+", "-"])
def test_fast_objectives_match_dense_autograd_on_a_larger_gallery(dist, direction):
    """The sorted/prefix-sum CA and the hand-written QA derivative against plain autograd over
    a dense [B, k, N] hinge, with chunks that do not divide N and a repeated gallery row."""
    g = torch.Generator().manual_seed(1)
    gallery = torch.randn(997, 16, generator=g, dtype=torch.float64)
    gallery[5] = gallery[4]  # exact ties in d(q, x)
    emb = torch.randn(6, 16, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 997, (6, 3), generator=g)
    sp = torch.randint(0, 997, (6, 2), generator=g)

    e = emb.clone().requires_grad_(True)
    q = gallery[idx]
    d_qc = dist.paired(q, e[:, None, :])
    d_qx = dist.pairwise(q.reshape(-1, 16), gallery).reshape(6, 3, -1)
    ref = _dense_reference(direction, d_qc, d_qx)
    (ref_grad,) = torch.autograd.grad(ref.sum(), e)
    loss, grad = CandidateObjective(direction == "+", q, gallery, dist,
                                    chunk=100).value_and_grad(emb)
    assert torch.allclose(loss, ref, rtol=1e-10) and torch.allclose(grad, ref_grad, atol=1e-10)

    e = emb.clone().requires_grad_(True)
    d_x = dist.pairwise(e, gallery)
    ref = (_dense_reference(direction, dist.paired(e[:, None, :], gallery[idx]), d_x)
           + 50.0 * _dense_reference("+", dist.paired(e[:, None, :], gallery[sp]), d_x))
    (ref_grad,) = torch.autograd.grad(ref.sum(), e)
    obj = QueryObjective(direction == "+", idx, gallery, dist, sp_candidates=sp, xi=50.0,
                         chunk=100, reduction="sum")
    loss, grad = obj.value_and_grad(emb)
    assert torch.allclose(loss, ref, rtol=1e-10) and torch.allclose(grad, ref_grad, atol=1e-9)


@pytest.mark.parametrize("direction", ["+", "-"])
def test_query_objective_mean_reduction(small, direction):
    """'mean' = main hinge sum / m + xi * SP hinge sum / G (Eq. 12 averaged over C and C_SP)."""
    gallery, emb = small
    cidx, sp = torch.tensor([[0, 3], [1, 2], [8, 4]]), torch.tensor([[5, 6], [6, 7], [7, 5]])
    dist = CosineDistance()
    mean = QueryObjective(direction == "+", cidx, gallery, dist, sp_candidates=sp, xi=10.0,
                          reduction="mean", chunk=4)
    main_only = QueryObjective(direction == "+", cidx, gallery, dist, chunk=4, reduction="sum")
    sp_only = QueryObjective(True, sp, gallery, dist, chunk=4, reduction="sum")
    loss, grad = mean.value_and_grad(emb)
    l_main, g_main = main_only.value_and_grad(emb)
    l_sp, g_sp = sp_only.value_and_grad(emb)
    assert torch.allclose(loss, l_main / 2 + 10.0 * l_sp / 2)
    assert torch.allclose(grad, g_main / 2 + 10.0 * g_sp / 2)
    assert torch.allclose(mean(emb), loss)
    with pytest.raises(AdvrankError, match="reduction"):
        QueryObjective(direction == "+", cidx, gallery, dist, reduction="max")


def test_embedding_shift_objective_is_minus_distance(small):
    gallery, emb = small
    obj = EmbeddingShiftObjective(gallery[:3], EuclideanDistance())
    assert torch.allclose(obj(emb), -(emb - gallery[:3]).norm(dim=1))


def test_paper_step_size_and_iterations():
    assert paper_step_size(0.3) == 0.01 and paper_steps(0.3) == 30
    assert paper_step_size(0.1) == 0.01 and paper_steps(0.1) == 20
    assert paper_step_size(0.01) == pytest.approx(1 / 255) and paper_steps(0.01) == 10
    assert paper_steps(0.03) == 15


def test_projection_stays_in_ball_and_pixel_range():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 1, 6, 6, generator=g)
    x = x0 + 2 * torch.randn(5, 1, 6, 6, generator=g)
    p = project(x, x0, 0.1)
    assert (p - x0).abs().max() <= 0.1 + 1e-7
    assert p.min() >= 0 and p.max() <= 1


def test_pgd_respects_threat_model_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    x0 = torch.rand(6, 1, 4, 4)
    gallery = torch.randn(20, 8)
    obj = QueryObjective(True, torch.randint(0, 20, (6, 2)), gallery, CosineDistance())
    for threat in (LinfThreatModel(0.05), LinfThreatModel(0.3, random_start=True)):
        adv = pgd(model, x0, obj, threat, torch.Generator().manual_seed(0))
        assert (adv - x0).abs().max() <= threat.eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x0).abs().max() > 0  # it moved
    assert all(p.requires_grad for p in model.parameters())  # frozen() restored the flags


def test_universal_pgd_shares_one_perturbation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    x0 = torch.rand(6, 1, 4, 4) * 0.5 + 0.25  # away from the clipping range
    gallery = torch.randn(20, 8)
    obj = QueryObjective(True, torch.randint(0, 20, (6, 1)), gallery, EuclideanDistance())
    adv = pgd(model, x0, obj, LinfThreatModel(0.1), universal=True)
    r = adv - x0
    assert torch.allclose(r, r[:1].expand_as(r), atol=1e-6)
    assert r.abs().max() <= 0.1 + 1e-6


def test_ca_plus_reaches_rank_zero_on_constructed_gallery():
    """Pixels are the embedding; the gallery is the 16 corners of [0,1]^4. With eps = 1 the
    candidate can become the query itself, so CA+ must rank it first."""
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    model = nn.Flatten()
    ds = TensorImageDataset(corners, torch.arange(16))
    gal = Gallery.build(model, ds, EuclideanDistance())
    c, q = 0, 15  # opposite corners: c starts last in q's list
    sel = Selection(torch.tensor([c]), torch.tensor([[q]]))
    before = get_attack("CA+").measure(gal, sel, gal.embeddings[[c]])["rank"]
    atk = RankingAttack(model, gal.embeddings, EuclideanDistance(), "CA+",
                        LinfThreatModel(1.0, step_size=0.01, steps=150))
    adv = atk(corners[[c]], torch.tensor([[q]]))
    after = atk.kind.measure(gal, sel, model(adv))["rank"]
    assert before.item() == pytest.approx(100 * 14 / 16)
    assert after.item() == 0.0


def test_attack_refuses_bad_input():
    model = nn.Flatten()
    atk = RankingAttack(model, torch.randn(10, 4), CosineDistance(), "QA+", LinfThreatModel(0.1))
    with pytest.raises(AdvrankError, match=r"\[0, 1\]"):
        atk(torch.full((1, 1, 2, 2), 2.0), torch.tensor([[1]]))
    with pytest.raises(AdvrankError, match="shape"):
        atk(torch.rand(1, 4), torch.tensor([[1]]))
    with pytest.raises(AdvrankError, match="gallery indices"):
        atk(torch.rand(1, 1, 2, 2), torch.tensor([[10]]))
    with pytest.raises(AdvrankError, match="unknown attack"):
        RankingAttack(model, torch.randn(10, 4), CosineDistance(), "XA+", LinfThreatModel(0.1))
    with pytest.raises(AdvrankError, match="eps"):
        LinfThreatModel(1.5)


def test_qa_without_sp_targets_builds_c_sp_from_the_clean_query():
    """A direct QA- call without C_SP keeps the SP term its xi promises: C_SP is the query's
    top-G outside C, from its clean embedding (the same as passing those indices)."""
    from advrank.attacks.selection import sp_candidates

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6))
    images = torch.rand(40, 1, 2, 2)
    with torch.no_grad():
        emb = model(images)
    atk = RankingAttack(model, emb, CosineDistance(), "QA-", LinfThreatModel(0.2, steps=5))
    queries, cands = images[:3], torch.tensor([[5], [6], [7]])
    part = Selection(torch.arange(3), cands)
    objective = atk.objective(part, emb[:3])
    assert objective.sp_emb is not None and objective.sp_emb.shape == (3, 5, 6)  # G = 5
    gal = Gallery(TensorImageDataset(images, torch.zeros(40, dtype=torch.long)), emb,
                  torch.zeros(40, dtype=torch.long), CosineDistance())
    sp = sp_candidates(gal, None, cands, 5, emb[:3])
    assert torch.equal(atk(queries, cands), atk(queries, cands, sp))
    without = RankingAttack(model, emb, CosineDistance(), "QA-", LinfThreatModel(0.2, steps=5),
                            xi=0.0)
    assert without.objective(part, emb[:3]).sp_emb is None  # xi = 0: no SP term, by choice
