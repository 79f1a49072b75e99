"""Uploaded picture bytes -> the model's input image, the way a real search service decodes
them: PNG or JPEG only, the pixel count checked from the header before anything is decoded
(a decompression bomb is refused, never expanded), 8-bit samples (16-bit PNGs scaled, not
clipped), then the collection reader's own steps (:meth:`advrank.data.geometry.Geometry.read`:
EXIF orientation, the model's channels, resize/centre-crop to its input size).

Every failure is an :class:`UploadError` carrying an HTTP status and one line for the client.
"""

from __future__ import annotations

import io
import warnings

import torch

from advrank.data.geometry import Geometry

FORMATS = ("PNG", "JPEG")


class UploadError(Exception):
    """A bad upload: ``status`` (4xx) and a one-line ``message`` for the JSON error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _eight_bit(img):
    """16- and 32-bit integer greys scaled to 8 bits (PIL's own conversion clips them at 255,
    which would turn most 16-bit pictures white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np
        from PIL import Image

        top = 65535 if img.mode.startswith("I;16") else max(1, int(np.asarray(img).max()))
        arr = np.asarray(img).astype(np.float64) * (255.0 / max(top, 255))
        return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), "L")
    return img


def _open(data: bytes, max_pixels: int):
    """The opened (header-only) picture, refused when it is not a PNG/JPEG or too large."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, "the picture has too many pixels (a decompression bomb?)") \
            from None
    except Exception:  # PIL raises many types for bytes it cannot identify
        raise UploadError(400, f"the body is not a picture PIL can read ({len(data)} bytes); "
                               f"send a {' or '.join(FORMATS)} file") from None
    if img.format not in FORMATS:
        raise UploadError(415, f"pictures must be {' or '.join(FORMATS)}, got {img.format}")
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise UploadError(413, f"the picture is {w} x {h} = {w * h} pixels; the limit is "
                               f"{max_pixels}")
    return img


def decode_upload(data: bytes, geometry: Geometry, max_pixels: int) -> torch.Tensor:
    """``data`` (a PNG or JPEG file's bytes) as ``[C, H, W]`` in [0, 1] at ``geometry``'s input
    size; :class:`UploadError` (400, 413 or 415) for anything else."""
    if not data:
        raise UploadError(400, "the body is empty; send a picture")
    img = _open(data, max_pixels)
    try:
        image = geometry.read(_eight_bit(img))
    except MemoryError:
        raise UploadError(413, "the picture does not fit in memory") from None
    except Exception as exc:  # truncated or damaged data: PIL's words, on one line
        text = str(exc).strip().splitlines()
        why = text[0][:160] if text else type(exc).__name__
        raise UploadError(400, f"the {img.format} picture cannot be decoded: {why}") from None
    finally:
        img.close()
    if not torch.isfinite(image).all():  # defensive: a float TIFF-like mode slipping through
        raise UploadError(400, "the picture decodes to non-finite values")
    return image
