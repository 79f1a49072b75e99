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
def running_service(ckpt, *options: str):
    """``(base URL, process)`` of ``advrank serve --checkpoint CKPT --port 0 OPTIONS`` once it
    answers /health; stopped (SIGTERM, then killed) on exit."""
    import httpx

    argv = [sys.executable, "-m", "advrank", "serve", "--checkpoint", str(ckpt), "--port", "0",
            "--quiet", "--device", "cpu", *options]
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
def serve():
    """:func:`running_service` (a context manager factory)."""
    return running_service
