"""Uploaded picture bytes -> the model's input image, the way a real search service decodes
them: PNG or JPEG only, the pixel count checked from the header before anything is decoded
(a decompression bomb is refused, never expanded), 8-bit samples (16-bit PNGs scaled, not
clipped), then the collection reader's own steps (:meth:`advrank.data.geometry.Geometry.read`:
EXIF orientation, the model's channels, resize/centre-crop to its input size).

Every failure is a :class:`~advrank.serve.errors.ServiceError` of its kind (a bad picture,
an unsupported format, too many pixels) with one line for the client.
"""

from __future__ import annotations

import io
import warnings

import torch

from advrank.data.geometry import Geometry
from advrank.serve.errors import BadRequest, TooLarge, Unsupported

FORMATS = ("PNG", "JPEG")


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
        raise TooLarge("the picture has too many pixels (a decompression bomb?)") \
            from None
    except Exception:  # PIL raises many types for bytes it cannot identify
        raise BadRequest(f"the body is not a picture PIL can read ({len(data)} bytes); "
                               f"send a {' or '.join(FORMATS)} file") from None
    if img.format not in FORMATS:
        raise Unsupported(f"pictures must be {' or '.join(FORMATS)}, got {img.format}")
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise TooLarge(f"the picture is {w} x {h} = {w * h} pixels; the limit is "
                               f"{max_pixels}")
    return img


def decode_upload(data: bytes, geometry: Geometry, max_pixels: int) -> torch.Tensor:
    """``data`` (a PNG or JPEG file's bytes) as ``[C, H, W]`` in [0, 1] at ``geometry``'s input
    size; :class:`BadRequest`, :class:`TooLarge` or :class:`Unsupported` for anything else."""
    if not data:
        raise BadRequest("the body is empty; send a picture")
    img = _open(data, max_pixels)
    try:
        image = geometry.read(_eight_bit(img))
    except MemoryError:
        raise TooLarge("the picture does not fit in memory") from None
    except Exception as exc:  # truncated or damaged data: PIL's words, on one line
        text = str(exc).strip().splitlines()
        why = text[0][:160] if text else type(exc).__name__
        raise BadRequest(f"the {img.format} picture cannot be decoded: {why}") from None
    finally:
        img.close()
    if not torch.isfinite(image).all():  # defensive: a float TIFF-like mode slipping through
        raise BadRequest("the picture decodes to non-finite values")
    return image
