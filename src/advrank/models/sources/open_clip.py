"""``open_clip:ARCH``: an OpenCLIP architecture as a dual encoder. The image tower (its
projected image embedding) is the model every command attacks, preprocessing from the tower's
``preprocess_cfg``; the text tower (``encode_text`` of the architecture, through its own
tokenizer, which ships with open_clip for the CLIP architectures: no network) embeds text
queries into the same space. Weights: a CLIP checkpoint's state_dict (``visual.*`` to the
image tower, the rest to the text tower) or the image tower's own (the text tower then stays
random, with a note). ``--pretrained TAG``: the checkpoint open_clip's ``pretrained=TAG``
loads (a tag of ``open_clip.list_pretrained_tags_by_model``), from its cache or downloaded
into it. Needs open_clip_torch (``pip install 'advrank[zoo]'``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from advrank.errors import AdvrankError
from advrank.models.pretrained import open_clip_weights
from advrank.models.sources.base import SourceNet, SourceOptions, require, unknown_name
from advrank.registry import MODEL_SOURCES


class OpenClipText(nn.Module):
    """``list[str]`` -> ``[N, D]``: the architecture's tokenizer, then its ``encode_text``
    (unnormalised, as the image tower's embedding is; the metric normalises). The CLIP model
    is held without its image tower (that one lives in the embedder)."""

    def __init__(self, clip: nn.Module, arch: str):
        super().__init__()
        clip.visual = nn.Identity()  # held once, by the image embedder
        self.clip, self.arch = clip, arch
        self._tokenizer = None

    def tokenizer(self):
        """open_clip's tokenizer of the architecture, built on first use."""
        if self._tokenizer is None:
            open_clip = require("open_clip", "open_clip_torch", "open_clip")
            try:
                self._tokenizer = open_clip.get_tokenizer(self.arch)
            except Exception as exc:  # an HF tokenizer offline, a missing vocabulary
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise AdvrankError(f"the tokenizer of open_clip:{self.arch} cannot be loaded "
                                   f"({type(exc).__name__}: {first})") from None
        return self._tokenizer

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        clip: Any = self.clip  # the architecture's text tower is its encode_text
        return clip.encode_text(self.tokenizer()(texts).to(device))


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
                     prefixes=("visual.",), pretrained=pretrained,
                     text=OpenClipText(model, arch), text_prefix="clip.")
