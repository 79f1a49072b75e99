"""What the measurement scripts share: their results written with the provenance every number
in results/ carries (the script's own command line, seed, commit, hardware, date)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path


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
