"""The catalog's write path (``--writable --token``), in-process, on the exact, flat and
HNSW index: writes need the token; a bad picture gets one JSON error; an inserted item is
found by its own picture first; a deleted one is never answered again (ids and rank_of) and
its id never reused; the answers for other pictures are the same after insert + delete."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

TOKEN = "s3cret-token-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module", params=["exact", "flat", "hnsw"])
def client(request, digits_target, make_client):
    lines: list[str] = []
    with make_client(digits_target, request.param, log=lines.append, scores=True,
                     token=TOKEN, max_k=719, max_body_bytes=50_000, workers=2) as c:
        c.lines, c.spec = lines, request.param
        yield c


def test_writes_need_the_token(client, png):
    body = png(1)
    for headers in ({}, {"authorization": "Bearer wrong-token-123"},
                    {"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer"}):
        for r in (client.post("/items", content=body, headers={**PNG, **headers}),
                  client.delete("/items/3", headers=headers)):
            assert r.status_code == 401 and list(r.json()) == ["error"], r.text
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/items/3").status_code == 200  # nothing was removed
    info = client.get("/info")
    assert info.json()["writable"] is True and TOKEN not in info.text
    assert not any(TOKEN in line for line in client.lines)


def test_a_bad_picture_gets_one_json_error(client, png):
    for body, headers, status in ((b"not a picture", PNG, 400), (b"", PNG, 400),
                                  (png(), {"content-type": "text/plain"}, 415),
                                  (b"\x89PNG\r\n\x1a\n" + bytes(60_000), PNG, 413)):
        r = client.post("/items", content=body, headers={**headers, **AUTH})
        assert r.status_code == status and list(r.json()) == ["error"], r.text
    assert client.get("/info").json()["gallery_size"] == 719


def test_insert_then_delete(client, png):
    others = [png(seed, (8, 8)) for seed in range(10, 20)]

    def answers():
        return [client.post("/search?k=10", content=b, headers=PNG).json() for b in others]

    before, info0 = answers(), client.get("/info").json()
    new = png(99, (12, 12), "RGB")
    r = client.post("/items", files={"file": ("a/shoe.png", new, "image/png")}, headers=AUTH)
    assert r.status_code == 201 and r.json() == {"id": info0["id_bound"]}, r.text
    item = r.json()["id"]
    hit = client.post("/search?k=5", content=new, headers=PNG).json()
    assert hit["ids"][0] == item and hit["scores"][0] == pytest.approx(0, abs=1e-6)
    assert client.get(f"/items/{item}").json() == {"id": item, "name": "shoe.png",
                                                   "label": None, "class_name": None}
    assert client.get(f"/items/{item}/thumbnail").status_code == 200
    info = client.get("/info").json()
    assert info["gallery_size"] == info["id_bound"] == info0["id_bound"] + 1
    assert client.delete(f"/items/{item}", headers=AUTH).json() == {"deleted": item}
    # never answered again, by ids or by rank_of; its id not reused
    hit = client.post("/search?k=719", content=new, headers=PNG).json()
    assert item not in hit["ids"]
    assert len(hit["ids"]) == 719 or client.spec == "hnsw"  # (HNSW may find fewer)
    r = client.post(f"/search?k=719&rank_of={item},{hit['ids'][0]}", content=new, headers=PNG)
    assert r.json() == {"ranks": [None, 0]}, r.text
    assert client.get(f"/items/{item}").status_code == 404
    assert client.delete(f"/items/{item}", headers=AUTH).status_code == 404
    info = client.get("/info").json()
    assert info["gallery_size"] == 719 and info["id_bound"] == item + 1 and info["max_k"] == 719
    assert answers() == before  # the other pictures' answers, to the last bit
    again = client.post("/items", content=png(98), headers={**PNG, **AUTH}).json()["id"]
    assert again == item + 1
    client.delete(f"/items/{again}", headers=AUTH)


def test_a_read_only_service_has_no_write_path(digits_target, make_client, png):
    with make_client(digits_target) as c:
        assert c.get("/info").json()["writable"] is False
        for r in (c.post("/items", content=png(), headers={**PNG, **AUTH}),
                  c.delete("/items/3", headers=AUTH)):
            assert r.status_code in (404, 405) and list(r.json()) == ["error"]


@pytest.mark.parametrize("options, words", [
    (["--writable"], "--writable needs --token"),
    (["--token", "abcdefgh12"], "--token is for --writable"),
    (["--writable", "--token", "short"], "at least 8 printable characters")])
def test_write_options_are_refused_in_one_line(digits_ckpt, cli, one_error_line, options,
                                               words):
    status, out, err = cli(["serve", "--checkpoint", digits_ckpt, "--port", "0", *options])
    one_error_line(status, out, err, words)
