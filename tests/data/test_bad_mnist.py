"""A corpus of damaged MNIST files: each is refused by ``advrank evaluate`` with one
``advrank: error:`` line and exit status 2, never a traceback or a silently different result.

A tiny valid MNIST test split (40 images) is written into a temporary data root; each case
damages one of its two files (or swaps, truncates, compresses them) and runs the CLI on an
untrained MNIST checkpoint. A control run on the undamaged files must succeed.
"""

from __future__ import annotations

import gzip
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
N = 40


def _idx(magic: int, shape: tuple[int, ...], data: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in shape)
    return header + data


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
    labels = np.arange(N, dtype=np.uint8) % 10
    return {IMAGES: _idx(2051, (N, 28, 28), images.tobytes()),
            LABELS: _idx(2049, (N,), labels.tobytes())}


def _replace(name: str, make: Callable[[bytes], bytes]) -> Callable[[dict], dict]:
    return lambda files: {**files, name: make(files[name])}


def _labels(values: list[int]) -> bytes:
    return _idx(2049, (len(values),), bytes(values))


#: case id -> damage applied to the valid {file name: bytes}; a file name ending in ".gz"
#: replaces the plain one, a value of None makes that path a folder
DAMAGE: dict[str, Callable[[dict], dict]] = {
    "images-empty": _replace(IMAGES, lambda b: b""),
    "labels-empty": _replace(LABELS, lambda b: b""),
    "images-header-only": _replace(IMAGES, lambda b: b[:16]),
    "labels-header-only": _replace(LABELS, lambda b: b[:8]),
    "images-short-header": _replace(IMAGES, lambda b: b[:7]),
    "images-truncated": _replace(IMAGES, lambda b: b[:-100]),
    "labels-truncated": _replace(LABELS, lambda b: b[:-1]),
    "images-trailing-bytes": _replace(IMAGES, lambda b: b + b"\0" * 28),
    "images-wrong-magic": _replace(IMAGES, lambda b: (0x0D03).to_bytes(4, "big") + b[4:]),
    "labels-wrong-magic": _replace(LABELS, lambda b: b"\0\0\0\0" + b[4:]),
    "images-random-bytes": _replace(IMAGES, lambda b: random.Random(1).randbytes(len(b))),
    "labels-random-bytes": _replace(LABELS, lambda b: random.Random(2).randbytes(len(b))),
    "swapped-images-and-labels": lambda f: {IMAGES: f[LABELS], LABELS: f[IMAGES]},
    "count-mismatch": _replace(LABELS, lambda b: _labels(list(b[8:-1]))),
    "labels-out-of-range-10": _replace(LABELS, lambda b: _labels([*b[8:-1], 10])),
    "labels-out-of-range-255": _replace(LABELS, lambda b: _labels([255] * N)),
    "images-27x28": _replace(IMAGES, lambda b: _idx(2051, (N, 27, 28), b[16:16 + N * 27 * 28])),
    "images-huge-header": _replace(IMAGES, lambda b: _idx(2051, (2**20, 28, 28), b[16:])),
    "zero-images": lambda f: {IMAGES: _idx(2051, (0, 28, 28), b""), LABELS: _labels([])},
    "one-image": lambda f: {IMAGES: _idx(2051, (1, 28, 28), f[IMAGES][16:16 + 784]),
                            LABELS: _labels([3])},
    "images-header-sizes-overflow": _replace(IMAGES, lambda b: _idx(2051, (2**32 - 1,) * 3,
                                                                    b[16:])),
    "gz-not-gzip": lambda f: {LABELS: f[LABELS], IMAGES + ".gz": f[IMAGES]},
    "gz-truncated": lambda f: {LABELS: f[LABELS], IMAGES + ".gz": gzip.compress(f[IMAGES])[:-9]},
    "gz-of-damaged": lambda f: {IMAGES: f[IMAGES], LABELS + ".gz": gzip.compress(f[LABELS][:-3])},
    "images-a-folder": lambda f: {LABELS: f[LABELS], IMAGES: None},
}


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory, untrained_checkpoint) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("mnist-model") / "mnist.pt",
                                "mnist", 28, 8, 0.1307, 0.3081)


def _write_root(root: Path, files: dict[str, bytes | None]) -> Path:
    raw = root / "MNIST" / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    for name, data in files.items():
        if data is None:
            (raw / name).mkdir()
        else:
            (raw / name).write_bytes(data)
    return raw


def _evaluate(cli, checkpoint: Path, root: Path):
    return cli(["evaluate", "--checkpoint", checkpoint, "--data-root", root, "--device", "cpu",
                "--quiet", "--json"])


def test_corpus_size_and_the_undamaged_control(mnist_checkpoint, cli, tmp_path):
    assert len(DAMAGE) >= 15
    _write_root(tmp_path, _valid_files())
    status, out, err = _evaluate(cli, mnist_checkpoint, tmp_path)
    assert status == 0, err
    assert '"gallery_size": 40' in out
    # the same files gzipped are read too
    _write_root(tmp_path, {f"{k}.gz": gzip.compress(v) for k, v in _valid_files().items()})
    assert _evaluate(cli, mnist_checkpoint, tmp_path)[0] == 0


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_mnist_is_refused_with_one_line(case, mnist_checkpoint, cli, one_error_line,
                                                tmp_path):
    raw = _write_root(tmp_path, DAMAGE[case](_valid_files()))
    line = one_error_line(*_evaluate(cli, mnist_checkpoint, tmp_path))
    assert str(raw) in line or "mnist" in line, line
    assert len(line) < 300 + len(str(raw)), line
