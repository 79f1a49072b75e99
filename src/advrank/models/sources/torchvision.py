"""``torchvision:NAME``: a torchvision classification architecture as an embedder (its
classifier replaced by the identity, so the pooled features are the embedding), with the
preprocessing torchvision publishes for its ImageNet weights (read from the weights enum's
metadata). ``--pretrained [MEMBER]``: the weights enum's file (DEFAULT or e.g. IMAGENET1K_V2)
from the torch hub cache, downloaded into it when missing."""

from __future__ import annotations

from typing import Any

from torch import nn

from advrank.models.pretrained import torchvision_weights
from advrank.models.sources.base import SourceNet, SourceOptions, build_with_size, unknown_name
from advrank.registry import MODEL_SOURCES

#: the attribute that holds the classifier, by architecture family
HEADS = ("fc", "classifier", "heads", "head")


def published_config(name: str) -> dict[str, Any]:
    """Resize, crop, mean and std of torchvision's default weights for ``name`` (or {})."""
    from torchvision import models

    try:
        t = models.get_model_weights(name).DEFAULT.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return {"input_size": (3, crop, crop), "crop_pct": crop / resize, "mean": tuple(t.mean),
                "std": tuple(t.std), "interpolation": t.interpolation.value}
    except (AttributeError, ValueError, TypeError, KeyError):  # no published weights/transform
        return {}


@MODEL_SOURCES.register("torchvision", argument="NAME", example="torchvision:resnet50",
                        pretrained=True)
def torchvision_source(name: str, options: SourceOptions) -> SourceNet:
    import torchvision
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        raise unknown_name("torchvision", name, known)
    pretrained = (str(torchvision_weights(name, options.pretrained))
                  if options.pretrained is not None else None)
    net = build_with_size(models.get_model, "image_size", options.input_size, name=name,
                          weights=None)
    removed = []
    for attr in HEADS:
        if isinstance(getattr(net, attr, None), nn.Module):
            setattr(net, attr, nn.Identity())
            removed.append(attr)
            break
    if hasattr(net, "aux_logits"):  # Inception/GoogLeNet: one output, not a named tuple
        net.aux_logits = False  # type: ignore[assignment]  # a plain flag, not a submodule
        for aux in ("AuxLogits", "aux1", "aux2"):
            if getattr(net, aux, None) is not None:
                setattr(net, aux, None)
                removed.append(aux)
    return SourceNet(net, published_config(name),
                     {"library": f"torchvision {torchvision.__version__}"},
                     removed=tuple(removed), pretrained=pretrained)
