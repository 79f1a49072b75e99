"""What an id means (``/items``), the search page's HTML, and uploads sent without a picture
content type (the bytes decide; the limits hold)."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def client(digits_target, make_client):
    with make_client(digits_target, max_body_bytes=50_000, scores=True) as c:
        yield c


def test_an_item_says_what_it_is_and_shows_its_picture(client, digits_target):
    from PIL import Image

    from advrank.oracles.wire import InfoAnswer, ItemAnswer, parse

    assert parse(InfoAnswer, client.get("/info").content, "/info").items is True
    labels = digits_target.gallery.labels
    for i in (0, 17, 718):
        item = parse(ItemAnswer, client.get(f"/items/{i}").content, "/items")
        assert item.id == i and item.label == int(labels[i]) == int(item.class_name)
        assert item.name is None  # the digits are no files: no name is made up
    r = client.get("/items/17/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (8, 8) and img.mode == "L"
    hit = client.post("/search?k=3", content=r.content, headers={"content-type": "image/png"})
    assert hit.json()["ids"][0] == 17  # an item's own picture finds it first
    for bad, status in (("719", 404), ("-1", 400), ("x", 400), ("99999999999999999999", 400)):
        for path in (f"/items/{bad}", f"/items/{bad}/thumbnail"):
            r = client.get(path)
            assert r.status_code == status and list(r.json()) == ["error"], (path, r.text)


def test_the_page_is_served_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>advrank search</title>" in r.text and 'id="drop"' in r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http" not in r.text.split("<script>")[1]  # it fetches from its own service only


@pytest.mark.parametrize("ctype", [None, "", "application/x-www-form-urlencoded",
                                   "application/octet-stream"])
def test_a_picture_sent_without_an_image_type_is_sniffed(client, png, ctype):
    body = png(4, (20, 20), "RGB")
    want = client.post("/search?k=5", content=body, headers={"content-type": "image/png"})
    headers = {} if ctype is None else {"content-type": ctype}
    got = client.post("/search?k=5", content=body, headers=headers)
    assert got.status_code == 200 and got.json() == want.json()
    jpeg = png(4, (20, 20), "RGB", "JPEG")
    assert client.post("/search?k=5", content=jpeg, headers=headers).status_code == 200


def test_what_is_not_a_picture_still_gets_one_json_error(client, png):
    for body, headers, status in (
            (b"hello, world" * 10, {}, 415), (b"GIF89a" + bytes(40), {}, 415),
            (b"", {"content-type": "application/octet-stream"}, 415),
            (png(), {"content-type": "text/plain"}, 415),
            (png(), {"content-type": "application/json"}, 415),
            (b"\x89PNG\r\n\x1a\n" + bytes(60_000), {}, 413),  # the limits hold
            (b"\x89PNG\r\n\x1a\n" + bytes(100), {}, 400)):  # a PNG's start, then junk
        r = client.post("/search", content=body, headers=headers)
        assert r.status_code == status and list(r.json()) == ["error"], (body[:12], r.text)
