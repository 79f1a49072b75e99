"""mypy over src/advrank at the level pyproject.toml's [tool.mypy] states (mypy's default checks
of annotated code, Optional not narrowed): the types that cross layers (ModelMeta,
SearchTarget, LinfThreatModel, TargetSpec, Loader...) are checked wherever they travel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_mypy_finds_no_error_in_the_package():
    pytest.importorskip("mypy")
    # mypy's incremental cache (.mypy_cache, git-ignored) makes a rerun take seconds; the
    # first run analyses torch's annotations too (about 35 s of one core)
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(ROOT / "pyproject.toml"), str(ROOT / "src" / "advrank")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success" in done.stdout
