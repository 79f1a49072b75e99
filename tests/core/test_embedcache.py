"""Embedding a picture collection: unreadable pictures skipped and reported, the result cached
on disk under a key of model + transform + data, a stale or tampered cache never reused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from advrank.core.embedcache import cache_digest, embed_collection
from advrank.data import load_dataset
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError

GEOMETRY = Geometry((3, 8, 8))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()


def _data(root):
    return load_dataset(f"imagefolder:{root}", geometry=GEOMETRY)


def _key(ds):
    return {"model": "tiny", "data_sha": ds.fingerprint(), "n": len(ds)}


@pytest.fixture
def folder(tmp_path, image_folder):
    shutil.copytree(image_folder, tmp_path / "photos")
    return tmp_path / "photos"


def test_embeddings_equal_the_model_on_every_image(folder):
    ds, model = _data(folder), _model()
    out = embed_collection(model, ds, torch.device("cpu"), batch_size=7)
    with torch.no_grad():
        expected = model(ds.get_images(torch.arange(len(ds))))
    assert torch.allclose(out.embeddings, expected, atol=1e-6)
    assert torch.equal(out.keep, torch.arange(60)) and out.unreadable == [] and out.cache == {}


def test_unreadable_picture_is_skipped_and_reported(folder):
    (folder / "squares" / "005.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    ds, model = _data(folder), _model()
    out = embed_collection(model, ds, torch.device("cpu"), batch_size=8)
    assert out.embeddings.shape == (59, 4) and len(out.keep) == 59
    assert [u["item"] for u in out.unreadable] == ["squares/005.jpg"]
    assert "UnidentifiedImageError" in out.unreadable[0]["error"]
    bad = ds.paths.index("squares/005.jpg")
    assert bad not in out.keep.tolist()
    with pytest.raises(AdvrankError, match="cannot read image .*005.jpg"):
        ds.get_images(torch.tensor([bad]))


def test_cache_is_reused_then_refused_when_stale_or_tampered(folder, tmp_path):
    ds, model, cache = _data(folder), _model(), tmp_path / "cache"
    key = _key(ds)
    first = embed_collection(model, ds, torch.device("cpu"), key, cache, batch_size=16)
    assert first.cache["reused"] is False and len(list(cache.iterdir())) == 1
    again = embed_collection(model, ds, torch.device("cpu"), key, cache)
    assert again.cache == {"file": first.cache["file"], "reused": True}
    assert torch.equal(again.embeddings, first.embeddings)
    # another model (same data): another key, embedded again, never the old file
    other = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    k2 = {**key, "model": "other"}
    assert embed_collection(other, ds, torch.device("cpu"), k2, cache).cache["reused"] is False
    # a changed picture changes the data fingerprint: the stale cache is not used
    target = folder / "circles" / "000.jpg"
    shutil.copy(folder / "circles" / "001.jpg", target)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    ds2 = _data(folder)
    assert _key(ds2) != key
    fresh = embed_collection(model, ds2, torch.device("cpu"), _key(ds2), cache)
    assert fresh.cache["reused"] is False and fresh.cache["file"] != first.cache["file"]
    assert torch.allclose(fresh.embeddings[0], fresh.embeddings[1])
    # a file renamed to the old key's name is refused, not trusted
    shutil.copy(fresh.cache["file"], first.cache["file"])
    with pytest.raises(AdvrankError, match="made for another model, data or transform"):
        embed_collection(model, ds, torch.device("cpu"), key, cache)


def test_interrupted_embedding_resumes_from_part_files(folder, tmp_path, monkeypatch):
    ds, model, cache = _data(folder), _model(), tmp_path / "cache"
    full = embed_collection(model, ds, torch.device("cpu"))
    calls = []
    real = nn.Sequential.forward

    def dying(self, x):
        calls.append(x.shape[0])
        if sum(calls) > 25:  # killed during the second shard of 20
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(nn.Sequential, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        embed_collection(model, ds, torch.device("cpu"), _key(ds), cache, batch_size=5,
                         shard_size=20)
    parts = sorted(p.name for p in cache.iterdir())
    digest = cache_digest(_key(ds))[:24]
    assert parts == [f"gallery-{digest}.part00000.safetensors"]
    calls.clear()
    monkeypatch.setattr(nn.Sequential, "forward", lambda self, x: calls.append(x.shape[0])
                        or real(self, x))
    out = embed_collection(model, ds, torch.device("cpu"), _key(ds), cache, batch_size=5,
                           shard_size=20)
    assert sum(calls) == 40  # the first shard came from its part file
    assert torch.allclose(out.embeddings, full.embeddings, atol=1e-6)
    assert sorted(p.name for p in cache.iterdir()) == [f"gallery-{digest}.safetensors"]
