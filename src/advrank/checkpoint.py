"""Checkpoints that load without executing code: ``torch.load(weights_only=True)`` + metadata.

A checkpoint is a dict ``{"format": "advrank-checkpoint", "format_version": 1, "meta": {...},
"model": state_dict, "optimizer": state_dict | None, "epoch": int}``; ``meta`` records dataset,
arch, metric, loss, epochs, seed, R@1, defense and the advrank version.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from advrank import __version__
from advrank.errors import AdvrankError
from advrank.models import EmbeddingNet, create_model
from advrank.utils import atomic_write_bytes

FORMAT = "advrank-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0,
) -> None:
    """Atomically write a checkpoint (a crash mid-write leaves the previous file intact)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": {**meta, "advrank_version": __version__},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; corrupt or foreign files raise one readable AdvrankError."""
    path = Path(path)
    if not path.is_file():
        raise AdvrankError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only: nothing ran, whatever the unpickler tripped on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if first.startswith("Weights only load failed"):  # torch's text advises unsafe loading
            first = "its pickled content is not plain tensors and containers"
        else:
            first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise AdvrankError(
            f"{path} is not a readable advrank checkpoint (corrupt, or not made by advrank; "
            f"nothing in it was executed): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdvrankError(f"{path} is not an advrank checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise AdvrankError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this advrank "
            f"({__version__}) reads; upgrade advrank"
        )
    for key in ("meta", "model"):
        if not isinstance(payload.get(key), dict):
            raise AdvrankError(f"{path} is an incomplete advrank checkpoint (no {key!r})")
    return payload


def export_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write a weights-only copy of ``src`` to ``dst`` (no optimiser state: about a third of
    the size for Adam), for sharing or for attacking; ``--resume`` from it restarts Adam.

    Returns the copy's metadata. The source is validated like any checkpoint first.
    """
    payload = load_checkpoint(src)
    if Path(src).resolve() == Path(dst).resolve():
        raise AdvrankError("export needs a different output path than its input")
    payload["optimizer"] = None
    payload["meta"] = {**payload["meta"], "exported_from": str(src)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(dst, buf.getvalue())
    return payload["meta"]


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | Path, device: torch.device | str = "cpu"
) -> tuple[EmbeddingNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    meta = ckpt["meta"]
    try:
        model = create_model(
            meta["arch"], meta["image_shape"], meta["embed_dim"], meta["mean"], meta["std"]
        )
    except KeyError as exc:
        raise AdvrankError(f"checkpoint metadata lacks {exc}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise AdvrankError(
            f"checkpoint weights do not fit a {meta['arch']} model: {str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
