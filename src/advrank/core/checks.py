"""Checks that turn bad input and bad numbers into one readable :class:`AdvrankError`."""

from __future__ import annotations

import math
from typing import Any

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
        raise AdvrankError(f"{what} contains NaN or Infinity (a broken model or "
                           "hyper-parameter); nothing was written")
    return tensor


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False,
                 integer: bool = False) -> float | int:
    """One validator for numeric options: type, finiteness and range, with a readable error.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. Returns the value as int
    (``integer=True``) or float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise AdvrankError(f"{name} must be {kind}, got {value!r}")
    if integer and not float(value).is_integer():
        raise AdvrankError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise AdvrankError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise AdvrankError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise AdvrankError(f"{name} must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return int(value) if integer else float(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise AdvrankError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
