"""Small shared helpers: devices, seeds, atomic file writes, input validation."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrank.errors import AdvrankError


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda[:i]`` to a device; ``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdvrankError(f"device {name!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise AdvrankError(f"unknown device {name!r}; use auto, cpu or cuda") from exc


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that runs are repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_images(images: torch.Tensor, image_shape: tuple[int, ...] | None = None) -> None:
    """Refuse tensors that are not ``[B, C, H, W]`` floats in the [0, 1] pixel space."""
    if not isinstance(images, torch.Tensor):
        raise AdvrankError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise AdvrankError(f"images must have shape [B, C, H, W], got {tuple(images.shape)}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise AdvrankError(
            f"images have shape {tuple(images.shape[1:])} per sample, the model expects "
            f"{tuple(image_shape)}"
        )
    if not images.is_floating_point():
        raise AdvrankError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise AdvrankError(
            f"pixel values must lie in [0, 1] (got min {images.min().item():.4g}, "
            f"max {images.max().item():.4g}); normalisation belongs inside the model"
        )


def file_sha256(path: str | Path, length: int | None = None) -> str:
    """Hex SHA-256 of a file (identifies a checkpoint by content, whatever its path);
    ``length`` truncates the hex digest."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit of the source tree, or ``unknown`` outside a checkout."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware_string(device: torch.device) -> str:
    """A short description of where the computation ran."""
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def run_record(device: torch.device, seed: int) -> dict:
    """What a result records beside its numbers: command, seed, commit, hardware, time."""
    import sys
    import time

    return {"command": "advrank " + " ".join(sys.argv[1:]), "seed": seed,
            "commit": git_commit(), "hardware": hardware_string(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
