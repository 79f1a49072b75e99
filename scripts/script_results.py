"""What the measurement scripts share: their results written with the provenance every number
in results/ carries (the script's own command line, seed, commit, hardware, date)."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ADVRANK = [sys.executable, "-m", "advrank"]


def publish(args, table: str, **fields) -> dict:
    """Write ``args.out``/results.json (the run record, ``args`` as ``settings`` and
    ``fields``) and results.md (``table``), print ``table``, and return the JSON's dict."""
    from advrank.core.runtime import resolve_device, run_record

    record = run_record(resolve_device(args.device), args.seed)
    record["command"] = "python " + shlex.join(sys.argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {**record, "settings": vars(args), **fields}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(table)
    print(table)
    return result


@contextlib.contextmanager
def serving(checkpoint: str, device: str, concurrency: int, options=(), index: str = "exact"):
    """The URL of ``advrank serve --checkpoint CHECKPOINT`` on a free loopback port, answering
    every depth (``--max-k`` = |X|: full feedback needs the whole list) and ``concurrency``
    searches in flight; stopped on exit."""
    argv = [*ADVRANK, "serve", "--checkpoint", checkpoint, "--host", "127.0.0.1", "--port",
            "0", "--max-k", "100000", "--index", index, "--device", device,
            "--max-concurrency", str(concurrency), "--quiet", *options]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("serving on "):
            raise SystemExit(f"advrank serve did not start: {line!r}")
        yield line.removeprefix("serving on ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
