"""Checkpoints that load without executing code: ``torch.load(weights_only=True)`` + metadata.

A checkpoint is a dict ``{"format": "advrank-checkpoint", "format_version": 1, "meta": {...},
"model": state_dict, "optimizer": state_dict | None, "epoch": int}``; ``meta`` records dataset,
arch, metric, loss, epochs, seed, R@1, defense and the advrank version. Loading validates all
of it (metadata schema, finite weights, shapes that fit the declared model and dataset), so a
damaged or foreign file is refused with one line before anything uses it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch

from advrank import __version__
from advrank.core.checks import check_finite, check_path
from advrank.core.io import atomic_write_bytes
from advrank.core.meta import ModelMeta
from advrank.data import check_dataset_name
from advrank.errors import AdvrankError
from advrank.models import MAX_EMBED_DIM, DualEncoder, EmbeddingNet, create_model
from advrank.registry import DATASETS, DISTANCES, MODELS

FORMAT = "advrank-checkpoint"
FORMAT_VERSION = 1
REQUIRED_META = ("dataset", "arch", "metric", "embed_dim", "image_shape", "mean", "std")


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None, epoch: int = 0,
) -> None:
    """Atomically write a checkpoint (a crash mid-write leaves the previous file intact).
    Weights with NaN or Infinity are refused: a broken model never becomes a checkpoint."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            check_finite(tensor, f"weight {name!r}")
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


def _read(path: Path) -> Any:
    if not path.exists():
        raise AdvrankError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise AdvrankError(f"checkpoint {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only: nothing ran, whatever the unpickler tripped on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if first.startswith("Weights only load failed"):  # torch's text advises unsafe loading
            first = "its pickled content is not plain tensors and containers"
        else:  # torch's first sentence, without its advice
            first = f"{type(exc).__name__}: {first.split('. ')[0][:150]}" if first else \
                type(exc).__name__
        raise AdvrankError(
            f"{path} is not a readable advrank checkpoint (corrupt, or not made by advrank; "
            f"nothing in it was executed): {first}"
        ) from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_history(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(row, dict) and all(isinstance(k, str) and _is_number(x)
                                      for k, x in row.items()) for row in v)


#: optional metadata fields (written by the trainer) and what each must be when present
OPTIONAL_META: dict[str, tuple[str, Any]] = {
    "loss": ("a name", lambda v: isinstance(v, str)),
    "defense": ("a name", lambda v: isinstance(v, str)),
    "init": ("a path", lambda v: isinstance(v, str)),
    "weights": ("a hash", lambda v: isinstance(v, str)),
    "pretrained": ("a weights tag", lambda v: isinstance(v, str)),
    "advrank_version": ("a version string", lambda v: isinstance(v, str)),
    "exported_from": ("a path", lambda v: isinstance(v, str)),
    "margin": ("a positive finite number", lambda v: _is_number(v) and v > 0),
    "lr": ("a positive finite number", lambda v: _is_number(v) and v > 0),
    "defense_eps": ("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "recall@1": ("a percentage", lambda v: _is_number(v) and 0 <= v <= 100),
    "text_recall@1": ("a percentage", lambda v: _is_number(v) and 0 <= v <= 100),
    "captions": ("a list of caption templates", lambda v: isinstance(v, list) and all(
        isinstance(t, str) for t in v)),
    "train_seconds": ("a non-negative finite number", lambda v: _is_number(v) and v >= 0),
    "epochs": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "epochs_done": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "seed": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "batch_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "samples_per_class": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "defense_config": ("a mapping", lambda v: isinstance(v, dict)),
    "history": ("a list of {name: finite number} rows", _is_history),
}


def validate_meta(meta: dict[str, Any], where: str) -> None:
    """Refuse metadata that does not describe a model advrank can rebuild (one line)."""
    def bad(field: str, why: str) -> AdvrankError:
        return AdvrankError(f"{where}: metadata field {field!r} {why}")

    if not isinstance(meta, dict):
        raise AdvrankError(f"{where}: the metadata must be a mapping")
    missing = [f for f in REQUIRED_META if meta.get(f) is None]
    if missing:
        raise AdvrankError(f"{where}: metadata lacks {', '.join(map(repr, missing))}")

    for field, registry in (("dataset", DATASETS), ("arch", MODELS), ("metric", DISTANCES)):
        value = meta.get(field)
        if not isinstance(value, str):
            raise bad(field, f"must be a name, got {value!r}")
        base = value.partition(":")[0] if field == "dataset" else value
        if base not in registry:
            raise bad(field, f"names an unknown {registry.kind} {value!r} (a plugin not loaded?)")
    try:
        check_dataset_name(meta["dataset"])
    except AdvrankError as exc:
        raise bad("dataset", f"is not usable: {exc}") from None
    if not _is_int(meta.get("embed_dim")) or not 0 < meta["embed_dim"] <= MAX_EMBED_DIM:
        raise bad("embed_dim", f"must be an integer in [1, {MAX_EMBED_DIM}], got "
                               f"{meta.get('embed_dim')!r}")
    shape = meta.get("image_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
            _is_int(s) and 0 < s <= 4096 for s in shape):
        raise bad("image_shape", f"must be [C, H, W] positive integers, got {shape!r}")
    for field in ("mean", "std"):
        values = meta.get(field)
        if not isinstance(values, (list, tuple)) or len(values) != shape[0] or not all(
                _is_number(v) for v in values):
            raise bad(field, f"must be {shape[0]} finite numbers, got {values!r}")
    if any(v <= 0 for v in meta["std"]):
        raise bad("std", f"must be positive, got {meta['std']!r}")
    declared = DATASETS.entry(meta["dataset"].partition(":")[0]).info.get("image_shape")
    if declared is not None and tuple(declared) != tuple(shape):
        raise bad("image_shape", f"{list(shape)} does not fit dataset {meta['dataset']!r} "
                  f"({list(declared)})")
    for field, (what, ok) in OPTIONAL_META.items():
        if meta.get(field) is not None and not ok(meta[field]):
            raise bad(field, f"must be {what}, got {_short(meta[field])}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_tensor(path: str, name: Any, tensor: Any) -> None:
    """A weight must be a plain (dense, CPU) real tensor; floating ones finite."""
    if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
        raise AdvrankError(f"{path}: the weights must map names to tensors")
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        raise AdvrankError(f"{path}: weight {name!r} is not a dense tensor "
                           f"({tensor.layout}, {tensor.device.type})")
    if tensor.is_complex():
        raise AdvrankError(f"{path}: weight {name!r} is complex ({tensor.dtype})")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise AdvrankError(f"{path}: weight {name!r} contains NaN or Infinity; the model "
                           "is broken (diverged training?)")


def validate_payload(payload: Any, where: str) -> dict[str, Any]:
    """Refuse a loaded checkpoint that is not a complete, sound advrank checkpoint: marker,
    format version, metadata schema, plain finite tensors (one readable line)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdvrankError(f"{where} is not an advrank checkpoint (no '{FORMAT}' marker)")
    version = payload.get("format_version", 0)
    if not _is_int(version) or version < 1:
        raise AdvrankError(f"{where} has an invalid checkpoint format version {_short(version)}")
    if version > FORMAT_VERSION:
        raise AdvrankError(
            f"{where} has checkpoint format {version}, newer than this advrank ({__version__}) "
            "reads; upgrade advrank"
        )
    for key in ("meta", "model"):
        if not isinstance(payload.get(key), dict):
            raise AdvrankError(f"{where} is an incomplete advrank checkpoint (no {key!r})")
    if not _is_int(payload.get("epoch", 0)) or payload.get("epoch", 0) < 0:
        raise AdvrankError(f"{where}: 'epoch' must be a non-negative integer")
    if payload.get("optimizer") is not None and not isinstance(payload["optimizer"], dict):
        raise AdvrankError(f"{where}: 'optimizer' must be an optimizer state or None")
    validate_meta(payload["meta"], where)
    for name, tensor in payload["model"].items():
        _check_tensor(where, name, tensor)
    return payload


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; corrupt or foreign files raise one readable AdvrankError."""
    return validate_payload(_read(check_path(path, "checkpoint")), str(path))


def export_checkpoint(src: str | Path, dst: str | Path) -> ModelMeta:
    """Write a weights-only copy of ``src`` to ``dst`` (no optimiser state: about a third of
    the size for Adam), for sharing or for attacking; ``--resume`` from it restarts Adam.

    Returns the copy's metadata. The source is validated fully first (its weights must build
    the model it declares), so an export is always a checkpoint every command accepts.
    """
    payload = load_checkpoint(src)
    model_from_checkpoint(payload, source=str(src))
    if Path(dst).exists() and Path(src).resolve() == Path(dst).resolve():
        raise AdvrankError("export needs a different output path than its input")
    payload["optimizer"] = None
    payload["meta"] = {**payload["meta"], "exported_from": str(src)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(dst, buf.getvalue())
    return ModelMeta.from_dict(payload["meta"])


def _shapes(meta: dict[str, Any]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of every tensor of the model ``meta`` declares, built on the meta device
    (no memory): weights that do not fit are refused before anything is allocated."""
    try:
        with torch.device("meta"):
            model = create_model(meta["arch"], meta["image_shape"], meta["embed_dim"],
                                 meta["mean"], meta["std"])
    except (NotImplementedError, RuntimeError):  # a plugin model that cannot live on "meta"
        model = create_model(meta["arch"], meta["image_shape"], meta["embed_dim"],
                             meta["mean"], meta["std"])
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def _fit_problems(meta: dict[str, Any], weights: dict[str, torch.Tensor]) -> list[str]:
    own = _shapes(meta)
    problems = ([f"missing {k}" for k in own if k not in weights]
                + [f"unexpected {k}" for k in weights if k not in own])
    for k, (shape, dtype) in own.items():
        if k not in weights:
            continue
        if weights[k].shape != shape:
            problems.append(f"{k} is {list(weights[k].shape)}, expected {list(shape)}")
        elif weights[k].is_floating_point() != dtype.is_floating_point:
            problems.append(f"{k} has dtype {weights[k].dtype}, expected {dtype}")
    for k in ("mean", "std"):  # the normalisation buffers are the metadata's, or damaged
        buffer = weights.get(f"normalize.{k}", weights.get(f"image.normalize.{k}"))
        if not problems and buffer is not None and not torch.allclose(
                buffer.flatten().double(), torch.tensor(meta[k], dtype=torch.float64),
                rtol=1e-5, atol=1e-6):
            problems.append(f"normalize.{k} is {buffer.flatten().tolist()}, the metadata says "
                            f"{meta[k]}")
    return problems


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | Path, device: torch.device | str = "cpu", source: str = ""
) -> tuple[EmbeddingNet | DualEncoder, ModelMeta]:
    """Rebuild the model a checkpoint describes, load its weights, put it in eval mode;
    returns it with its metadata, read once here (:class:`~advrank.core.meta.ModelMeta`).

    ``ckpt``: a path, or a payload as :func:`load_checkpoint` returns it (validated here too).
    """
    if isinstance(ckpt, dict):
        where = source or "checkpoint"
        validate_payload(ckpt, where)
    else:
        where = source or str(ckpt)
        ckpt = load_checkpoint(ckpt)
    meta, weights = ckpt["meta"], ckpt["model"]
    problems = _fit_problems(meta, weights)
    if problems:
        raise AdvrankError(f"{where}: weights do not fit a {meta['arch']} model for "
                           f"{meta['image_shape']} images with embed_dim {meta['embed_dim']}: "
                           + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))
    model = create_model(meta["arch"], meta["image_shape"], meta["embed_dim"], meta["mean"],
                         meta["std"])
    model.load_state_dict(weights)
    from advrank.core.runtime import resolve_device

    return model.to(resolve_device(device)).eval(), ModelMeta.from_dict(meta)
