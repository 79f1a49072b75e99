"""The embedding-shift attack as an attack kind (ES): selection, measures, views, and the
random start it needs (its objective is flat at the clean input)."""

from __future__ import annotations

import pytest
import torch

from advrank.attacks import get_attack
from advrank.attacks.threat import LinfThreatModel
from advrank.core.gallery import Gallery
from advrank.data import load_dataset
from advrank.experiments.protocol import run_attack
from advrank.models import create_model


@pytest.fixture(scope="module")
def digits_gallery():
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38]).eval()
    return model, Gallery.build(model, load_dataset("digits", "test"), "cosine")


def test_es_moves_embeddings_and_records_its_figures(digits_gallery):
    model, gallery = digits_gallery
    kind = get_attack("ES")
    assert kind.size_name is None and kind.random_start and kind.direction == "up"
    result = run_attack(model, gallery, "ES", 0.1, 1, 12, seed=2,
                        threat=LinfThreatModel(0.1, steps=5))
    assert result.threat["random_start"] is True  # forced: a zero start gradient stalls PGD
    before, after = result.before, result.after
    assert max(before["shift"]) < 1e-5 and max(before["rank"]) == 0.0
    assert min(after["shift"]) > 1e-3 and result.figures["rank_after"] > 0.0
    # the anchors are the §4 draw: the first T of a seeded permutation of X
    sel = kind.select(gallery, 1, 12, 2)
    assert torch.equal(sel.anchors, torch.randperm(len(gallery),
                                                   generator=torch.Generator().manual_seed(2))[:12])


def test_es_measure_by_brute_force(digits_gallery):
    model, gallery = digits_gallery
    kind = get_attack("ES")
    part = kind.select(gallery, 1, 5, 0)
    emb = gallery.embeddings[part.anchors] + 0.3 * torch.randn(5, 16,
                                                               generator=torch.Generator())
    m = kind.measure(gallery, part, emb)
    for i, a in enumerate(part.anchors.tolist()):
        d = gallery.distance.pairwise(emb[i : i + 1], gallery.embeddings)[0]
        closer = int((d < d[a]).sum())
        assert m["rank"][i].item() == pytest.approx(100.0 * closer / len(gallery))
        assert m["shift"][i].item() == pytest.approx(d[a].item(), abs=1e-6)
        d[a] = float("inf")
        nn = int(d.argmin())
        assert m["recall@1"][i].item() == 100.0 * (gallery.labels[nn] == gallery.labels[a])


def test_views_name_the_list_each_kind_changes(digits_gallery):
    _, gallery = digits_gallery
    for name in ("CA+", "QA+", "ES"):
        kind = get_attack(name)
        part = kind.select(gallery, 2 if kind.size_name else 1, 3, 1).slice(0, 1)
        emb = gallery.embeddings[part.anchors]
        view = kind.view(gallery, part, emb)
        anchor = int(part.anchors[0])
        if name == "CA+":  # the first query's list, c replaced by c~
            assert view.query == int(part.targets[0, 0]) and view.replace[0] == anchor
            assert view.highlight == [anchor]
        elif name == "QA+":  # q~'s own list, C highlighted
            assert view.query is None and view.exclude == [anchor]
            assert view.highlight == part.targets[0].tolist()
        else:  # x~'s list over all of X, its clean copy highlighted
            assert view.highlight == [anchor] and view.exclude == []
