"""Shared test fixtures. The tests run on CPU in well under a minute (tiny models, `digits`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from advrank.data import default_data_root

REPO = Path(__file__).resolve().parents[1]

# The tests use tiny models, for which intra-op threads cost more than they bring; on a small
# machine shared with another job, oversubscribed threads make them ~10x slower.
torch.set_num_threads(1)
# The same for the advrank commands the tests start (README blocks, scripts, services): each
# would take every core's thread, beside the other worker's. Measured on the 2-core machine
# beside a running job: two `advrank grid` side by side took 526 s with torch's default
# threads, 39 s with one each. A thread count the user set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def serve():
    """``serve(checkpoint, *options)``: a context manager giving ``(url, process)`` of
    ``advrank serve`` on a free loopback port, stopped on exit (tests/serve/conftest.py's
    ``running_service``, loaded by path: conftest modules are not importable)."""
    import importlib.util

    path = REPO / "tests" / "serve" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_advrank_serve_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.running_service


def pytest_collection_modifyitems(items: list) -> None:
    """The ``slow`` tests first (stable otherwise): with two workers, a minutes-long test that
    starts last would leave one worker running it alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Where MNIST/Fashion-MNIST live: the folder the CLI reads too (``$ADVRANK_DATA``, else
    ``./data``), so that a skip message names the folder a user would fill."""
    return default_data_root()


# ------------------------------------------------------------------ running the CLI in-process


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``advrank ARGV`` in this process: (exit status, stdout, stderr). An exception other than
    the ones ``main`` turns into an exit status propagates (the test then shows a traceback)."""
    import contextlib
    import io

    from advrank.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:  # --help / --version only
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def assert_one_error_line(status: int, out: str, err: str, *fragments: str) -> str:
    """What README promises for bad input: exit status 2, nothing on stdout, no traceback, and
    stderr ending in exactly one ``advrank: error: ...`` line (the only line under --quiet).
    Returns that line."""
    lines = err.strip().splitlines()
    assert status == 2, (status, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    assert lines and lines[-1].startswith("advrank: error: "), err
    assert sum(line.startswith("advrank: error:") for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli` (session-scoped, so hypothesis tests may use it)."""
    return run_cli


@pytest.fixture(scope="session")
def one_error_line():
    """:func:`assert_one_error_line`."""
    return assert_one_error_line


# ------------------------------------------------------------------ tiny models on the digits


def save_untrained_checkpoint(path: Path, dataset: str = "digits", size: int = 8,
                              embed_dim: int = 16, mean: float = 0.3, std: float = 0.38,
                              seed: int = 0, metric: str = "cosine") -> Path:
    """A C2F1 checkpoint with random weights (drawn from ``seed``) for ``dataset``'s
    ``[1, size, size]`` images (no training: for tests of what runs around a model)."""
    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model("c2f1", (1, size, size), embed_dim, mean=[mean], std=[std])
    save_checkpoint(path, model, {"dataset": dataset, "arch": "c2f1", "metric": metric,
                                  "embed_dim": embed_dim, "image_shape": [1, size, size],
                                  "mean": [mean], "std": [std]})
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint():
    """:func:`save_untrained_checkpoint`."""
    return save_untrained_checkpoint


@pytest.fixture(scope="session")
def untrained_digits(tmp_path_factory) -> Path:
    """:func:`save_untrained_checkpoint` on the digits (16-d), shared by the session."""
    return save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "digits.pt")


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """``trained_digits(embed_dim=16)``: a digits C2F1 checkpoint trained for one epoch on the
    CPU, made once per size for the session."""
    made: dict[int, Path] = {}

    def make(embed_dim: int = 16) -> Path:
        if embed_dim not in made:
            from advrank.training import TrainConfig, train

            path = tmp_path_factory.mktemp("ckpt") / f"digits-{embed_dim}.pt"
            train(TrainConfig(dataset="digits", epochs=1, embed_dim=embed_dim, device="cpu"),
                  path, progress=False)
            made[embed_dim] = path
        return made[embed_dim]

    return make


@pytest.fixture(scope="session")
def digits_model():
    """``(model, gallery)``: a seeded untrained C2F1 in float64 (eval mode) and the gallery of
    the first 120 digits test images, for exact checks of the attack objectives."""
    from advrank.core.distances import get_distance
    from advrank.core.gallery import Gallery
    from advrank.data import TensorImageDataset, load_dataset
    from advrank.models import create_model

    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16).double().eval()
    ds = load_dataset("digits", "test")
    ds = TensorImageDataset(ds.images[:120].double(), ds.labels[:120])
    return model, Gallery.build(model, ds, get_distance("cosine"))


CLASSES = ("circles", "stripes", "squares")


def make_image_folder(root: Path, per_class: int = 20, size: int = 40, seed: int = 0,
                      ext: str = ".jpg") -> Path:
    """``root/CLASS/NNN.jpg``: ``per_class`` generated pictures in each of 3 classes (a colour
    and a shape per class, random sizes, noise), so that even random networks rank them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mid = size / 2
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3)) + rng.uniform(0, 0.3, 3)
            img[..., c] += 0.45
            if c == 0:
                mask = (yy - mid) ** 2 + (xx - mid) ** 2 < rng.uniform(0.05, 0.2) * size ** 2
            elif c == 1:
                mask = (xx // rng.integers(2, 6)) % 2 == 0
            else:
                h, w = rng.integers(size // 8, size // 3, 2)
                mask = (abs(yy - mid) < h) & (abs(xx - mid) < w)
            img = np.clip(img + 0.4 * mask[..., None] + rng.normal(0, 0.04, img.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name / f"{i:03d}{ext}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """60 generated JPEGs in 3 class sub-folders (shared; copy it before changing it)."""
    return make_image_folder(tmp_path_factory.mktemp("pictures") / "photos")


@pytest.fixture(scope="session")
def small_image_folder(tmp_path_factory) -> Path:
    """20 generated JPEGs in 3 class sub-folders, 7, 7 and 6 (shared; copy it before changing
    it): the smallest collection README's quick look must fit."""
    root = make_image_folder(tmp_path_factory.mktemp("pictures20") / "photos", per_class=7)
    last = sorted(p for p in root.iterdir() if p.is_dir())[-1]
    sorted(last.iterdir())[-1].unlink()
    return root


def _inspect_page(text: str) -> dict:
    """Parse an HTML page strictly enough to catch broken markup; returns its ``images`` (src
    of every <img>), every URL-bearing attribute (``urls``) and the tags seen."""
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.images, self.urls, self.tags, self.stack = [], [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag not in ("img", "meta", "br", "link", "input", "source"):
                self.stack.append(tag)
            for name, value in attrs:
                if name in ("src", "href", "srcset", "poster", "action", "data", "background"):
                    self.urls.append(value or "")
                if tag == "img" and name == "src":
                    self.images.append(value or "")

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
            self.stack.pop()

    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return {"images": page.images, "urls": page.urls, "tags": page.tags}


@pytest.fixture
def inspect_page():
    """``inspect_page(html_text) -> {"images", "urls", "tags"}`` (asserts balanced markup)."""
    return _inspect_page


# --------------------------------------------------- published weights, cached and offline


class OfflineCaches:
    """The libraries' weight caches moved under a temporary folder, with the network off: a
    connection attempt raises ``OSError``. ``put_*`` write random weights of the right
    architecture under the exact name the library caches them as (seeded, and returned so
    that a test can check they are the ones loaded)."""

    def __init__(self, root: Path):
        self.torch_hub = root / "torch_hub"
        self.hf = root / "hf"

    def put_torchvision(self, name: str) -> dict[str, torch.Tensor]:
        from torchvision import models

        from advrank.models.pretrained import hub_checkpoint_path

        torch.manual_seed(7)
        state = models.get_model(name, weights=None).state_dict()
        path = hub_checkpoint_path(models.get_model_weights(name).DEFAULT.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return state

    def put_timm_url(self, name: str) -> dict[str, torch.Tensor]:
        """timm's weights as the torch hub file of its ``pretrained_cfg`` url."""
        import timm

        from advrank.models.pretrained import hub_checkpoint_path

        torch.manual_seed(8)
        net = timm.create_model(name, pretrained=False)
        path = hub_checkpoint_path(net.pretrained_cfg["url"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
        return net.state_dict()

    def put_timm_hf(self, name: str) -> dict[str, torch.Tensor]:
        """timm's weights as its HF hub ``model.safetensors`` in the HF cache layout
        (``models--ORG--NAME/snapshots/REV/`` with ``refs/main`` naming REV)."""
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(9)
        net = timm.create_model(name, pretrained=False)
        repo = self.hf / ("models--" + net.pretrained_cfg["hf_hub_id"].replace("/", "--"))
        rev = "0" * 40
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
        save_file(net.state_dict(), repo / "snapshots" / rev / "model.safetensors")
        config = {"architecture": name, "num_classes": 1000,
                  "pretrained_cfg": {k: v for k, v in net.pretrained_cfg.items()
                                     if k in ("input_size", "mean", "std", "crop_pct",
                                              "interpolation", "classifier")}}
        (repo / "snapshots" / rev / "config.json").write_text(json.dumps(config))
        return net.state_dict()


@pytest.fixture
def offline_caches(tmp_path, monkeypatch) -> OfflineCaches:
    """Empty torch hub and HF caches under ``tmp_path``, no network (hermetic)."""
    import socket

    import huggingface_hub.constants

    caches = OfflineCaches(tmp_path / "caches")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(caches.torch_hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(caches.hf))
    # the hub client retries a refused connection for ~20 s; its offline mode fails at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return caches
