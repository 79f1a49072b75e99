"""benchmarks/bench_scale.py runs on a CPU with small sizes and writes its JSON."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


def test_bench_scale_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--sizes", "300,1200", "--dim", "32",
         "--batch", "8", "--num-attacks", "12", "--steps", "2", "--precisions", "fp32,bf16",
         "--threads", "1", "--in-process", "--memory-budget", "auto", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "model-only limit fp32" in run.stdout and "model-only limit bf16" in run.stdout
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["hardware"] and record["commit"]
    assert set(record["limits"]) == {"fp32", "bf16"}
    rows = record["rows"]
    assert len(rows) == 2 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    assert {(r["attack"], r["gallery"], r["precision"]) for r in rows} == {
        (a, n, p) for a in ("CA+", "QA+") for n in (300, 1200) for p in ("fp32", "bf16")}
    for r in rows:
        assert r["attacks_per_s"] > 0 and r["num_attacks"] == 12 and r["peak_extra_bytes"] >= 0
    assert record["targets"] == []  # no 1M / 10k / 10M rows here to decide them
