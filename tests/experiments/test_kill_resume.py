"""Long jobs survive SIGKILL and refuse a second writer.

* ``train``, ``grid``, ``curves`` and ``transfer-matrix`` run as real processes
  (``python -m advrank``) on digits with tiny settings, are killed with SIGKILL at random
  points (seeded: after a random number of finished steps plus a random delay) and rerun
  with the same command: the results equal those of an uninterrupted run, and the rerun
  continued where the killed run stopped.
* Two writers to one output at once: while one run holds the output (stopped with SIGSTOP
  inside its run, so the timing is certain), a second identical command is refused with one
  ``advrank: error:`` line and changes nothing; the first then finishes with every result.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from advrank.core.io import exclusive
from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: same arithmetic in every process
KILLS = 2  # random SIGKILLs per job before the final rerun


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two small untrained digits models (attacks on them are as meaningful to resume)."""
    root = tmp_path_factory.mktemp("kill-models")
    out = {}
    for name, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        out[name] = root / f"{name}.pt"
        save_checkpoint(out[name], create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]),
                        {"dataset": "digits", "arch": "c2f1", "metric": "cosine",
                         "embed_dim": 8, "image_shape": [1, 8, 8], "mean": [0.3],
                         "std": [0.38]})
    return out


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advrank", *map(str, argv)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "advrank", *map(str, argv)], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def cells_done(path: Path) -> int:
    """Finished cells in a store file (written atomically: never seen half-written)."""
    try:
        return len(json.loads(path.read_text())["cells"])
    except (OSError, ValueError, KeyError):
        return 0


def epochs_done(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not there yet (atomic replace: never half-written)
        return 0


def run_with_kills(argv: list[str], progress: Callable[[], int], total: int,
                   rng: random.Random, reset: Callable[[], None]) -> list[int]:
    """Start ``argv`` and SIGKILL it at a random point, until ``KILLS`` kills have landed
    mid-run; returns the progress each left behind. Each kill waits for a random number of
    finished steps (at least one, leaving at least two) and then a random delay, so it lands
    between two steps or in the middle of one. A run that finished before its kill (a fast
    machine) does not count: its output is removed and the next one starts over."""
    left: list[int] = []
    for _ in range(6 * KILLS):
        if len(left) == KILLS:
            break
        wait_for = rng.randint(min(max(1, progress()), total - 2), total - 2)
        proc = start(argv)
        deadline = time.time() + 300
        while proc.poll() is None and progress() < wait_for and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.04))  # well under one cell (>= 0.1 s here)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if progress() >= total:
            reset()
            left.clear()
        else:
            left.append(progress())
    assert len(left) == KILLS, left
    return left


def without_timings(obj):
    """Results minus what legitimately differs between runs (seconds, dates, commands)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items()
                if k not in ("seconds", "train_seconds", "date", "command")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def compare_stores(killed: Path, reference: Path) -> None:
    a, b = json.loads(killed.read_text()), json.loads(reference.read_text())
    assert without_timings(a["cells"]) == without_timings(b["cells"])
    assert a["cells"].keys() == b["cells"].keys()


STORE_JOBS = {  # (command line, result file, number of cells)
    "grid": (lambda ck, out: ["grid", "--checkpoint", ck["A"], "--out", out, "--attacks",
                              "CA+,QA-", "--ks", "1", "--eps-values", "0.01,0.03,0.1",
                              "--num-attacks", "60", "--batch-size", "7", "--device", "cpu",
                              "--paper", "none"],
             "results.json", 6),
    "curves": (lambda ck, out: ["curves", "--checkpoint", ck["A"], "--checkpoint", ck["B"],
                                "--out", out, "--eps-values", "0.01", "0.03",
                                "--num-attacks", "16", "--device", "cpu"],
               "curves.json", 4),
    "transfer-matrix": (lambda ck, out: ["transfer-matrix", "--checkpoint", f"a={ck['A']}",
                                         "--checkpoint", f"b={ck['B']}", "--out", out,
                                         "--attacks", "CA+,QA+", "--eps", "0.1", "--steps", "80",
                                         "--num-attacks", "40", "--device", "cpu"],
                        "transfer.json", 4),
}


@pytest.mark.parametrize("job", sorted(STORE_JOBS))
def test_killed_job_resumes_to_identical_results(job, checkpoints, tmp_path):
    make_argv, filename, total = STORE_JOBS[job]
    rng = random.Random(f"kill-{job}")
    finish(make_argv(checkpoints, tmp_path / "reference"))
    reference = tmp_path / "reference" / filename
    assert cells_done(reference) == total

    killed = tmp_path / "killed" / filename
    left = run_with_kills(make_argv(checkpoints, tmp_path / "killed"),
                          lambda: cells_done(killed), total, rng,
                          reset=lambda: shutil.rmtree(tmp_path / "killed"))
    assert all(0 < n < total for n in left), left  # every kill landed mid-run
    before = cells_done(killed)
    final = finish(make_argv(checkpoints, tmp_path / "killed"))
    compare_stores(killed, reference)
    if job == "grid" and before:  # the rerun skipped what the killed runs had finished
        assert f"({before} already done)" in final.stderr


def test_killed_training_resumes_to_identical_weights(tmp_path):
    epochs = 4
    argv = ["train", "--dataset", "digits", "--arch", "c2f1", "--embed-dim", "8", "--epochs",
            str(epochs), "--batch-size", "64", "--device", "cpu"]
    finish([*argv, "--out", tmp_path / "reference.pt"])
    out = tmp_path / "killed.pt"
    left = run_with_kills([*argv, "--out", out], lambda: epochs_done(out), epochs,
                          random.Random("kill-train"), reset=out.unlink)
    assert all(0 < n < epochs for n in left), left
    before = epochs_done(out)
    final = finish([*argv, "--out", out])
    # the rerun continued after the last finished epoch instead of starting again
    assert f"epoch {before + 1}/{epochs}:" in final.stderr
    assert f"epoch {before}/{epochs}:" not in final.stderr
    ref = torch.load(tmp_path / "reference.pt", weights_only=True)
    got = torch.load(out, weights_only=True)
    assert got["epoch"] == ref["epoch"] == epochs
    assert got["model"].keys() == ref["model"].keys()
    for name, tensor in ref["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    assert without_timings(got["meta"]["history"]) == without_timings(ref["meta"]["history"])


# ------------------------------------------------------------------- two writers at once


def wait_for_lock(proc: subprocess.Popen, lock: Path) -> None:
    """Until ``proc`` holds ``lock`` (the lock file then holds its pid)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"{lock} was never taken: {proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("job", ["grid", "train"])
def test_second_writer_is_refused_and_nothing_is_lost(job, checkpoints, tmp_path):
    if job == "grid":
        out = tmp_path / "grid"
        argv = STORE_JOBS["grid"][0](checkpoints, out)
        lock, result = out / ".advrank.lock", out / "results.json"
    else:
        out = tmp_path / "model.pt"
        argv = ["train", "--dataset", "digits", "--arch", "c2f1", "--embed-dim", "8",
                "--epochs", "2", "--device", "cpu", "--out", out]
        lock, result = tmp_path / ".model.pt.lock", out
    first = start(argv)
    wait_for_lock(first, lock)
    os.kill(first.pid, signal.SIGSTOP)  # the first writer holds the output, mid-run
    try:
        snapshot = result.read_bytes() if result.exists() else None
        second = subprocess.run([sys.executable, "-m", "advrank", *map(str, argv), "--quiet"],
                                env=ENV, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2 and second.stdout == ""
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("advrank: error: "), second.stderr
        assert "being written by another advrank process" in lines[0]
        assert (result.read_bytes() if result.exists() else None) == snapshot
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    if job == "grid":
        assert cells_done(result) == STORE_JOBS["grid"][2]
    else:
        assert epochs_done(result) == 2
    finish(argv)  # the same command afterwards: nothing left to do, nothing changed


@pytest.mark.parametrize("job", ["curves", "transfer-matrix", "grid"])
def test_folder_held_by_another_writer_is_refused(job, checkpoints, tmp_path, cli,
                                                  one_error_line, monkeypatch):
    """The lock of curves, transfer-matrix and grid folders (held here by this process);
    ``grid`` is refused before its target is loaded and the gallery embedded (minutes on a
    large collection), not after."""
    import advrank.cli.attack as attack_cli

    def never(*args, **kwargs):
        raise AssertionError("the target was loaded although the folder is held")

    if job == "grid":
        monkeypatch.setattr(attack_cli, "load_target_from_args", never)
    make_argv, filename, _ = STORE_JOBS[job]
    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out / ".advrank.lock", "test"):
        line = one_error_line(*cli([*make_argv(checkpoints, out), "--quiet"]))
    assert "being written by another advrank process" in line
    assert not (out / filename).exists()

