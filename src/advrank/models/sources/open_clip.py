"""``open_clip:ARCH``: the image tower of an OpenCLIP architecture (its projected image
embedding), preprocessing from the tower's ``preprocess_cfg``. Weights: a CLIP checkpoint's
state_dict (its ``visual.*`` tensors are used, the text tower's ignored) or the tower's own.
``--pretrained TAG``: the checkpoint open_clip's ``pretrained=TAG`` loads (a tag of
``open_clip.list_pretrained_tags_by_model``), from its cache or downloaded into it.
Needs open_clip_torch (``pip install 'advrank[zoo]'``)."""

from __future__ import annotations

import logging

from advrank.models.pretrained import open_clip_weights
from advrank.models.sources.base import SourceNet, SourceOptions, require, unknown_name
from advrank.registry import MODEL_SOURCES


@MODEL_SOURCES.register("open_clip", argument="ARCH", example="open_clip:ViT-B-32",
                        package="open_clip_torch", pretrained=True)
def open_clip_source(arch: str, options: SourceOptions) -> SourceNet:
    open_clip = require("open_clip", "open_clip_torch", "open_clip")
    if arch not in open_clip.list_models():
        raise unknown_name("open_clip", arch, open_clip.list_models())
    pretrained = (str(open_clip_weights(arch, options.pretrained))
                  if options.pretrained is not None else None)
    kwargs = {"force_image_size": options.input_size} if options.input_size else {}
    quiet = logging.getLogger()  # open_clip warns on the root logger that nothing was loaded
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
    finally:
        quiet.setLevel(level)
    visual = model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(visual, "image_size", 224))
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    config = {"input_size": (3, int(h), int(w)), "mean": cfg.get("mean"), "std": cfg.get("std"),
              "interpolation": cfg.get("interpolation", "bicubic"),
              # "shortest": resize the shorter side to the input size, then centre-crop
              "crop_pct": None if cfg.get("resize_mode") == "squash" else 1.0}
    return SourceNet(visual, config, {"library": f"open_clip {open_clip.__version__}"},
                     prefixes=("visual.",), pretrained=pretrained)
