"""Loading pretrained weights from a file, safely: a ``.safetensors`` file or a PyTorch
``state_dict`` read with ``weights_only=True`` (nothing in the file is executed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.errors import AdvrankError

#: Keys a state dict is commonly nested under (Lightning, timm training scripts, advrank).
_NESTING = ("state_dict", "model", "model_state_dict", "net")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``path``; refuses anything else with one readable line."""
    path = Path(path)
    if not path.is_file():
        raise AdvrankError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only / safetensors: nothing ran, whatever failed
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AdvrankError(f"{path} is not a readable weights file (a state_dict .pt/.pth or "
                           f".safetensors; nothing in it was executed): {first}") from None
    for key in _NESTING:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise AdvrankError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdvrankError(f"{path}: tensor {name!r} contains NaN or Infinity")
    return state


def load_matching_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                          min_fraction: float = 0.5, log=None) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape match ``module``'s; returns the names
    of the module's tensors left as they were (e.g. a new embedding head).

    Refuses weights that fit less than ``min_fraction`` of the module's tensors: that is
    another architecture, not a pretrained version of this one. A ``module.`` prefix (from
    DataParallel) is stripped.
    """
    own = module.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if len(matched) < min_fraction * len(own):
        mismatched = [k for k in state if k in own and k not in matched][:3]
        detail = (f"; shapes differ for {', '.join(mismatched)}" if mismatched else
                  f"; e.g. the file has {', '.join(list(state)[:3])}")
        raise AdvrankError(f"weights in {source} do not fit this architecture: {len(matched)} "
                           f"of its {len(own)} tensors match by name and shape{detail}")
    module.load_state_dict(matched, strict=False)
    left = [k for k in own if k not in matched]
    if left and log is not None:
        log(f"{source}: loaded {len(matched)} tensors; kept at initialisation: "
            f"{', '.join(left[:6])}{' ...' if len(left) > 6 else ''}")
    return left


def load_pretrained(module: nn.Module, path: str | Path, quiet: bool = False) -> list[str]:
    """:func:`read_state_dict` then :func:`load_matching_weights` into ``module``."""
    log = None if quiet else (lambda msg: print(f"advrank: {msg}", file=sys.stderr))
    return load_matching_weights(module, read_state_dict(path), str(path), log=log)


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (every parameter and buffer: name, dtype, shape, bytes):
    what identifies the weights an embedding was computed with, whatever file they came from."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
