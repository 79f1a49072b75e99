"""The serve layer in-process (FastAPI's TestClient, lifespan run): typed answers, one error
shape from one handler, Prometheus metrics, one access-log line per request, OpenAPI."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")



@pytest.fixture(scope="module")
def client(digits_target, make_client):
    lines: list[str] = []
    with make_client(digits_target, log=lines.append, max_k=40) as c:
        c.lines = lines
        yield c


def test_answers_are_the_wire_models(client, png):
    from advrank.oracles.wire import InfoAnswer, RanksAnswer, SearchAnswer, parse

    info = parse(InfoAnswer, client.get("/info").content, "/info")
    assert info.api == 2 and info.max_k == info.limits.max_k == 40 and info.scores is False
    assert info.id_bound == info.gallery_size == 719 and info.named_ranks
    r = client.post("/search?k=7", content=png(1), headers={"content-type": "image/png"})
    hit = parse(SearchAnswer, r.content, "/search")
    assert len(hit.ids) == 7 and hit.scores is None
    r = client.post(f"/search?k=7&rank_of={hit.ids[3]},{hit.ids[0]}", content=png(1),
                    headers={"content-type": "image/png"})
    assert parse(RanksAnswer, r.content, "/search").ranks == [3, 0]


@pytest.mark.parametrize("query, status, words", [
    ("k=0", 400, "greater than or equal to 1"), ("k=ten", 400, "valid integer"),
    ("k=41", 400, "[1, 40]"), ("rank_of=1,x", 400, "ids separated by commas"),
    ("rank_of=719", 400, "[0, 718]")])
def test_bad_parameters_get_one_json_error(client, png, query, status, words):
    r = client.post(f"/search?{query}", content=png(), headers={"content-type":
                                                                      "image/png"})
    assert r.status_code == status and list(r.json()) == ["error"] and words in r.json()[
        "error"], r.text


def test_every_kind_of_service_error_has_its_status():
    from advrank.serve import errors
    from advrank.serve.app import STATUS, status_of

    kinds = [c for c in vars(errors).values() if isinstance(c, type) and
             issubclass(c, errors.ServiceError) and c is not errors.ServiceError]
    assert set(kinds) == set(STATUS) and len(set(STATUS.values())) == len(STATUS)
    assert status_of(errors.Busy("x")) == 503 and status_of(errors.ServiceError("x")) == 500


def test_metrics_count_requests_batches_and_rejections(client, png):
    client.post("/search?k=3", content=png(2), headers={"content-type": "image/png"})
    client.post("/search", content=b"not a picture", headers={"content-type": "image/png"})
    client.post("/search", content=png(), headers={"content-type": "text/plain"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'advrank_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'advrank_rejections_total{reason="bad_request"}' in text
    assert 'advrank_rejections_total{reason="unsupported"}' in text
    assert "advrank_batch_size_count" in text and 'stage="forward"' in text
    assert "advrank_items 719.0" in text and "advrank_queue_depth 0.0" in text


def test_one_access_log_line_per_request(client, png):
    before = len(client.lines)
    client.get("/health")
    client.post("/search?k=0", content=png(), headers={"content-type": "image/png"})
    new = client.lines[before:]
    assert len(new) == 2, new
    assert '"GET /health" 200' in new[0] and new[0].endswith(" ms")
    assert '"POST /search" 400' in new[1]


def test_openapi_and_docs_are_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/info", "/health", "/metrics"} <= set(spec["paths"])
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(body)
    assert {p["name"] for p in spec["paths"]["/search"]["post"]["parameters"]} == {
        "k", "rank_of"}
    assert "swagger" in client.get("/docs").text.lower()
