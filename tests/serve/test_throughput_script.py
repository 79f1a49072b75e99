"""scripts/serve_throughput.py at a tiny size: both services start, every cell is measured
and the results carry their ratios, targets and the run's record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("httpx")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "serve_throughput.py"


def test_the_throughput_script_compares_both_services(digits_ckpt, tmp_path):
    out = tmp_path / "throughput"
    done = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(digits_ckpt),
                           "--indexes", "flat", "--clients", "1,3", "--requests", "12",
                           "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [(c["index"], c["clients"]) for c in result["cells"]] == [("flat", 1), ("flat", 3)]
    for cell in result["cells"]:
        assert cell["advrank_qps"] > 0 and cell["minimal_qps"] > 0 and cell["ratio"] > 0
        assert cell["ratio_target"] in (0.8, 1.0) and cell["rank_of_target"] == 1.5
    assert result["gallery_size"] == 719 and "commit" in result and "command" in result
    assert "| flat | 3 |" in (out / "results.md").read_text()
