"""Cosine and Euclidean distances against hand-computed values, shapes, gradients, pml."""

from __future__ import annotations

import math

import pytest
import torch

from advrank.core.distances import CosineDistance, EuclideanDistance, distance_names, get_distance
from advrank.errors import AdvrankError

S = 1.0 - 1.0 / math.sqrt(2.0)  # 1 - cos(45 degrees)


def test_cosine_hand_values():
    d = get_distance("cosine")
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-2.0, 0.0], [5.0, 0.0]])
    expected = torch.tensor([[1.0, S, 2.0, 0.0], [0.0, S, 1.0, 1.0], [1.0, S, 2.0, 0.0]])
    torch.testing.assert_close(d.pairwise(a, b), expected)
    torch.testing.assert_close(d.paired(a, b[:3]), torch.tensor([1.0, S, 2.0]))


def test_euclidean_hand_values():
    d = get_distance("euclidean")
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [4.0, 5.0], [1.0, 1.0]])
    expected = torch.tensor([[5.0, math.sqrt(2.0), math.sqrt(13.0)], [math.sqrt(2.0), 5.0, 0.0]])
    torch.testing.assert_close(d.pairwise(a, b), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d.paired(a, b[:2]), torch.tensor([5.0, 5.0]))


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_shapes_and_consistency(name):
    d = get_distance(name)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g)
    pw = d.pairwise(a, b)
    assert pw.shape == (5, 7)
    assert (pw >= 0).all()
    # pairwise[i, j] == paired(a[i], b[j]); paired broadcasts over leading dims
    torch.testing.assert_close(pw, d.paired(a[:, None, :], b[None, :, :]), atol=1e-5, rtol=1e-5)
    assert d.paired(a[:, None].expand(5, 3, 6), b[:3][None].expand(5, 3, 6)).shape == (5, 3)
    # batched pairwise: [B, N, D] x [B, M, D] -> [B, N, M]
    batched = d.pairwise(torch.stack([a, 2 * a]), torch.stack([b, b]))
    assert batched.shape == (2, 5, 7)
    torch.testing.assert_close(batched[0], pw, atol=1e-5, rtol=1e-5)
    # identity gives (almost) zero
    assert d.paired(a, a).abs().max() < 1e-5
    assert d.pairwise(a, a).diagonal().abs().max() < 1e-3


def test_cosine_scale_invariant_euclidean_not():
    a, b = torch.randn(4, 3), torch.randn(6, 3)
    cos, euc = CosineDistance(), EuclideanDistance()
    torch.testing.assert_close(cos.pairwise(3.0 * a, b), cos.pairwise(a, b))
    torch.testing.assert_close(euc.pairwise(3.0 * a, 3.0 * b), 3.0 * euc.pairwise(a, b),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_gradients_finite_at_identical_vectors(name):
    d = get_distance(name)
    a = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    d.paired(a, a.detach().clone()).sum().backward()
    assert torch.isfinite(a.grad).all()
    a.grad = None
    d.pairwise(a, a.detach().clone()).sum().backward()
    assert torch.isfinite(a.grad).all()
    # and a proper gradient elsewhere: d||a - b|| / da = (a - b) / ||a - b||
    if name == "euclidean":
        x = torch.tensor([[3.0, 4.0]], requires_grad=True)
        d.paired(x, torch.zeros(1, 2)).sum().backward()
        torch.testing.assert_close(x.grad, torch.tensor([[0.6, 0.8]]))


def test_registry_and_unknown_name():
    assert distance_names() == ["cosine", "euclidean"]
    assert get_distance("cosine").name == "cosine"
    assert isinstance(get_distance("euclidean"), EuclideanDistance)
    with pytest.raises(AdvrankError, match="unknown distance 'manhattan'.*cosine"):
        get_distance("manhattan")


@pytest.mark.parametrize("name", ["cosine", "euclidean"])
def test_to_pml_matches(name):
    d = get_distance(name)
    pml = d.to_pml()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 4, generator=g), torch.randn(6, 4, generator=g)
    mat = pml(a, b)
    if name == "cosine":
        assert pml.is_inverted  # a similarity: larger is closer
        mat = 1.0 - mat
    else:
        assert not pml.is_inverted
    torch.testing.assert_close(mat, d.pairwise(a, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mat.diagonal(), d.paired(a, b[:5]), atol=1e-5, rtol=1e-5)
