"""README's measured figures (how long the demo, the install and the test suite take, how many
tests there are), each measured by a command of this script and written with its date,
commit, machine and command to ``results/readme-figures.json``; README quotes them through
:data:`PHRASES`, and tests/test_readme.py fails when README differs from the file.

    python scripts/readme_figures.py demo      # advrank demo in a scratch folder, timed
    python scripts/readme_figures.py install   # README's set-up in a fresh venv, timed
    python scripts/readme_figures.py tests     # how many tests (pytest --collect-only)
    python scripts/readme_figures.py suite     # python -m pytest -q (the whole suite), timed
    python scripts/readme_figures.py show      # the phrases README must hold

Each command replaces its own figures in the file and keeps the others (each figure keeps the
provenance of the run that measured it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "results" / "readme-figures.json"
#: how README says each figure (``{...}`` from the figure's record)
PHRASES = {
    "demo": "the demo took {duration}",
    "install": "a fresh virtual environment installed in {duration}",
    "tests": "{collected:,} tests",
    "suite": "the whole suite took {duration}",
}
#: README's set-up command (the second of its two commands), as .ci/run runs it
INSTALL = 'pip install -e ".[test]"'


def duration(seconds: float) -> str:
    """``48 s``, ``1 min 36 s``, ``9 min 51 s``, ``1 h 5 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def phrases(figures: dict) -> dict[str, str]:
    """README's sentence fragment for each figure of the file."""
    return {name: PHRASES[name].format(**record) for name, record in figures.items()
            if name in PHRASES}


def machine() -> str:
    cores = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        mem = float("nan")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()}, {cores} cores, {mem:.0f} GiB, Python "
            f"{platform.python_version()}, load average {load} at the start")


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                         capture_output=True)
    return out.stdout.strip() or "unknown"


def timed(command: str, cwd: Path, env: dict | None = None) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, shell=True, text=True, capture_output=True,
                          env={**os.environ, **(env or {})})
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds, done.stdout + done.stderr


def measure_demo() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        seconds, _ = timed(f"{sys.executable} -m advrank demo --quiet", Path(scratch))
    return {"seconds": seconds, "duration": duration(seconds),
            "command": "advrank demo (in an empty folder, same venv)"}


def measure_install() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        venv = Path(scratch) / ".venv"
        command = f"{sys.executable} -m venv {venv} && . {venv}/bin/activate && {INSTALL}"
        seconds, _ = timed(command, REPO, {"PIP_NO_CACHE_DIR": "1"})
    return {"seconds": seconds, "duration": duration(seconds),
            "command": f"python -m venv .venv && . .venv/bin/activate && {INSTALL} "
                       "(no pip cache)"}


def measure_suite() -> dict:
    seconds, out = timed(f"{sys.executable} -m pytest -q -p no:cacheprovider", REPO)
    last = [line for line in out.splitlines() if re.search(r"\d+ passed", line)][-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed)", last)}
    return {"seconds": seconds, "duration": duration(seconds),
            "passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0),
            "summary": last.strip("= "), "command": "python -m pytest -q"}


def count_tests() -> dict:
    _, out = timed(f"{sys.executable} -m pytest -q --collect-only -p no:cacheprovider", REPO)
    collected = int(re.findall(r"(\d+) tests? collected", out)[-1])
    return {"collected": collected, "command": "python -m pytest -q --collect-only"}


def record(name: str, figure: dict, path: Path = FIGURES) -> dict:
    """Write ``figure`` (with its date, commit and machine) under ``name`` into the file."""
    data = json.loads(path.read_text()) if path.is_file() else {"figures": {}}
    data["figures"][name] = {**figure, "date": time.strftime("%Y-%m-%d"), "commit": commit(),
                             "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["demo", "install", "tests", "suite", "show"])
    args = p.parse_args(argv)
    if args.what == "show":
        figures = json.loads(FIGURES.read_text())["figures"]
        for name, text in phrases(figures).items():
            print(f"{name}: {text}")
        return 0
    figure = {"demo": measure_demo, "install": measure_install, "tests": count_tests,
              "suite": measure_suite}[args.what]()
    data = record(args.what, figure)
    print(phrases(data["figures"])[args.what])
    return 0


if __name__ == "__main__":
    sys.exit(main())
