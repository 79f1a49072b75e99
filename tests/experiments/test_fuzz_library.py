"""Property-based tests of the library entry points (``advrank``'s public API), with
hypothesis: arguments drawn valid or hostile (None, bools, NaN, inf, 0, negatives, huge
numbers, strings, lists, tensors...). Every call must either return finite results or raise
one :class:`AdvrankError` with a one-line message; never another exception, never NaN.

Galleries are 60 digits images embedded by an untrained 8-d model, so valid calls are cheap;
the values that would make a call long (PGD steps, T, epochs) are drawn small when valid.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrank.attacks import LinfThreatModel, RankingAttack, get_attack
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.core.metrics import retrieval_metrics
from advrank.core.runtime import resolve_device
from advrank.data import TensorImageDataset, load_dataset
from advrank.defenses import make_defense
from advrank.errors import AdvrankError
from advrank.experiments.curves import defense_curves
from advrank.experiments.grid import run_grid
from advrank.experiments.protocol import run_attack
from advrank.experiments.transfer import transfer_attack, transfer_matrix
from advrank.experiments.universal import universal_attack
from advrank.models import create_model
from advrank.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from advrank.training import TrainConfig, evaluate_model, train

CASES = 60
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: hostile values of any type
JUNK = st.one_of(
    st.sampled_from([None, True, False, 0, -1, -0.0, 1.5, math.nan, math.inf, -math.inf,
                     10**30, -(10**30), "", "1", "nan", "CA+", [], [1], (1, 2), {}, {"a": 1},
                     b"x", np.float64("nan"), np.int64(3), torch.tensor(1.0),
                     torch.tensor(math.nan), torch.zeros(2), object()]),
    st.floats(), st.integers(), st.text(max_size=5))


#: hostile values for a count whose large valid values would only make a call long
BAD_COUNT = st.sampled_from([None, True, 0, -1, 1.5, math.nan, math.inf, 10**30, "2", [2],
                             np.float64(2.0), torch.tensor(2)])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz-library")
    torch.manual_seed(0)
    digits = load_dataset("digits", "test")
    dataset = TensorImageDataset(digits.images[:60], digits.labels[:60], name="digits")
    models, galleries, paths = [], [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]).eval()
        models.append(model)
        galleries.append(Gallery.build(model, dataset, "cosine"))
        paths.append(root / f"m{seed}.pt")
        save_checkpoint(paths[-1], model, {"dataset": "digits", "arch": "c2f1",
                                           "metric": "cosine", "embed_dim": 8,
                                           "image_shape": [1, 8, 8], "mean": [0.3],
                                           "std": [0.38]})
    return {"root": root, "dataset": dataset, "models": models, "galleries": galleries,
            "paths": paths, "fresh": itertools.count()}


def assert_finite(obj, where: str = "result") -> None:
    """No NaN or infinity anywhere in a result (numbers, tensors, nested containers)."""
    if isinstance(obj, float):
        assert math.isfinite(obj), where
    elif isinstance(obj, torch.Tensor):
        assert obj.dtype == torch.bool or not obj.is_floating_point() or bool(
            torch.isfinite(obj).all()), where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            assert_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_finite(v, f"{where}[{i}]")


def fuzz_call(fn: Callable, good: dict[str, list], bad: dict[str, st.SearchStrategy] | None = None,
              min_ok: int = 1, min_refused: int = 10, result: Callable = lambda r: r,
              cases: int = CASES) -> None:
    """Call ``fn(**kwargs)`` ``cases`` times, each kwarg drawn from its ``good`` values or (at
    most two per call) hostile ones, after one control call with the first good values; both
    outcomes must occur (at least ``min_ok`` results and ``min_refused`` refusals)."""
    names = list(good)
    outcomes: Counter = Counter()
    reasons: Counter = Counter()
    # control: the first good value of every argument works
    assert_finite(result(fn(**{k: v[0] for k, v in good.items() if v[0] is not OMIT})))

    @settings(FUZZ, max_examples=cases)
    @given(data=st.data())
    def run(data):
        count = min(len(names), data.draw(st.sampled_from([0, 1, 1, 2]), label="hostile"))
        hostile = data.draw(st.sets(st.sampled_from(names), min_size=count, max_size=count))
        kwargs = {}
        for name in names:
            pool = (bad or {}).get(name, JUNK) if name in hostile else st.sampled_from(good[name])
            kwargs[name] = data.draw(pool, label=name)
        kwargs = {k: v for k, v in kwargs.items() if v is not OMIT}
        try:
            out = fn(**kwargs)
        except AdvrankError as exc:
            message = str(exc)
            assert message and "\n" not in message and len(message) < 1000, message
            outcomes["refused"] += 1
            reasons[f"{sorted(hostile)}: {message[:80]}"] += 1
            return
        assert_finite(result(out))
        outcomes["ok"] += 1

    run()
    assert outcomes["ok"] >= min_ok and outcomes["refused"] >= min_refused, (
        fn, outcomes, reasons.most_common(5))


OMIT = object()  # leave the keyword out (its default)


def test_fuzz_threat_model():
    fuzz_call(LinfThreatModel, {"eps": [0.0, 0.1, 8 / 255, 1], "step_size": [None, 0.01, 1],
                                "steps": [None, 0, 3, 100_000], "random_start": [False, True]},
              result=lambda t: t.describe())


def test_fuzz_attack_kinds():
    fuzz_call(get_attack, {"attack": ["QA+", "QA-", "QA−"], "xi": [None, 0, 1.0, 1e6],
                           "g": [None, 0, 5], "sp_reduction": [None, "mean", "sum"],
                           "top_fraction": [None, 0.01, 1.0]},
              result=lambda kind: kind.options)


def test_fuzz_defenses():
    fuzz_call(make_defense, {"name": ["est", "madry"], "eps": [None, 0.1, 1.0],
                             "dataset": ["digits", "mnist"], "steps": [None, 1, 5],
                             "step_size": [None, 0.01], "metric": [None, "cosine"]},
              result=lambda d: d.describe())


def test_fuzz_models_and_devices():
    fuzz_call(create_model, {"name": ["c2f1", "lenet"], "image_shape": [(1, 8, 8), [1, 8, 8]],
                             "embed_dim": [None, 1, 8], "mean": [None, [0.3]],
                             "std": [None, [0.38]]},
              result=lambda m: m(torch.rand(2, 1, 8, 8)))
    fuzz_call(resolve_device, {"name": ["cpu", "auto"]}, result=lambda d: [])
    fuzz_call(get_distance, {"name": ["cosine", "euclidean"]},
              result=lambda d: d.pairwise(torch.eye(3), torch.ones(2, 3)))


def test_fuzz_data_and_checkpoints(world):
    root = world["root"]
    fuzz_call(load_dataset, {"name": ["digits"], "split": ["train", "test"],
                             "root": [None, root], "download": [False]},
              bad={"download": st.sampled_from([None, 1, "yes"])}, result=lambda d: d.labels)
    fuzz_call(load_checkpoint, {"path": [world["paths"][0], str(world["paths"][1])]},
              bad={"path": st.sampled_from([root, root / "nope.pt", "", "/dev/null", 3,
                                            None, Path("/proc/self/status")])},
              min_refused=3, result=lambda c: c["meta"])
    fuzz_call(model_from_checkpoint, {"ckpt": [world["paths"][0]], "device": ["cpu"]},
              min_refused=3, result=lambda mm: mm[1])
    fuzz_call(TensorImageDataset, {"images": [torch.rand(4, 1, 8, 8)],
                                   "labels": [torch.tensor([0, 1, 0, 1])], "name": ["x"]},
              min_refused=3, result=lambda d: d.images)


def test_fuzz_metrics(world):
    emb = world["galleries"][0].embeddings
    fuzz_call(retrieval_metrics, {"gallery": [emb], "labels": [world["dataset"].labels],
                                  "distance": [get_distance("cosine"), "euclidean"],
                                  "ks": [(1,), [1, 2, 4]], "with_nmi": [False]})
    fuzz_call(evaluate_model, {"model": [world["models"][0]], "dataset": [world["dataset"]],
                               "distance": ["cosine"], "device": ["cpu"], "ks": [(1, 2)],
                               "with_map": [True, False]})


def test_fuzz_ranking_attack(world):
    model, gallery = world["models"][0], world["galleries"][0]
    images = world["dataset"].images[:3]

    def attack(kind, eps, steps, images, targets):
        threat = LinfThreatModel(eps, steps=steps)
        return RankingAttack(model, gallery.embeddings, "cosine", kind, threat)(images, targets)

    fuzz_call(attack, {"kind": ["CA+", "QA-"], "eps": [0.0, 0.1], "steps": [1, 2],
                       "images": [images], "targets": [torch.tensor([[1], [2], [3]])]},
              bad={"images": st.sampled_from([images * 2, images[0], images.double() * math.nan,
                                              images.int(), "x", None, images[:, :, :4]]),
                   "targets": st.sampled_from([torch.tensor([[99], [1], [2]]),
                                               torch.tensor([1, 2, 3]), torch.tensor([[1.5]] * 3),
                                               torch.tensor([[-1], [0], [0]]), "x"]),
                   "steps": BAD_COUNT})


def test_fuzz_run_attack(world):
    model, gallery = world["models"][0], world["galleries"][0]
    fuzz_call(run_attack, {"model": [model], "gallery": [gallery],
                           "attack": ["CA+", "CA-", "QA+", "QA-"], "eps": [0.0, 0.05, 0.3],
                           "k": [1, 2], "num_attacks": [1, 4, 60], "seed": [0, 7, 2**63 - 1],
                           "batch_size": [1, 3, 1_000_000],
                           "threat": [None, OMIT], "progress": [False]},
              bad={"threat": st.sampled_from([LinfThreatModel(0.1), "x", 1])},
              result=lambda r: r.summary())


def test_fuzz_grid(world):
    model, gallery = world["models"][0], world["galleries"][0]

    def grid(**kw):
        return run_grid(model, gallery, world["root"] / f"grid-{next(world['fresh'])}",
                        progress=False, **kw)

    fuzz_call(grid, {"eps_values": [(0.0, 0.01), [0.0]], "ks": [(1,), [1, 2]],
                     "attacks": [("CA+",), ["QA-", "CA−"]], "num_attacks": [2, 3],
                     "seed": [0, 1], "batch_size": [2, 256], "paper": [None, "mnist"]})


def test_fuzz_transfer_and_universal(world):
    (m0, m1), (g0, g1) = world["models"], world["galleries"]
    fuzz_call(transfer_attack, {
        "source_model": [m0], "target_model": [m1], "dataset": [world["dataset"]],
        "attack": ["CA+", "QA-"], "eps": [0.1, 0.0], "k": [1], "num_attacks": [None, 3],
        "seed": [0], "batch_size": [2], "select_on": ["source", "target"],
        "source_gallery": [g0], "target_gallery": [g1],
        "threat": [LinfThreatModel(0.1, steps=1), OMIT]},
        bad={"threat": st.sampled_from([LinfThreatModel(0.2), "x", None])})
    fuzz_call(universal_attack, {
        "model": [m0], "gallery": [g0], "attack": ["CA+", "QA+"], "eps": [0.0, 0.1],
        "k": [1, 2], "seed": [0], "fraction": [0.05, 0.1], "xi": [None, 0.0, 1.0],
        "steps": [0, 1, 2], "step_size": [None, 0.01], "mode": ["own", "shared"],
        "chunk_size": [1, 256]}, bad={"steps": BAD_COUNT})


def test_fuzz_matrix_curves_and_training(world):
    paths = world["paths"]

    def matrix(**kw):
        return transfer_matrix({"a": paths[0], "b": paths[1]},
                               out_dir=world["root"] / f"tm-{next(world['fresh'])}",
                               device="cpu", **kw)

    fuzz_call(matrix, {"attacks": [("CA+",), ["QA+"]], "eps": [0.0, 0.1], "k": [1],
                       "num_attacks": [2], "seed": [0], "batch_size": [4], "steps": [1],
                       "select_on": ["source"]}, bad={"steps": BAD_COUNT}, min_refused=5,
              cases=30)

    def curves(**kw):
        return defense_curves([paths[0]], world["root"] / f"c-{next(world['fresh'])}",
                              device="cpu", progress=False, **kw)

    fuzz_call(curves, {"eps_values": [(0.0,), [0.0, 0.01]], "num_attacks": [2], "k": [1],
                       "seed": [0], "batch_size": [8]}, min_refused=5, cases=30)

    def training(**kw):
        config = TrainConfig(dataset="digits", arch="c2f1", embed_dim=4, device="cpu", **kw)
        return train(config, world["root"] / f"t-{next(world['fresh'])}.pt", progress=False,
                     defense=make_defense("est", eps=0.1, steps=1, dataset="digits")
                     if kw.get("seed") == 1 else None).meta

    fuzz_call(training, {"epochs": [1], "batch_size": [32, 4096], "lr": [1e-3],
                         "margin": [None, 0.2], "seed": [0, 1], "metric": [None, "euclidean"],
                         "loss": [None, "contrastive"], "samples_per_class": [None, 4]},
              bad={**{k: JUNK for k in ("lr", "margin", "seed", "metric", "loss")},
                   **{k: BAD_COUNT for k in ("epochs", "batch_size", "samples_per_class")}},
              min_refused=5, cases=30)
