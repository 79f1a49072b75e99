"""Shared test fixtures. The tests run on CPU in well under a minute (tiny models, `digits`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from advrank.data import default_data_root

REPO = Path(__file__).resolve().parents[1]

# The tests use tiny models, for which intra-op threads cost more than they bring; on a small
# machine shared with another job, oversubscribed threads make them ~10x slower.
torch.set_num_threads(1)


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
