"""The geometric part of a model's preprocessing: how a picture file becomes a model-input image.

Decision (the threat model of an audit): resizing and cropping happen when an image is read,
so that every image of a collection has the model's input size ``(C, H, W)``; the mean/std
normalisation is the model's first layer (:class:`advrank.models.base.Normalize`). The
attack's pixel space is therefore the **model-input image in [0, 1]**: eps = 8/255 means
8 grey levels of the resized, cropped picture the model sees, not of the original file.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from advrank.errors import AdvrankError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Geometry:
    """Resize/crop to ``input_size = (C, H, W)``.

    ``crop_pct`` None: the whole picture is resized to H x W (aspect ratio not kept; what the
    paper's 28x28 models need). Otherwise timm's recipe: the shorter side is resized to
    ``floor(min(H, W) / crop_pct)``, then the centre H x W is cut out.
    """

    input_size: tuple[int, int, int]
    crop_pct: float | None = None
    interpolation: str = "bilinear"

    def __post_init__(self):
        size = tuple(int(s) for s in self.input_size)
        if len(size) != 3 or size[0] not in (1, 3) or not all(0 < s <= 4096 for s in size[1:]):
            raise AdvrankError(f"input size must be (1 or 3, H, W) with 0 < H, W <= 4096, got "
                               f"{tuple(self.input_size)}")
        object.__setattr__(self, "input_size", size)
        if self.crop_pct is not None and not 0.0 < float(self.crop_pct) <= 1.0:
            raise AdvrankError(f"crop_pct must lie in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise AdvrankError(f"unknown interpolation {self.interpolation!r}; use one of "
                               f"{', '.join(INTERPOLATIONS)}")

    @property
    def mode(self) -> str:
        """The PIL mode pictures are converted to: ``L`` (grey) or ``RGB``."""
        return "L" if self.input_size[0] == 1 else "RGB"

    @functools.cached_property
    def transform(self):
        """A torchvision transform: PIL image (any mode) -> ``FloatTensor[C, H, W]`` in [0, 1]
        (built once per geometry)."""
        import torchvision.transforms as T

        _, h, w = self.input_size
        interp = T.InterpolationMode(self.interpolation)
        if self.crop_pct is None:
            steps = [T.Resize((h, w), interpolation=interp)]
        else:
            scale = int(math.floor(min(h, w) / self.crop_pct))
            steps = [T.Resize(scale, interpolation=interp), T.CenterCrop((h, w))]
        return T.Compose([*steps, T.ToTensor()])

    def load(self, path) -> torch.Tensor:
        """Read one picture file as ``[C, H, W]`` in [0, 1], upright as its EXIF orientation
        says (phone photos); PIL's errors pass through."""
        from PIL import Image

        with Image.open(path) as img:
            return self.read(img)

    def read(self, img) -> torch.Tensor:
        """An opened, not yet decoded PIL picture as ``[C, H, W]`` in [0, 1]: EXIF orientation,
        the model's channels, resize/crop (what :meth:`load` and the search service's upload
        decoding share); PIL's errors pass through."""
        from PIL import ImageOps

        img.draft(self.mode, (self.input_size[2] * 2, self.input_size[1] * 2))  # JPEG speed
        return self.transform(standard_mode(ImageOps.exif_transpose(img)).convert(self.mode))

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


#: integer and float modes PIL cannot bring to 8 bits itself (it clips, so a 16-bit picture
#: ends up almost all white): their full scale
HIGH_DEPTH_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0,
                    "I": 65535.0, "F": 1.0}


def standard_mode(img):
    """A decoded PIL picture in a mode that ``convert("L"/"RGB")`` reads correctly.

    16-bit grey (``I;16*``; ``I`` is taken as 16-bit too, the depth PNG and PGM store) is
    scaled from [0, 65535] and float pictures (``F``) from [0, 1] to 8 bits (PIL would clip
    them); CIELAB is converted to sRGB through a colour profile (PIL has no direct
    conversion); premultiplied and palette pictures with transparency go through their
    un-premultiplied alpha form first. Other modes (1, L, P, RGB, RGBA, CMYK, YCbCr, HSV...)
    are returned as they are.
    """
    from PIL import Image, ImageCms

    if img.mode in HIGH_DEPTH_SCALE:
        import numpy as np

        values = np.asarray(img, dtype=np.float64) / HIGH_DEPTH_SCALE[img.mode]
        return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), "L")
    if img.mode == "LAB":
        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        return ImageCms.applyTransform(img, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
    if img.mode == "La":
        return img.convert("LA")
    if img.mode in ("RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    return img


def geometry_from_config(config: dict[str, Any], input_size: int | None = None) -> Geometry:
    """A :class:`Geometry` from a timm-style data config (``input_size``, ``crop_pct``,
    ``interpolation``); ``input_size`` overrides H = W (e.g. small images for a quick test)."""
    c, h, w = (int(s) for s in config.get("input_size", (3, 224, 224)))
    if input_size is not None:
        h = w = int(input_size)
    crop = config.get("crop_pct", 0.875)
    return Geometry((c, h, w), None if crop is None else float(crop),
                    str(config.get("interpolation") or "bilinear"))
