"""The draw of k distinct random others for galleries too large for ``multinomial``."""

import torch

from advrank.attacks import selection
from advrank.attacks.selection import distinct_randint, random_others


def test_distinct_randint_rows_are_distinct_in_range_and_uniform():
    gen = torch.Generator().manual_seed(0)
    idx = distinct_randint(4000, 10, 7, gen)  # 7 of 10: many collisions to redraw
    assert idx.shape == (4000, 7) and idx.min() >= 0 and idx.max() < 10
    assert all(len(set(row)) == 7 for row in idx.tolist())
    freq = torch.bincount(idx.flatten(), minlength=10).float() / idx.numel()
    assert (freq - 0.1).abs().max() < 0.01  # each value equally likely
    first = torch.bincount(idx[:, 0], minlength=10).float() / 4000
    assert (first - 0.1).abs().max() < 0.025  # and in every position


def test_random_others_switches_to_rejection_for_large_galleries(monkeypatch):
    monkeypatch.setattr(selection, "LARGE_DRAW", 50)
    anchors = torch.tensor([0, 5, 99, 42])
    out = random_others(anchors, 100, 20, torch.Generator().manual_seed(1))
    assert out.shape == (4, 20) and out.max() < 100
    for a, row in zip(anchors.tolist(), out.tolist(), strict=True):
        assert a not in row and len(set(row)) == 20
