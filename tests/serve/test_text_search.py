"""Text and picture searches on one service: a model with a text tower answers JSON
``{"text": ...}`` bodies beside pictures (``/info`` says ``text``), each answer the one its
query gets alone; a bad text body is one JSON 4xx; a single-tower model refuses texts."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def dual_target():
    """An untrained digits clip-tiny model over the digits test split (8x8, cosine)."""
    import tempfile
    from pathlib import Path

    from advrank.experiments.target import load_target
    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("clip-tiny", (1, 8, 8), 16, [0.3], [0.38])
    path = Path(tempfile.mkdtemp()) / "dual.pt"
    save_checkpoint(path, model, {"dataset": "digits", "arch": "clip-tiny", "metric": "cosine",
                                  "embed_dim": 16, "image_shape": [1, 8, 8], "mean": [0.3],
                                  "std": [0.38]})
    return load_target(str(path), "cpu", progress=False)


def test_one_service_answers_texts_and_pictures(dual_target, make_client, png):
    from advrank.models.dual import text_encoder

    texts = ["a photo of a 3", "the digit 7"]
    with torch.no_grad():
        emb = text_encoder(dual_target.model).encode_text(texts)
    g = torch.nn.functional.normalize(dual_target.gallery.embeddings, dim=1)
    expected = (torch.nn.functional.normalize(emb, dim=1) @ g.T).argsort(1, descending=True)
    with make_client(dual_target) as client:
        assert client.get("/info").json()["text"] is True
        for text, row in zip(texts, expected, strict=True):
            answer = client.post("/search?k=5", json={"text": text})
            assert answer.status_code == 200, answer.text
            assert answer.json()["ids"] == row[:5].tolist()
            # the rank of a named id, as for a picture
            ranks = client.post(f"/search?k=5&rank_of={int(row[2])}", json={"text": text})
            assert ranks.json() == {"ranks": [2]}
        picture = client.post("/search?k=5", content=png(size=(8, 8), mode="L"),
                              headers={"content-type": "image/png"})
        assert picture.status_code == 200 and len(picture.json()["ids"]) == 5


@pytest.mark.parametrize("body", [b"not json", b'{"txt": "boot"}', b'{"text": ""}',
                                  b'{"text": 7}', b'["boot"]', b'{"text": "' + b"a" * 10_001
                                  + b'"}'])
def test_a_bad_text_body_is_one_json_4xx(dual_target, make_client, body):
    with make_client(dual_target) as client:
        answer = client.post("/search?k=3", content=body,
                             headers={"content-type": "application/json"})
        assert answer.status_code == 400 and set(answer.json()) == {"error"}
        assert client.get("/health").status_code == 200


def test_a_single_tower_model_refuses_texts(digits_target, make_client):
    with make_client(digits_target) as client:
        assert client.get("/info").json()["text"] is False
        answer = client.post("/search?k=3", json={"text": "a photo of a 3"})
        assert answer.status_code == 415 and "no text tower" in answer.json()["error"]
