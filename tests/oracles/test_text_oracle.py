"""Text queries through the oracles: the HTTP oracle sends ``{"text": ...}`` JSON bodies to a
service whose /info says ``text`` (validated and counted like picture searches, refused in one
line where /info does not say it), and the local oracle embeds them with its model's text
tower (refused for a single-tower model)."""

from __future__ import annotations

import json

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("open_clip")

from advrank.core.index import build_index  # noqa: E402
from advrank.errors import AdvrankError  # noqa: E402
from advrank.models import create_model  # noqa: E402
from advrank.oracles.http import HttpOracle  # noqa: E402
from advrank.oracles.local import LocalOracle  # noqa: E402

INFO = {"api": 2, "gallery_size": 10, "id_bound": 10, "max_k": 10, "scores": True,
        "named_ranks": True, "input_size": [1, 4, 4], "text": True}


def _oracle(info: dict, feedback: str = "topk-scores:3"):
    sent: list[dict] = []

    def route(request):
        if request.url.path == "/info":
            return httpx.Response(200, json=info)
        sent.append({"k": request.url.params["k"], "type": request.headers["content-type"],
                     "body": json.loads(request.content)})
        return httpx.Response(200, json={"ids": [7, 1], "scores": [0.1, 0.4]})

    oracle = HttpOracle("http://127.0.0.1:1", feedback, 10, concurrency=2)
    oracle.use_transport(httpx.MockTransport(route))
    oracle.check_service()
    return oracle, sent


def test_the_http_oracle_sends_text_queries_as_json():
    oracle, sent = _oracle(INFO)
    try:
        answer = oracle.answer_texts(["ankle boot", "a red sandal"])
    finally:
        oracle.close()
    assert answer.ids.tolist() == [[7, 1, -1]] * 2 and not answer.lost.any()
    assert answer.scores[0, :2].tolist() == pytest.approx([0.1, 0.4])
    assert sorted(s["body"]["text"] for s in sent) == ["a red sandal", "ankle boot"]
    assert all(s["k"] == "3" and s["type"] == "application/json" for s in sent)
    assert oracle.queries == 2


def test_a_service_without_text_and_bad_texts_are_one_error():
    oracle, sent = _oracle({**INFO, "text": False})
    try:
        with pytest.raises(AdvrankError, match="takes no text queries"):
            oracle.answer_texts(["ankle boot"])
        with pytest.raises(AdvrankError, match="non-empty"):
            oracle.answer_texts([""])
    finally:
        oracle.close()
    assert sent == [] and oracle.queries == 0


def test_the_local_oracle_ranks_texts_with_the_text_tower():
    torch.manual_seed(0)
    model = create_model("clip-tiny", (1, 8, 8), 16, [0.3], [0.38]).eval()
    with torch.no_grad():
        gallery = model(torch.rand(12, 1, 8, 8))
        texts = ["a photo of a 3", "the digit 7"]
        expected = torch.nn.functional.normalize(model.encode_text(texts), dim=1) @ \
            torch.nn.functional.normalize(gallery, dim=1).T
    oracle = LocalOracle(model, build_index(gallery, "cosine"), "topk:4")
    answer = oracle.answer_texts(texts)
    assert answer.ids.tolist() == expected.argsort(dim=1, descending=True)[:, :4].tolist()
    assert oracle.queries == 2
    single = LocalOracle(model.image, build_index(gallery, "cosine"), "topk:4")
    with pytest.raises(AdvrankError, match="has no text tower"):
        single.answer_texts(texts)
