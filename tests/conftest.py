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
