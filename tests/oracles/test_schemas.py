"""Schema adapters: a fake vendor visual-search API (its own paths, item keys and similarity
scores, the picture sent raw, as a multipart file or base64 in JSON) read through ``--schema
json:FILE`` answers as the local oracle does on the same 8-bit picture; what it answers that
does not read (an unknown item, a score that is not a number, no list) is one error line; a
bad description file is refused naming its field; and ``advrank attack --schema`` runs an
attack through the fake API end to end."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")

from advrank.errors import AdvrankError  # noqa: E402
from advrank.oracles import make_oracle  # noqa: E402
from advrank.oracles.http import HttpOracle  # noqa: E402
from advrank.oracles.schemas import get_schema  # noqa: E402

SIZE = 719  # the digits test set: the gallery of the untrained checkpoint


@pytest.fixture(scope="module")
def target(untrained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(untrained_digits), "cpu")


def sku(i: int) -> str:
    """The vendor's key for gallery item i (not its position: a mapping is needed)."""
    return f"item-{(i * 37) % SIZE:04d}"


def describe_api(tmp_path, body: str = "raw", **change) -> str:
    """``json:FILE`` of the fake vendor API (its id mapping in a file beside it)."""
    (tmp_path / "ids.json").write_text(json.dumps({sku(i): i for i in range(SIZE)}))
    api = {"path": "/v2/visual-search", "body": body, "k": "limit",
           "params": {"catalog": "main"}, "results": "data.matches", "id": "product.sku",
           "score": "similarity", "order": "similarity", "ids": "ids.json", "max_k": 50,
           **change}
    (tmp_path / "api.json").write_text(json.dumps(api))
    return f"json:{tmp_path / 'api.json'}"


def vendor_answer(target, picture: bytes, k: int) -> dict:
    """What the fake vendor answers: the local model's top-k, as its own keys and cosine
    similarities."""
    from PIL import Image

    pixels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(picture)), np.float32) / 255)
    local = make_oracle("local", target, f"topk-scores:{k}")
    answer = local.answer(pixels[None, None])
    return {"data": {"matches": [{"product": {"sku": sku(i)}, "similarity": 1.0 - d}
                                 for i, d in zip(answer.ids[0].tolist(),
                                                 answer.scores[0].tolist(), strict=True)]}}


def picture_of(request) -> bytes:
    """The PNG the client sent, whichever way the API takes it."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        return base64.b64decode(json.loads(request.content)["image"])
    if kind.startswith("multipart/form-data"):
        boundary = kind.split("boundary=")[1].encode()
        part = request.content.split(b"--" + boundary)[1]
        return part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    return request.content


def fake_vendor(target, seen: list, k_in_json: bool = False):
    def handler(request):
        assert request.url.path == "/v2/visual-search"
        assert request.url.params["catalog"] == "main"
        k = json.loads(request.content)["limit"] if k_in_json else \
            int(request.url.params["limit"])
        seen.append(k)
        return httpx.Response(200, json=vendor_answer(target, picture_of(request), k))

    return handler


def vendor_oracle(spec: str, handler, feedback: str) -> HttpOracle:
    oracle = HttpOracle("http://vendor.test", feedback, SIZE, schema=spec)
    oracle.use_transport(httpx.MockTransport(handler))
    oracle.check_service()
    return oracle


@pytest.mark.parametrize("body", ["raw", "multipart:file", "json-base64:image"])
def test_a_vendor_api_reads_as_the_local_oracle_on_the_8_bit_picture(target, tmp_path, body):
    seen: list = []
    oracle = vendor_oracle(describe_api(tmp_path, body),
                           fake_vendor(target, seen, body.startswith("json")), "topk-scores:10")
    x = torch.rand(3, 1, 8, 8)
    try:
        got = oracle.answer(x)
    finally:
        oracle.close()
    want = make_oracle("local", target, "topk-scores:10").answer((x * 255).round() / 255)
    assert torch.equal(got.ids, want.ids) and seen == [10] * 3
    assert torch.allclose(got.scores, want.scores - 1.0, atol=1e-5)  # -similarity
    assert oracle.describe()["schema"] == "json:api.json" and oracle.queries == 3


@pytest.mark.parametrize("mutate, words", [
    (lambda a: a["data"]["matches"].append({"product": {"sku": "item-9999"},
                                            "similarity": 0.1}), "'item-9999', which the id"),
    (lambda a: a["data"]["matches"][0].update(similarity="0.9"), "not a finite number"),
    (lambda a: a["data"]["matches"][0].update(product={}), "NoneType, not an item key"),
    (lambda a: a.update(data=None), "no list of results at 'data.matches'"),
    (lambda a: a["data"]["matches"].reverse(), "nearest first"),
])
def test_what_does_not_read_is_one_error_line(target, tmp_path, mutate, words):
    def handler(request):
        answer = vendor_answer(target, picture_of(request), 5)
        mutate(answer)
        return httpx.Response(200, json=answer)

    oracle = vendor_oracle(describe_api(tmp_path), handler, "topk-scores:5")
    try:
        with pytest.raises(AdvrankError, match=words) as err:
            oracle.answer(torch.rand(1, 1, 8, 8))
    finally:
        oracle.close()
    assert "\n" not in str(err.value) and "vendor.test" in str(err.value)


def test_schema_specs_and_description_files_are_checked(tmp_path):
    assert get_schema(None).name == "advrank" and get_schema("advrank").ranks
    cases = [("nope", "unknown schema"), ("advrank:x", "takes no argument"),
             ("json", "description file"), (f"json:{tmp_path / 'missing.json'}", "cannot read")]
    for spec, words in cases:
        with pytest.raises(AdvrankError, match=words):
            get_schema(spec)
    for change, words in [({"reslts": "x"}, "reslts: Extra inputs"),
                          ({"path": "v2"}, "path: String should match"),
                          ({"max_k": 0}, "max_k"), ({"order": "up"}, "order"),
                          ({"ids": None}, "gallery_size")]:
        with pytest.raises(AdvrankError, match=words):
            get_schema(describe_api(tmp_path, **change))
    (tmp_path / "dup.json").write_text(json.dumps({"a": 0, "b": 0}))
    with pytest.raises(AdvrankError, match="its own id"):
        get_schema(describe_api(tmp_path, ids="dup.json"))


def test_an_attack_runs_through_the_vendor_api(target, tmp_path, untrained_digits, net, cli,
                                               one_error_line):
    """``advrank attack --oracle URL --schema json:FILE`` against the fake API on loopback:
    calibrated, within budget, the schema recorded."""
    async def handle(reader, writer):
        from urllib.parse import parse_qs, urlsplit

        while (request := await net.read_request(reader)) is not None:
            _, path, _, body = request
            k = int(parse_qs(urlsplit(path).query)["limit"][0])
            answer = json.dumps(vendor_answer(target, body, k)).encode()
            await net.write_response(writer, 200, answer)
        writer.close()

    spec = describe_api(tmp_path)
    argv = ["attack", "--checkpoint", untrained_digits, "--attack", "QA+", "--feedback",
            "topk-scores:10", "--query-budget", "8", "--eps", "0.3", "--num-attacks", "2",
            "--device", "cpu", "--json", "--quiet", "--schema", spec]
    with net.tcp_server(handle) as url:
        status, out, err = cli([*argv, "--oracle", url])
    assert status == 0, err
    r = json.loads(out)
    assert r["schema"] == "json:api.json" and r["calibration"]["passed"]
    assert r["queries_used_max"] <= 8 and r["queries_sent"] == round(2 * r["queries_used"])
    one_error_line(*cli([*argv, "--oracle", "local"]), "--schema apply to a remote endpoint")
    bad = [*argv[:-1], "json:" + str(tmp_path / "none.json"), "--oracle", "http://h:1"]
    one_error_line(*cli(bad), "--schema", "cannot read the schema file")
