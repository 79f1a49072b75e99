"""CA+ / CA- with text queries: the §4 draws against a text set, Eq. 4 / 7 unchanged on the
texts' embeddings, ranks and recall against brute-force references, and the end-to-end run
through a dual encoder's text tower."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from advrank.attacks import get_attack
from advrank.attacks.queryset import QuerySet, embed_text_queries, query_retrieval
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset
from advrank.data.texts import UNLABELLED, read_text_queries
from advrank.errors import AdvrankError
from advrank.experiments.protocol import run_attack

N, D, Q = 60, 8, 12


def _setup(labelled: bool = True):
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(N, D, generator=gen, dtype=torch.float64)
    labels = torch.arange(N) % 4
    ds = TensorImageDataset(torch.rand(N, 1, 2, 2, generator=gen), labels)
    gallery = Gallery(ds, emb, labels, get_distance("cosine"))
    q_labels = torch.arange(Q) % 4 if labelled else torch.full((Q,), UNLABELLED)
    texts = tuple(f"text {i}" for i in range(Q))
    queries = QuerySet(torch.randn(Q, D, generator=gen, dtype=torch.float64), q_labels, texts,
                       {"text_queries": "test"})
    return gallery, queries


def _brute_rank(gallery, q, c, c_emb):
    d = gallery.distance
    threshold = d.paired(q[None], c_emb[None])[0]
    closer = [x for x in range(len(gallery))
              if x != c and d.paired(q[None], gallery.embeddings[x][None])[0] < threshold]
    return 100.0 * len(closer) / len(gallery)


@pytest.mark.parametrize("attack", ["CA+", "CA-"])
def test_text_ca_measures_ranks_and_recall_as_brute_force_does(attack):
    gallery, queries = _setup()
    kind = get_attack(attack, top_fraction=0.1).for_queries(queries)
    part = kind.select(gallery, 2, 10, seed=3)
    moved = gallery.embeddings[part.anchors] + 0.3 * torch.randn(10, D, dtype=torch.float64)
    figures = kind.measure(gallery, part, moved)
    for i in range(10):
        c = int(part.anchors[i])
        ranks = [_brute_rank(gallery, queries.embeddings[t], c, moved[i])
                 for t in part.targets[i].tolist()]
        assert math.isclose(figures["rank"][i].item(), sum(ranks) / 2, abs_tol=1e-4)
        hits = []
        for t in part.targets[i].tolist():
            d = gallery.distance.pairwise(queries.embeddings[t][None], gallery.embeddings)[0]
            d[c] = gallery.distance.paired(queries.embeddings[t][None], moved[i][None])[0]
            top = int(d.argmin())
            hits.append(100.0 * (gallery.labels[top] == queries.labels[t]).item())
        assert math.isclose(figures["recall@1"][i].item(), sum(hits) / 2, abs_tol=1e-4)


def test_text_ca_objective_is_eq4_on_the_texts_embeddings():
    gallery, queries = _setup()
    kind = get_attack("CA+").for_queries(queries)
    part = kind.select(gallery, 3, 5, seed=1)
    z = gallery.embeddings[part.anchors] + 0.1
    objective = kind.objective(gallery.embeddings, gallery.distance, part)
    d = gallery.distance  # Eq. 4 over X, with Q the texts of each attack
    for i in range(5):
        ref = sum(torch.relu(d.paired(queries.embeddings[t][None], z[i][None])[0]
                             - d.pairwise(queries.embeddings[t][None], gallery.embeddings)[0]
                             ).sum() for t in part.targets[i].tolist())
        assert math.isclose(objective(z)[i].item(), ref.item(), rel_tol=1e-9, abs_tol=1e-12)
    grad = objective.grad(z)
    assert grad.shape == z.shape and torch.isfinite(grad).all()


def test_text_ca_minus_draws_moderation_texts_that_hold_the_candidate():
    gallery, queries = _setup()
    kind = get_attack("CA-", top_fraction=0.1).for_queries(queries)
    part = kind.select(gallery, 1, 8, seed=0)
    pool = math.ceil(0.1 * N)
    for c, t in zip(part.anchors.tolist(), part.targets[:, 0].tolist(), strict=True):
        d = gallery.distance.pairwise(queries.embeddings[t][None], gallery.embeddings)[0]
        assert c in d.argsort()[:pool].tolist()
    # deterministic, and the CA+ candidates are those of picture-query CA+ (same seed)
    assert part.same_as(kind.select(gallery, 1, 8, seed=0))
    plus = get_attack("CA+").for_queries(queries).select(gallery, 1, 8, seed=0)
    assert torch.equal(plus.anchors, get_attack("CA+").select(gallery, 1, 8, seed=0).anchors)


def test_text_sets_that_cannot_hold_the_attacks_are_one_error():
    gallery, queries = _setup()
    with pytest.raises(AdvrankError, match="larger than the query set"):
        get_attack("CA+").for_queries(queries).select(gallery, Q + 1, 5)
    with pytest.raises(AdvrankError, match="gallery items are in the top"):
        get_attack("CA-").for_queries(queries).select(gallery, 1, 50)
    with pytest.raises(AdvrankError, match="text queries go with the candidate attacks"):
        get_attack("QA+").for_queries(queries)


def test_unlabelled_texts_give_ranks_only():
    gallery, queries = _setup(labelled=False)
    kind = get_attack("CA+").for_queries(queries)
    part = kind.select(gallery, 1, 4)
    assert set(kind.measure(gallery, part, gallery.embeddings[part.anchors])) == {"rank"}
    with pytest.raises(AdvrankError, match="no query names a class"):
        query_retrieval(queries, gallery)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                    reason="open_clip_torch is not installed")
def test_text_ca_plus_through_a_dual_encoder_raises_the_candidate():
    from advrank.data import load_dataset
    from advrank.data.texts import class_labels
    from advrank.models import create_model

    torch.manual_seed(0)
    model = create_model("clip-tiny", (1, 8, 8), 16, [0.3], [0.38]).eval()
    digits = load_dataset("digits", "test")
    ds = TensorImageDataset(digits.images[:200], digits.labels[:200])
    gallery = Gallery.build(model, ds, "cosine")
    texts = read_text_queries("prompts:a photo of a {}|the digit {}", class_labels(ds, ds.labels))
    queries = embed_text_queries(model, texts)
    quality = query_retrieval(queries, gallery)
    assert quality["unlabelled"] == 0 and 0 <= quality["recall@1"] <= 100
    result = run_attack(model, gallery, get_attack("CA+").for_queries(queries), 0.1, 1, 20,
                        progress=False)
    summary = result.summary()
    assert summary["rank_after"] < summary["rank_before"]
    assert summary["text_queries"] == texts.source and summary["query_texts"] == 20
    with pytest.raises(AdvrankError, match="has no text tower"):
        embed_text_queries(model.image, texts)
