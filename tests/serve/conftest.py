"""What the service tests share: a tiny digits checkpoint and ``advrank serve`` started as a
user runs it (a subprocess on loopback, a free port, stopped with SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest


@pytest.fixture(scope="session")
def digits_ckpt(trained_digits):
    return trained_digits(16)


def _ready_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of ``proc`` (read in a thread so a hung start fails the test)."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert found and found[0].startswith("serving on http://127.0.0.1:"), \
        (found, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
    return found[0].strip()


@contextlib.contextmanager
def running_service(ckpt, *options: str, quiet: bool = True):
    """``(base URL, process)`` of ``advrank serve --checkpoint CKPT --port 0 OPTIONS`` once it
    answers /health (``--quiet`` unless ``quiet`` is False); stopped (SIGTERM, then killed)
    on exit."""
    import httpx

    argv = [sys.executable, "-m", "advrank", "serve", "--checkpoint", str(ckpt), "--port", "0",
            *(["--quiet"] if quiet else []), "--device", "cpu", *options]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = _ready_line(proc, 60).removeprefix("serving on ")
        deadline = time.time() + 20
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline, "the service never answered /health"
                time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def digits_target(digits_ckpt):
    """The tiny digits checkpoint loaded as a Target (its 719-picture gallery embedded)."""
    from advrank.experiments.target import load_target

    return load_target(str(digits_ckpt), "cpu", progress=False)


def png_bytes(seed: int = 0, size=(8, 8), mode: str = "L", fmt: str = "PNG") -> bytes:
    """A random picture file (seeded)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


@contextlib.contextmanager
def app_client(target, index: str = "exact", log=None, scores: bool = False,
               token: str | None = None, pipeline: str | None = None, **limits):
    """A TestClient of :func:`create_app` on ``target`` (lifespan run: the engine started)."""
    from fastapi.testclient import TestClient

    from advrank.core.index import build_index
    from advrank.serve import Limits, create_app

    built = build_index(target.gallery.embeddings, target.meta.metric, index)
    app = create_app(target, built, scores, Limits(**limits), log, token, pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def make_client():
    """:func:`app_client` (a context manager factory)."""
    return app_client


@pytest.fixture(scope="session")
def png():
    """:func:`png_bytes`."""
    return png_bytes
