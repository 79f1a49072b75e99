"""Checks that turn bad input and bad numbers into one readable :class:`AdvrankError`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrank.errors import AdvrankError


def check_images(images: torch.Tensor, image_shape: tuple[int, ...] | None = None) -> None:
    """Refuse tensors that are not finite ``[B, C, H, W]`` floats in the [0, 1] pixel space."""
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
    if images.numel() and not torch.isfinite(images).all():
        raise AdvrankError("images contain NaN or Infinity")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise AdvrankError(
            f"pixel values must lie in [0, 1] (got min {images.min().item():.4g}, "
            f"max {images.max().item():.4g}); normalisation belongs inside the model"
        )


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse NaN/Infinity in a tensor that is about to become a result or a weight."""
    if tensor.numel() and not torch.isfinite(tensor).all():
        raise AdvrankError(f"NaN or Infinity in {what} (a broken model or hyper-parameter); "
                           "nothing was written")
    return tensor


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False,
                 integer: bool = False) -> float | int:
    """One validator for numeric options: type, finiteness and range, with a readable error.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. Returns the value as int
    (``integer=True``) or float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        kind = "an integer" if integer else "a number"
        raise AdvrankError(f"{name} must be {kind}, got {_show(value)}")
    exact = isinstance(value, (int, np.integer))  # no float(): 10**400 is an int, not inf
    if not exact and not math.isfinite(value):
        raise AdvrankError(f"{name} must be finite, got {_show(value)}")
    if integer and not exact and not float(value).is_integer():
        raise AdvrankError(f"{name} must be an integer, got {_show(value)}")
    if low is not None and (value < low or (low_open and value == low)):
        raise AdvrankError(f"{name} must be {'>' if low_open else '>='} {low:g}, got "
                           f"{_show(value)}")
    if high is not None and (value > high or (high_open and value == high)):
        raise AdvrankError(f"{name} must be {'<' if high_open else '<='} {high:g}, got "
                           f"{_show(value)}")
    if integer:
        return int(value)
    if exact and abs(float(value)) > 2**1023:  # would overflow a float
        raise AdvrankError(f"{name} must be a finite number, got {_show(value)}")
    return float(value)


def format_eps(eps: float) -> str:
    """eps for logs and text: ``0.3`` when short, else ``2/255`` where eps is (to float
    precision) a multiple of 1/255, the way users write pixel budgets, else ``:g``."""
    short = f"{float(eps):g}"
    grey = round(float(eps) * 255)
    if len(short) <= 5 or grey == 0 or abs(float(eps) - grey / 255) > 1e-12:
        return short
    return f"{grey}/255"


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise AdvrankError(f"{name} must be one of {', '.join(map(str, choices))}, got "
                           f"{_show(value)}")
    return value


# One validator per kind of option, shared by every library entry point (the CLI's argparse
# types parse the text; these check the values, whoever passes them).

MAX_SEED = 2**63 - 1


def check_int(value: Any, name: str, low: int = 1, high: int = 10**9) -> int:
    """An integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AdvrankError(f"{name} must be an integer, got {_show(value)}")
    return int(check_number(int(value), name, low=low, high=high, integer=True))


def check_seed(seed: Any) -> int:
    """A random seed: an integer in [0, 2**63 - 1]."""
    return check_int(seed, "seed", low=0, high=MAX_SEED)


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise AdvrankError(f"{name} must be True or False, got {_show(value)}")
    return value


def check_progress(value: Any) -> bool | None:
    """A progress setting: True (show), False (never) or None (only on a terminal)."""
    if value is not None and not isinstance(value, bool):
        raise AdvrankError(f"progress must be True, False or None, got {_show(value)}")
    return value


def check_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AdvrankError(f"{name} must be a non-empty name, got {_show(value)}")
    return value


def check_list(values: Any, name: str, item: Callable[[Any], Any]) -> list:
    """A non-empty list, tuple or range of values, each checked (and converted) by ``item``;
    repeats removed, order kept (a repeated value would only redo the same work)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
        raise AdvrankError(f"{name} must be a list, got {_show(values)}")
    if not values:
        raise AdvrankError(f"{name} must not be empty")
    return list(dict.fromkeys(item(v) for v in values))


def check_path(value: Any, name: str) -> Path:
    """A file or folder path (str or os.PathLike), not empty."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise AdvrankError(f"{name} must be a path, got {_show(value)}")
    return Path(value)


def check_sequence_of_numbers(values: Any, name: str, length: int | None = None,
                              positive: bool = False) -> tuple[float, ...]:
    """A list/tuple of finite numbers (of ``length`` items), e.g. a mean or std per channel."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise AdvrankError(f"{name} must be a list of numbers, got {_show(values)}")
    if length is not None and len(values) != length:
        raise AdvrankError(f"{name} needs {length} values, got {len(values)}")
    out = tuple(check_number(v, name, low=0.0 if positive else None, low_open=positive)
                for v in values)
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_dataset(dataset) -> None:
    """Refuse what is not a dataset of labelled images (``labels [N]`` int, N >= 2)."""
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() \
            or not hasattr(dataset, "__getitem__") or labels.numel() < 2:
        raise AdvrankError(f"expected a dataset of at least 2 labelled images (an "
                           f"advrank ImageDataset), got {type(dataset).__name__}")
