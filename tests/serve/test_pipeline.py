"""``advrank serve --pipeline``: every upload, search or insert, is re-encoded (a real JPEG
or PNG round trip at the model's input size) before it is embedded, and /info says so."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

PNG = {"content-type": "image/png"}
TOKEN = "pipeline-test-token"


@pytest.fixture(scope="module")
def jpeg_client(digits_target, make_client):
    with make_client(digits_target, scores=True, pipeline="jpeg:75", token=TOKEN) as c:
        yield c


def test_a_search_is_that_of_the_re_encoded_picture(jpeg_client, digits_target, make_client,
                                                    png):
    from advrank.core.pipeline import get_pipeline
    from advrank.serve.catalog import png_file
    from advrank.serve.decode import decode_upload
    from advrank.serve.engine import target_geometry

    info = jpeg_client.get("/info").json()
    assert info["pipeline"] == "jpeg:75"
    jpeg = get_pipeline("jpeg:75")
    changed = []
    with make_client(digits_target, scores=True) as plain:
        assert plain.get("/info").json()["pipeline"] is None
        for seed in range(4):
            body = png(seed, (16, 16))
            image = decode_upload(body, target_geometry(digits_target), 10**6)
            after = png_file(jpeg(image[None])[0])  # what the service embeds, as a file
            got = jpeg_client.post("/search?k=8", content=body, headers=PNG).json()
            assert got == plain.post("/search?k=8", content=after, headers=PNG).json()
            changed.append(got != plain.post("/search?k=8", content=body, headers=PNG).json())
    assert any(changed)  # the round trip changes what is searched


def test_an_insert_goes_through_the_same_pipeline(jpeg_client, digits_target, png):
    from advrank.core.pipeline import get_pipeline
    from advrank.serve.decode import decode_upload
    from advrank.serve.engine import target_geometry

    body = png(42, (8, 8))
    new = jpeg_client.post("/items", content=body, headers={**PNG, "authorization":
                                                             f"Bearer {TOKEN}"}).json()["id"]
    hit = jpeg_client.post("/search?k=3", content=body, headers=PNG).json()
    assert hit["ids"][0] == new and hit["scores"][0] == pytest.approx(0, abs=1e-6)
    thumb = jpeg_client.get(f"/items/{new}/thumbnail").content
    stored = decode_upload(thumb, target_geometry(digits_target), 10**6)
    image = decode_upload(body, target_geometry(digits_target), 10**6)
    assert (stored - get_pipeline("jpeg:75")(image[None])[0]).abs().max() < 1 / 255 + 1e-6


def test_a_bad_pipeline_is_refused_in_one_line(digits_ckpt, cli, one_error_line):
    status, out, err = cli(["serve", "--checkpoint", digits_ckpt, "--pipeline", "jpeg:101"])
    one_error_line(status, out, err, "quality")
