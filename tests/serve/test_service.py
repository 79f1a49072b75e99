"""``advrank serve`` as a user runs it: a subprocess on loopback, searched over HTTP, sent bad
uploads and a bounded flood; every bad request gets one JSON 4xx (503 when saturated), the
service keeps answering, and its answer for a fixed picture never changes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from PIL import Image  # noqa: E402

LIMITS = ["--max-body-bytes", "200000", "--max-pixels", "1000000", "--max-queue", "2",
          "--max-k", "50"]


def picture(fmt: str = "PNG", size=(8, 8), mode: str = "L", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(digits_ckpt, tmp_path_factory, serve):
    """``(base URL, process)`` of a running ``advrank serve`` (HNSW index, scores shown)."""
    cache = tmp_path_factory.mktemp("cache")
    with serve(digits_ckpt, "--index", "hnsw", "--scores", "--cache-dir", str(cache),
               *LIMITS) as running:
        yield running


def search(base: str, body: bytes, ctype: str = "image/png", k: int | str | None = 5):
    params = {} if k is None else {"k": str(k)}
    return httpx.post(f"{base}/search", content=body, params=params,
                      headers={"content-type": ctype}, timeout=30)


def test_info_and_health_describe_the_service(service, digits_ckpt):
    from advrank.oracles.wire import API_VERSION, InfoAnswer, parse

    base, _ = service
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    r = httpx.get(f"{base}/info")
    info, typed = r.json(), parse(InfoAnswer, r.content, "/info")
    assert typed.api == API_VERSION and typed.id_bound == typed.gallery_size > 100
    assert typed.scores is True and typed.max_k == typed.limits.max_k == 50
    assert info["input_size"] == [1, 8, 8] and info["metric"] == "cosine"
    assert info["index"]["index"] == "hnsw" and info["index"]["size"] == info["gallery_size"]
    assert info["feedback"] == "top-k ids and scores" and info["limits"]["max_pixels"] == 10**6
    # on a CPU: one thread per search worker, the workers filling the cores
    cores = min(8, os.cpu_count() or 1)
    assert info["limits"]["threads"] == 1 and info["limits"]["workers"] == cores
    # files by base name only: no folder of the server's in the answer
    assert info["source"] == digits_ckpt.name and str(digits_ckpt.parent) not in r.text
    assert info["index"]["cache"]["file"].startswith("index-") and '"/' not in r.text


def test_search_answers_what_the_library_computes(service, digits_ckpt):
    """Raw and multipart uploads give the same answer, and it is the in-process pipeline's
    (decode -> model -> the same deterministically built HNSW index)."""
    from advrank.core.index import build_index
    from advrank.experiments.target import load_target
    from advrank.serve.decode import decode_upload
    from advrank.serve.engine import target_geometry

    base, _ = service
    body = picture("PNG", (20, 13), "RGB", seed=3)
    raw = search(base, body, k=7)
    assert raw.status_code == 200, raw.text
    multi = httpx.post(f"{base}/search", params={"k": "7"},
                       files={"file": ("q.png", body, "image/png")}, timeout=30)
    assert multi.json() == raw.json()
    target = load_target(str(digits_ckpt), "cpu")
    index = build_index(target.gallery.embeddings, "cosine", "hnsw")
    image = decode_upload(body, target_geometry(target), 10**6)
    ids, scores = index.search(target.model(image[None]), 7)
    assert raw.json()["ids"] == ids[0].tolist()
    assert raw.json()["scores"] == pytest.approx(scores[0].tolist(), abs=1e-5)
    assert search(base, body, k=None).json()["ids"] == index.search(
        target.model(image[None]), 10)[0][0].tolist()  # k defaults to 10


def test_rank_of_answers_where_the_named_ids_sit_in_the_same_list(service):
    base, _ = service
    info = httpx.get(f"{base}/info").json()
    assert info["named_ranks"] is True and info["limits"]["max_named"] >= 3
    body = picture("PNG", (8, 8), seed=5)
    ids = search(base, body, k=50).json()["ids"]
    far = next(i for i in range(info["gallery_size"]) if i not in ids)
    named = [ids[7], ids[0], far, ids[49]]
    r = httpx.post(f"{base}/search", content=body, headers={"content-type": "image/png"},
                   params={"k": "50", "rank_of": ",".join(map(str, named))}, timeout=30)
    assert r.status_code == 200 and r.json() == {"ranks": [7, 0, None, 49]}
    for bad in ("1,x", "-1", str(info["gallery_size"]), ",".join(["1"] * 1025), ""):
        r = httpx.post(f"{base}/search", content=body, headers={"content-type": "image/png"},
                       params={"k": "5", "rank_of": bad}, timeout=30)
        assert r.status_code == 400 and list(r.json()) == ["error"], (bad, r.text)


@pytest.mark.parametrize("spec", ["exact", "flat", "hnsw"])
def test_a_batch_answers_each_picture_as_it_alone_would(digits_target, spec):
    """Micro-batching is invisible: pictures searched together (mixed k, ids or ranks) get
    the answers they get one at a time, in any order, to the last bit of every score."""
    from advrank.core.index import build_index
    from advrank.serve.engine import Query, SearchService
    from advrank.serve.limits import Limits

    target = digits_target
    index = build_index(target.gallery.embeddings, "cosine", spec)
    service = SearchService(target, index, True, Limits(max_k=len(target.gallery)))
    gen = torch.Generator().manual_seed(0)
    queries = [Query(torch.rand(1, 8, 8, generator=gen), k, named)
               for k, named in ((5, None), (719, torch.tensor([3, 700, 3])), (5, None),
                                (12, None), (719, torch.tensor([0])))] * 3
    alone = [service.search_batch([q])[0] for q in queries]
    together = service.search_batch(queries)
    shuffled = service.search_batch(queries[::-1])[::-1]
    assert together == alone and shuffled == alone
    assert alone[1].ranks[0] == alone[1].ranks[2] and len(alone[0].ids) == 5
    full = service.search_batch([Query(queries[1].image, 719)])[0].ids
    assert [full.index(i) if i in full else None for i in (3, 700, 3)] == alone[1].ranks


def _bad_requests() -> list[tuple[str, dict, int]]:
    jpeg = picture("JPEG", (64, 64), "RGB")
    bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(bomb, "PNG")  # 4 Mpx in a few KB
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    png = picture()
    return [
        ("not an image", {"content": b"hello, world" * 10}, 400),
        ("empty", {"content": b""}, 400),
        ("truncated PNG", {"content": png[: len(png) // 2]}, 400),
        ("truncated JPEG", {"content": jpeg[: len(jpeg) // 2],
                            "headers": {"content-type": "image/jpeg"}}, 400),
        ("decompression bomb", {"content": bomb.getvalue()}, 413),
        ("too large", {"content": os.urandom(300_000)}, 413),
        ("wrong content type", {"content": png, "headers": {"content-type": "text/plain"}}, 415),
        ("no content type, not a picture", {"content": b"GIF89a" + bytes(50),
                                            "headers": {"content-type": ""}}, 415),
        ("GIF", {"content": gif.getvalue(), "headers": {"content-type": "image/gif"}}, 415),
        ("multipart without file", {"files": {"other": ("a.png", png, "image/png")}}, 400),
        ("k not a number", {"content": png, "params": {"k": "ten"}}, 400),
        ("k zero", {"content": png, "params": {"k": "0"}}, 400),
        ("k above max", {"content": png, "params": {"k": "51"}}, 400),
    ]


async def _flood(base: str, body: bytes, n: int) -> list[tuple[int, dict]]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        async def one(i):
            r = await client.post("/search", content=body, params={"k": "5"},
                                  headers={"content-type": "image/png"})
            return r.status_code, r.json()
        return await asyncio.gather(*(one(i) for i in range(n)))


def test_bad_uploads_and_a_flood_leave_the_service_answering_the_same(service):
    base, proc = service
    fixed = picture("PNG", (28, 28), seed=11)
    first = search(base, fixed).json()
    for name, request, status in _bad_requests():
        kwargs = {"headers": {"content-type": "image/png"}, **request}
        r = httpx.post(f"{base}/search", timeout=30, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert list(body) == ["error"] and body["error"].strip(), (name, body)
    assert httpx.get(f"{base}/search").status_code == 405
    assert list(httpx.get(f"{base}/nowhere").json()) == ["error"]
    t0 = time.time()
    answers = asyncio.run(_flood(base, fixed, 200))
    assert time.time() - t0 < 60
    codes = [code for code, _ in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 2, codes
    assert all(body == first for code, body in answers if code == 200)
    assert all(list(body) == ["error"] for code, body in answers if code == 503)
    assert proc.poll() is None
    assert search(base, fixed).json() == first


def test_sigterm_stops_the_service_cleanly(service):
    _, proc = service
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "the search service stopped" in proc.stderr.read()
