"""Calibration: an endpoint is verified before it is trusted. The same model agrees with its
local copy on every figure; a service on another model (same recipe, another seed), a gallery
served with its ids permuted and an endpoint answering random valid ids are each refused in
one line naming the figure that disagrees, and pass, with their figures, when the endpoint
is declared to differ. Calibration queries are counted apart from any budget."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.errors import AdvrankError
from advrank.oracles import make_oracle
from advrank.oracles.calibrate import Tolerance, calibrate, overlap_at_k

N = 12


@pytest.fixture(scope="module")
def target(untrained_digits):
    from advrank.experiments.target import load_target

    return load_target(str(untrained_digits), "cpu")


def clean_queries(target, n: int = N):
    ids = torch.arange(0, 7 * n, 7)  # gallery members, so their own ids are known
    return target.gallery.images(ids), ids


def test_overlap_counts_common_ids_and_ignores_padding():
    a = torch.tensor([[1, 2, 3], [4, -1, -1], [7, 8, 9]])
    b = torch.tensor([[3, 2, 0], [4, -1, -1], [-1, -1, -1]])
    assert overlap_at_k(a, b).tolist() == pytest.approx([2 / 3, 1.0, 1.0])


def test_the_local_copy_agrees_with_itself_on_every_figure(target):
    oracle = make_oracle("local", target, "topk:3")
    images, ids = clean_queries(target)
    cal = calibrate(oracle, images, target, ids)
    assert cal.figures == {"determinism": 1.0, "overlap@10": 1.0, "id_mapping": 1.0}
    assert cal.passed and cal.repeats == 3 and cal.queries == N + 3 == oracle.queries
    assert cal.endpoint.shape == (N, 10) and torch.equal(cal.endpoint, cal.local)
    assert cal.describe()["tolerance"]["overlap@10"] == 0.8


def test_tolerances_are_checked():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(AdvrankError):
            Tolerance(overlap=bad)


def test_an_endpoint_answering_random_ids_is_refused_for_its_determinism(target):
    """Without a local copy the endpoint is still compared with itself."""
    from advrank.oracles.base import Answer, Oracle

    class Random(Oracle):
        name = "random-ids"

        def exchange(self, images, depth, named, resend):
            self.queries += images.shape[0]
            return Answer(torch.stack([torch.randperm(self.gallery_size)[:depth]
                                       for _ in range(images.shape[0])]))

    torch.manual_seed(0)
    images, ids = clean_queries(target)
    with pytest.raises(AdvrankError, match=r"disagrees with itself .* determinism = 0\.00 "
                                           r"\(at least 0\.95\)") as err:
        calibrate(Random("topk:10", 719), images, ids=ids)
    assert "--endpoint-differs" in str(err.value) and "\n" not in str(err.value)
    cal = calibrate(Random("topk:10", 719), images, ids=ids, differs=True)
    assert cal.failed == ["determinism", "id_mapping"] and cal.describe()["endpoint_differs"]


# ------------------------------------------------------------------- real services


def _service_deps() -> None:
    for name in ("httpx", "fastapi", "faiss"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def same_service(untrained_digits, serve):
    _service_deps()
    with serve(untrained_digits, "--max-k", "20") as running:
        yield running[0]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, untrained_checkpoint, serve):
    """The same recipe (C2F1 on the digits), another seed."""
    _service_deps()
    ckpt = untrained_checkpoint(tmp_path_factory.mktemp("other") / "seed1.pt", seed=1)
    with serve(ckpt, "--max-k", "20") as running:
        yield running[0]


def permuted(path: str, body: bytes) -> bytes:
    """The service's ids through a fixed permutation: the same search, ids in another order."""
    if not path.startswith("/search"):
        return body
    perm = torch.randperm(719, generator=torch.Generator().manual_seed(3)).tolist()
    answer = json.loads(body)
    return json.dumps({**answer, "ids": [perm[i] for i in answer["ids"]]}).encode()


def test_the_same_model_served_passes_and_counts_its_queries(same_service, target):
    oracle = make_oracle(same_service, target, "topk:5")
    try:
        images, ids = clean_queries(target)
        cal = calibrate(oracle, images, target, ids)
    finally:
        oracle.close()
    assert cal.passed and cal.figures["overlap@10"] == 1.0 and cal.figures["id_mapping"] == 1.0
    assert cal.queries == N + 3 == oracle.queries


def test_another_model_is_refused_naming_the_overlap(other_model, target):
    oracle = make_oracle(other_model, target, "topk:10")
    images, ids = clean_queries(target)
    try:
        with pytest.raises(AdvrankError, match=r"disagrees with the local copy on 12 "
                                               r"calibration queries: overlap@10 = 0\.\d\d"):
            calibrate(oracle, images, target, ids)
        cal = calibrate(oracle, images, target, ids, differs=True)
    finally:
        oracle.close()
    assert cal.failed == ["overlap@10"] and cal.figures["overlap@10"] < 0.8
    assert cal.figures["id_mapping"] == 1.0  # the same pictures: each still finds itself


def test_a_permuted_gallery_is_refused_naming_the_id_mapping(same_service, target, net):
    with net.counting_proxy(same_service, mutate=permuted) as (url, _):
        oracle = make_oracle(url, target, "topk:10")
        images, ids = clean_queries(target)
        try:
            with pytest.raises(AdvrankError, match=r"id_mapping = 0\.\d\d \(at least 0\.90\)"):
                calibrate(oracle, images, target, ids)
            cal = calibrate(oracle, images, target, ids, differs=True)
        finally:
            oracle.close()
    assert "id_mapping" in cal.failed and cal.figures["id_mapping"] < 0.2


def test_the_attack_refuses_another_model_in_one_line_unless_told(other_model, untrained_digits,
                                                                  cli, one_error_line):
    argv = ["attack", "--checkpoint", untrained_digits, "--oracle", other_model, "--attack",
            "QA+", "--feedback", "topk:10", "--query-budget", "8", "--eps", "0.3",
            "--num-attacks", "4", "--device", "cpu", "--json", "--quiet"]
    one_error_line(*cli(argv), "overlap@10 = ", "add --endpoint-differs")
    status, out, err = cli([*argv, "--endpoint-differs"])
    assert status == 0, err
    r = json.loads(out)
    cal = r["calibration"]
    assert cal["endpoint_differs"] and cal["failed"] == ["overlap@10"] and cal["queries"] == 6
    assert r["queries_sent"] == round(r["queries_used"] * 4)  # calibration counted apart
