"""Upload pipelines: what a deployed image search does to an uploaded picture before it embeds
it. An attacker's float pixels never reach the model: the picture is saved as an 8-bit file
(PNG: lossless, so a rounding to 1/255) or a JPEG (lossy), and the service decodes that.

``get_pipeline(spec)`` parses ``none``, ``png`` or ``jpeg:Q`` (Q in 1..100, bare ``jpeg`` is
``jpeg:75``, PIL's default) into an :class:`ImagePipeline`, registered by name in
:data:`advrank.registry.PIPELINES`. A pipeline has two faces, both ``[B, C, H, W]`` in [0, 1]
-> same shape:

* ``__call__``: the real round trip (PIL's JPEG codec, the decoder the search service uses),
  what the measurement after the pipeline sees;
* ``differentiable``: an approximation with a gradient, what an attack *through* the pipeline
  backpropagates: the same rounding with a straight-through gradient, and for JPEG the codec
  written from its definition (:func:`differentiable_jpeg`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from advrank.errors import AdvrankError
from advrank.registry import PIPELINES

DEFAULT_JPEG_QUALITY = 75  # PIL's (and libjpeg's) default


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` whose gradient is the identity (straight-through): the exact codec value
    forward, and a gradient that does not vanish where the input already lies on the grid
    (an 8-bit image's background, a flat block's DCT coefficients)."""
    return x + (torch.round(x) - x).detach()


def ste_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` clipped to ``[low, high]``, with the identity gradient: torch's clamp passes no
    gradient at its bounds, so black or white pixels (an MNIST background) would never move."""
    return x + (x.clamp(low, high) - x).detach()


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W]`` in [0, 1] as the 0..255 grey levels a picture file stores
    (rounded to the nearest level; differentiable straight through)."""
    return ste_round(ste_clamp(images * 255.0, 0.0, 255.0))


class ImagePipeline:
    """One upload pipeline (see the module docstring); subclasses register themselves."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @property
    def spec(self) -> str:
        """The canonical spec (``jpeg:75``), what results and a grid's identity record."""
        return self.name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The real round trip: ``images [B, C, H, W]`` in [0, 1] as the search decodes them
        after the upload (same shape)."""
        raise NotImplementedError

    def differentiable(self, images: torch.Tensor) -> torch.Tensor:
        """An approximation of the round trip with a gradient (same shapes), what an attack
        through the pipeline backpropagates."""
        raise NotImplementedError


@PIPELINES.register("none")
@dataclass(frozen=True)
class NoPipeline(ImagePipeline):
    """The float pixels reach the model unchanged (the paper's setting)."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "float pixels, unchanged"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def differentiable(self, images: torch.Tensor) -> torch.Tensor:
        return images


@PIPELINES.register("png")
@dataclass(frozen=True)
class PngPipeline(ImagePipeline):
    """An 8-bit lossless file: every pixel rounded to the nearest grey level, ``round(255 x) /
    255``."""

    name: ClassVar[str] = "png"
    description: ClassVar[str] = "8-bit lossless file (rounding to 1/255)"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return to_8bit(images.detach()) / 255.0

    def differentiable(self, images: torch.Tensor) -> torch.Tensor:
        return to_8bit(images) / 255.0


@PIPELINES.register("jpeg")
@dataclass(frozen=True)
class JpegPipeline(ImagePipeline):
    """A baseline JPEG at ``quality`` (1..100) with 4:2:0 chroma subsampling for RGB, encoded
    and decoded by PIL (libjpeg); grey (C = 1) or RGB (C = 3) images."""

    quality: int = DEFAULT_JPEG_QUALITY
    name: ClassVar[str] = "jpeg"
    description: ClassVar[str] = "JPEG file at quality Q (PIL/libjpeg, 4:2:0 for colour)"

    def __post_init__(self):
        q = self.quality
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise AdvrankError(f"JPEG quality must be an integer in 1..100, got {q!r}")

    @property
    def spec(self) -> str:
        return f"jpeg:{self.quality}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return pil_jpeg(images, self.quality)

    def differentiable(self, images: torch.Tensor) -> torch.Tensor:
        return differentiable_jpeg(images, self.quality)


def get_pipeline(spec: str | ImagePipeline | None) -> ImagePipeline:
    """The pipeline of a spec, ``NAME`` or ``NAME:ARGUMENT`` (``png``, ``jpeg:75``); an
    :class:`ImagePipeline` passes through, None is ``none``."""
    if spec is None:
        return NoPipeline()
    if isinstance(spec, ImagePipeline):
        return spec
    if not isinstance(spec, str):
        raise AdvrankError(f"a pipeline must be a spec such as png or jpeg:75, got "
                           f"{type(spec).__name__}")
    name, sep, arg = spec.strip().partition(":")
    cls = PIPELINES.get(name.strip().lower())
    if not sep:
        return cls()
    if cls is not JpegPipeline:  # the one pipeline with an argument
        raise AdvrankError(f"pipeline {cls.name} takes no argument, got {spec!r}")
    try:
        quality = int(arg.strip())
    except ValueError:
        raise AdvrankError(f"JPEG quality must be an integer in 1..100, got {arg!r} (write "
                           "jpeg:75)") from None
    return cls(quality)


# ---------------------------------------------------------------------------- the real codec


def _channels(images: torch.Tensor) -> str:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise AdvrankError(f"a JPEG holds grey or RGB images [B, 1 or 3, H, W], got "
                           f"{tuple(images.shape)}")
    return "L" if images.shape[1] == 1 else "RGB"


def pil_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``images [B, C, H, W]`` in [0, 1] saved as JPEG files at ``quality`` and decoded again
    by PIL, as a service decodes uploads. The codec compresses one picture at a time, so the
    batch is a loop over pictures (each one a separate file, as uploads are)."""
    import numpy as np
    from PIL import Image

    mode = _channels(images)
    levels = to_8bit(images.detach()).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(levels)
    for i, pixels in enumerate(levels):
        buf = io.BytesIO()
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels).save(
            buf, "JPEG", quality=quality, subsampling=2, optimize=False)
        buf.seek(0)
        with Image.open(buf) as img:
            out[i] = np.asarray(img.convert(mode)).reshape(pixels.shape)
    back = torch.from_numpy(out).permute(0, 3, 1, 2)
    return back.to(device=images.device, dtype=images.dtype) / 255.0


# ----------------------------------------------------------- the differentiable approximation

#: the JPEG standard's (Annex K) base quantisation tables, luminance and chrominance
LUMA_TABLE = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
              14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
              18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
CHROMA_TABLE = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
                24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def quantisation_table(base: tuple[int, ...], quality: int) -> torch.Tensor:
    """``[8, 8]``: a base table scaled to ``quality`` as libjpeg does (``jpeg_set_quality``,
    baseline: entries clipped to 1..255)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = (torch.tensor(base, dtype=torch.float64) * scale + 50).div(100).floor()
    return table.clamp(1, 255).view(8, 8)


def dct_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[8, 8]`` orthonormal DCT-II basis: JPEG's forward DCT of a block b is ``D b D^T``."""
    u = torch.arange(8, dtype=torch.float64)[:, None]
    x = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * x + 1) * u * torch.pi / 16) * (2 / 8) ** 0.5
    d[0] /= 2**0.5
    return d.to(dtype)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """One component ``[B, H, W]`` (level-shifted grey levels, H and W multiples of 8) through
    8x8 DCT, quantisation by ``table [8, 8]`` (rounded straight through) and back."""
    b, h, w = plane.shape
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)  # [B, h/8, w/8, 8, 8]
    d = dct_matrix(plane.dtype).to(plane.device)
    q = table.to(device=plane.device, dtype=plane.dtype)
    coef = ste_round(d @ blocks @ d.T / q) * q
    return (d.T @ coef @ d).transpose(2, 3).reshape(b, h, w)


def _pad_to(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x [B, C, H, W]`` extended to multiples of ``m`` by repeating its last row and column,
    as libjpeg fills its edge blocks."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")


#: JFIF's RGB -> YCbCr (rows Y, Cb, Cr; the chroma offset 128 is added separately)
RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def differentiable_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG at ``quality`` written from its definition, with a gradient: ``images [B, C, H, W]``
    (C = 1 grey, C = 3 RGB) in [0, 1] -> decoded image, same shape, on the 1/255 grid.

    8-bit levels, RGB -> YCbCr (JFIF), chroma averaged over 2x2 (4:2:0), level shift by 128,
    8x8 DCT per component, division by the quality-scaled tables and rounding, then the
    inverse; chroma upsampled bilinearly (libjpeg's "fancy" triangle filter). Every rounding
    is straight-through, so the forward pass is the codec's up to libjpeg's integer
    arithmetic and the gradient is that of the approximation around the compressed image."""
    _channels(images)
    luma = quantisation_table(LUMA_TABLE, quality)
    x = to_8bit(images)
    b, c, h, w = x.shape
    if c == 1:
        y = _decoded(_code_plane(_pad_to(x, 8)[:, 0] - 128, luma))[:, None]
    else:
        m = torch.tensor(RGB_TO_YCC, dtype=x.dtype, device=x.device)
        ycc = ste_round(torch.einsum("oc,bchw->bohw", m, _pad_to(x, 16)))  # 8-bit samples
        yy = _decoded(_code_plane(ycc[:, 0] - 128, luma))
        chroma = ste_round(F.avg_pool2d(ycc[:, 1:], 2)).flatten(0, 1)  # [2B, H/2, W/2]
        cc = _decoded(_code_plane(chroma, quantisation_table(CHROMA_TABLE, quality))) - 128
        cc = F.interpolate(cc.view(b, 2, *cc.shape[-2:]), scale_factor=2, mode="bilinear",
                           align_corners=False)
        y = torch.einsum("oc,bchw->bohw", torch.linalg.inv(m), torch.cat([yy[:, None], cc], 1))
    return ste_round(ste_clamp(y[..., :h, :w], 0.0, 255.0)) / 255.0


def _decoded(plane: torch.Tensor) -> torch.Tensor:
    """A decoded component: level shift undone, 8-bit samples (rounded straight through)."""
    return ste_round(ste_clamp(plane + 128, 0.0, 255.0))
