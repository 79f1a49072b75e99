"""Where and how a run happens: the device, the seeds, and what a result records about it."""

from __future__ import annotations

import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from advrank.errors import AdvrankError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda[:i]`` (or a torch.device) to a device; ``auto`` picks CUDA when
    available. Used by the library and the CLI alike."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise AdvrankError(f"device must be a string such as 'auto', 'cpu' or 'cuda', got "
                           f"{type(name).__name__}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and _distributed_rank_gpu() is not None:
        return _distributed_rank_gpu()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvrankError(f"device {name!r} requested but CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AdvrankError(f"unknown device {name!r}; use auto, cpu or cuda[:i]") from None
    if device.type not in ("cpu", "cuda"):
        raise AdvrankError(f"unsupported device {name!r}; use auto, cpu or cuda[:i]")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise AdvrankError(f"device {name!r} does not exist: this machine has "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def _distributed_rank_gpu() -> torch.device | None:
    """Under torchrun with nccl, "cuda" means this process's GPU (``cuda:LOCAL_RANK``)."""
    from advrank.core import distributed

    if distributed.active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", distributed.local_rank())
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that runs are repeatable. Any non-negative integer is
    a seed (torch takes 64 bits and NumPy 32: larger ones are reduced modulo those)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**64)


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one named piece of a run (a grid column, an attack), stable across runs and
    Python processes (no ``hash()``: it is salted per process)."""
    import zlib

    key = "|".join(str(p) for p in parts).encode()
    return (int(seed) * 1_000_003 + zlib.crc32(key)) % 2**31


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit of the source tree, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware_string(device: torch.device) -> str:
    """A short description of where the computation ran."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "",
                 enabled: bool | None = None, unit: str = "it"):
    """A tqdm bar on stderr. ``enabled=None`` (the library's default) shows it only when stderr
    is a terminal; the CLI passes True, or False for ``--quiet``."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, unit=unit,
                disable=None if enabled is None else not enabled, dynamic_ncols=True)


#: the arguments of the running ``advrank`` command (set by ``advrank.cli.main``, which may be
#: called with its own list, e.g. from tests), else those of the process
_command: list[str] | None = None


def set_command(argv: list[str] | None) -> None:
    global _command
    _command = None if argv is None else list(argv)


def run_record(device: torch.device, seed: int) -> dict:
    """What a result records beside its numbers: command, seed, commit, hardware, time."""
    import shlex

    from advrank.core import distributed

    argv = sys.argv[1:] if _command is None else _command
    record = {"command": "advrank " + shlex.join(argv), "seed": seed,
              "commit": git_commit(), "hardware": hardware_string(device),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if distributed.world_size() > 1:
        record["processes"] = distributed.world_size()
    return record
