"""core/index.py: exact and FAISS search behind one interface, saved, validated, deterministic."""

from __future__ import annotations

import shutil

import pytest
import torch

from advrank.core.distances import get_distance
from advrank.core.index import build_index, check_index_spec, ivfpq_factory
from advrank.core.metrics import nearest_neighbors
from advrank.errors import AdvrankError

faiss = pytest.importorskip("faiss")


def data(n=600, d=24, b=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randn(b, d, generator=gen)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_index_gives_exactly_the_exact_ranks(metric):
    gallery, queries = data()
    brute = nearest_neighbors(queries, gallery, 50, get_distance(metric))
    for spec in ("exact", "flat", "Flat"):
        ids, scores = build_index(gallery, metric, spec).search(queries, 50)
        assert ids.dtype == torch.int64 and scores.dtype == torch.float32
        assert torch.equal(ids, brute), spec
        # scores are the metric's distances, nearest first
        want = get_distance(metric).paired(queries[:, None, :], gallery[brute])
        assert torch.allclose(scores, want, atol=1e-5)
        assert (scores[:, 1:] >= scores[:, :-1] - 1e-6).all()


@pytest.mark.parametrize("spec", ["hnsw", "ivfpq", "IVF8,Flat"])
def test_approximate_indexes_are_deterministic_and_close(spec):
    gallery, queries = data(n=1200)
    ids1, s1 = build_index(gallery, "cosine", spec).search(queries, 10)
    ids2, s2 = build_index(gallery, "cosine", spec).search(queries, 10)
    assert torch.equal(ids1, ids2) and torch.equal(s1, s2)
    exact = nearest_neighbors(queries, gallery, 10, get_distance("cosine"))
    found = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids1, exact, strict=True)]
    assert sum(found) / exact.numel() > 0.2  # approximate, but far better than chance (1.6%)


def test_index_is_saved_reused_and_rebuilt_when_stale(tmp_path):
    gallery, queries = data()
    first = build_index(gallery, "euclidean", "hnsw", tmp_path, fingerprint="abc")
    assert first.info["cache"]["reused"] is False
    path = first.info["cache"]["file"]
    again = build_index(gallery, "euclidean", "hnsw", tmp_path, fingerprint="abc")
    assert again.info["cache"] == {"file": path, "reused": True}
    assert torch.equal(again.search(queries, 5)[0], first.search(queries, 5)[0])
    # another gallery (or model) is another file: never the stale one
    other = build_index(gallery[:-1], "euclidean", "hnsw", tmp_path, fingerprint="abc")
    assert other.info["cache"]["file"] != path and other.size == len(gallery) - 1
    # a file that does not hold what its name says (copied over, truncated) is rebuilt
    shutil.copy(other.info["cache"]["file"], path)
    rebuilt = build_index(gallery, "euclidean", "hnsw", tmp_path, fingerprint="abc")
    assert rebuilt.info["cache"]["reused"] is False and rebuilt.faiss_index.ntotal == 600
    with open(path, "r+b") as fh:
        fh.truncate(100)
    assert build_index(gallery, "euclidean", "hnsw", tmp_path,
                       fingerprint="abc").info["cache"]["reused"] is False
    assert build_index(gallery, "euclidean", "hnsw", tmp_path,
                       fingerprint="abc").info["cache"]["reused"] is True


def test_unfilled_rows_are_padded_and_bad_input_refused():
    gallery, queries = data(n=400)
    ids, scores = build_index(gallery, "cosine", "IVF16,Flat").search(queries, 400)
    missing = ids < 0  # one probed list of 16 cannot hold all 400
    assert missing.any() and torch.isinf(scores[missing]).all()
    assert torch.isfinite(scores[~missing]).all()
    index = build_index(gallery, "cosine", "flat")
    for bad in (lambda: index.search(queries[:, :5], 3), lambda: index.search(queries, 0),
                lambda: index.search(queries, 401)):
        with pytest.raises(AdvrankError):
            bad()
    with pytest.raises(AdvrankError, match="cannot build FAISS index 'PQ7'"):
        build_index(gallery, "cosine", "PQ7")  # 7 does not divide 24
    for spec in ("", "  ", "a\nb", 3, "x" * 300):
        with pytest.raises(AdvrankError, match="index must be"):
            check_index_spec(spec)
    assert check_index_spec(" HNSW ") == "hnsw"


def test_ivfpq_preset_fits_the_gallery():
    assert ivfpq_factory(10_000, 128) == "IVF256,PQ32x8"
    nlist, rest = ivfpq_factory(600, 24).removeprefix("IVF").split(",PQ")
    m, nbits = map(int, rest.split("x"))
    assert int(nlist) * 39 <= 600 and 24 % m == 0 and 2 ** nbits * 39 <= 600


def _rewrite(path, change, checksum: bool) -> None:
    """The saved index at ``path`` with its FAISS index changed by ``change`` and its
    metadata kept (``checksum``: the checksum recomputed, as a careful forger would)."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta, blob = fh.metadata(), fh.get_tensor("index")
    index = faiss.deserialize_index(blob.numpy())
    change(index)
    data = faiss.serialize_index(index)
    if checksum:
        meta["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    save_file({"index": torch.from_numpy(data.copy())}, str(path), metadata=meta)


@pytest.mark.parametrize("checksum", [False, True])
def test_an_altered_index_file_is_detected_and_rebuilt(tmp_path, checksum):
    """Vectors altered inside a saved index, its metadata kept: the file's checksum (or,
    were it recomputed, the vectors against the gallery's) catches it; the index is built
    again, with a note, and searches as the first one did."""
    gallery, queries = data()
    first = build_index(gallery, "cosine", "flat", tmp_path)
    want = first.search(queries, 10)
    path = first.info["cache"]["file"]

    def poison(index):
        xb = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d)
        xb[: 5 * index.d] = 0.5  # five items moved

    _rewrite(path, poison, checksum)
    notes: list[str] = []
    again = build_index(gallery, "cosine", "flat", tmp_path, log=notes.append)
    assert again.info["cache"]["reused"] is False and len(notes) == 1
    assert ("checksum" in notes[0]) != checksum and "building it again" in notes[0]
    assert all(torch.equal(a, b) for a, b in zip(again.search(queries, 10), want, strict=True))
    assert build_index(gallery, "cosine", "flat", tmp_path).info["cache"]["reused"] is True
