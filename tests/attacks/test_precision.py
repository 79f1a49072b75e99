"""The objectives under an execution policy: the tf32/bf16 paths against the fp32 reference,
the hinge weights against a dense brute force, and memory-sized chunks."""

import pytest
import torch

from advrank.attacks import CandidateObjective, QueryObjective
from advrank.attacks.hinge import hinge_weights
from advrank.core.distances import CosineDistance, EuclideanDistance
from advrank.core.execution import ExecutionPolicy

DISTANCES = [CosineDistance(), EuclideanDistance()]
FAST = ExecutionPolicy("tf32")  # on a CPU: fp32 products through the fast path
BF16 = ExecutionPolicy("bf16")


def _problem(dtype=torch.float64, n=997, d=16, b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    gallery = torch.randn(n, d, generator=g, dtype=dtype)
    gallery[5] = gallery[4]  # exact ties in d(q, x)
    emb = torch.randn(b, d, generator=g, dtype=dtype)
    idx = torch.randint(0, n, (b, 3), generator=g)
    sp = torch.randint(0, n, (b, 2), generator=g)
    return gallery, emb, idx, sp


def test_hinge_weights_match_a_dense_brute_force():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(4, 50, generator=g, dtype=torch.float64).round(decimals=1)  # many ties
    thr = torch.rand(4, 5, generator=g, dtype=torch.float64).round(decimals=1)
    signs, weights = [1.0, -1.0, -1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 2.0, 0.0]
    w_x, counts, value = hinge_weights(d, thr, signs, weights, with_value=True)
    s = torch.tensor(signs, dtype=d.dtype)[None, :, None]
    w = torch.tensor(weights, dtype=d.dtype)[None, :, None]
    arg = s * (thr[:, :, None] - d[:, None, :])  # [B, k, n]
    assert torch.equal(counts, (arg > 0).sum(2))
    assert torch.allclose(value, (w * torch.relu(arg)).sum((1, 2)))
    assert torch.allclose(w_x, -(s * w * (arg > 0)).sum(1))
    _, _, none = hinge_weights(d, thr, signs, weights)
    assert none is None


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("raise_rank", [True, False])
def test_fast_query_objective_equals_the_reference(dist, raise_rank):
    """tf32 on a CPU computes in the input dtype: the fast path must give the reference's
    loss and gradient (float64, up to rounding), whatever the chunking."""
    gallery, emb, idx, sp = _problem()
    ref = QueryObjective(raise_rank, idx, gallery, dist, sp_candidates=sp, xi=50.0, chunk=100)
    loss, grad = ref.value_and_grad(emb)
    assert torch.equal(ref.grad(emb), grad)  # the gradient alone skips only the value
    for chunk, memory in ((100, None), (4096, 6 * 300 * 40)):
        fast = QueryObjective(raise_rank, idx, gallery, dist, sp_candidates=sp, xi=50.0,
                              chunk=chunk, policy=FAST, memory=memory)
        f_loss, f_grad = fast.value_and_grad(emb)
        assert torch.allclose(f_loss, loss, rtol=1e-10)
        assert torch.allclose(f_grad, grad, atol=1e-10)
        assert torch.allclose(fast.grad(emb), grad, atol=1e-10)


def test_memory_sizes_the_query_chunks():
    gallery, emb, idx, sp = _problem()
    ref = QueryObjective(True, idx, gallery, CosineDistance(), sp_candidates=sp, xi=1.0,
                         memory=1)
    assert ref.chunk == 256  # the smallest chunk
    fast = QueryObjective(True, idx, gallery, CosineDistance(), sp_candidates=sp, xi=1.0,
                          policy=FAST, memory=1 << 30)
    assert fast.chunk == 997  # all of X in one product
    roomy = QueryObjective(True, idx, gallery, CosineDistance(), sp_candidates=sp, xi=1.0,
                           memory=1 << 30)
    assert roomy.chunk == 4096  # the reference never exceeds its chunk (summation order)


@pytest.mark.parametrize("raise_rank", [True, False])
def test_bf16_query_objective_follows_the_reference(raise_rank):
    gallery, emb, idx, sp = _problem(torch.float32, n=2000, d=64)
    ref = QueryObjective(raise_rank, idx, gallery, CosineDistance(), sp_candidates=sp, xi=1.0)
    low = QueryObjective(raise_rank, idx, gallery, CosineDistance(), sp_candidates=sp, xi=1.0,
                         policy=BF16)
    assert low.prepared.dtype == torch.bfloat16  # the attack's gallery copy: half the memory
    (loss, grad), (l_loss, l_grad) = ref.value_and_grad(emb), low.value_and_grad(emb)
    assert torch.allclose(l_loss, loss, rtol=0.02, atol=0.5)
    cos = torch.nn.functional.cosine_similarity(l_grad, grad, dim=1)
    assert cos.min() > 0.99
    assert (l_grad.sign() == grad.sign()).float().mean() > 0.9


@pytest.mark.parametrize("dist", DISTANCES, ids=lambda d: d.name)
@pytest.mark.parametrize("raise_rank", [True, False])
def test_candidate_objective_counts_and_policies(dist, raise_rank):
    gallery, emb, idx, _ = _problem()
    q = gallery[idx]
    ref = CandidateObjective(raise_rank, q, gallery, dist, chunk=100)
    loss, grad = ref.value_and_grad(emb)
    assert torch.equal(ref.grad(emb), grad)
    tiny = CandidateObjective(raise_rank, q, gallery, dist, chunk=100,
                              memory=ref.table.numel() * 8 + 3000)
    assert tiny.rows == 3  # three (attack, query) rows per comparison pass
    t_loss, t_grad = tiny.value_and_grad(emb)
    assert torch.allclose(t_loss, loss) and torch.equal(t_grad, grad)
    fast = CandidateObjective(raise_rank, q, gallery, dist, policy=FAST)
    f_loss, f_grad = fast.value_and_grad(emb)
    assert torch.allclose(f_loss, loss, rtol=1e-10) and torch.allclose(f_grad, grad, atol=1e-10)


def test_bf16_candidate_table_is_close_and_exact_in_its_counts():
    gallery, emb, idx, _ = _problem(torch.float32, n=2000, d=64)
    q = gallery[idx]
    ref = CandidateObjective(True, q, gallery, CosineDistance())
    low = CandidateObjective(True, q, gallery, CosineDistance(), policy=BF16)
    assert low.table.dtype == torch.float32
    assert (low.table - ref.table).abs().max() < 0.02
    a = CosineDistance().paired(q, emb[:, None, :])
    counts, _ = low._count(a, with_sums=False)
    assert torch.equal(counts, (low.table < a[..., None]).sum(-1))  # exact for its table
    ref_counts, _ = ref._count(a, with_sums=False)
    assert (counts - ref_counts).abs().max() <= 0.02 * 2000
