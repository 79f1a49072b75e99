"""``timm:NAME``: any timm architecture as an embedder (its pooled features: the classifier is
removed), with its preprocessing from ``timm.data.resolve_data_config``. Needs timm
(``pip install 'advrank[zoo]'``); the weights come from ``--weights``, never from the network."""

from __future__ import annotations

from advrank.models.sources.base import (
    SourceNet,
    SourceOptions,
    build_with_size,
    require,
    unknown_name,
)
from advrank.registry import MODEL_SOURCES


@MODEL_SOURCES.register("timm", argument="NAME", example="timm:resnet50", package="timm")
def timm_source(name: str, options: SourceOptions) -> SourceNet:
    timm = require("timm", "timm", "timm")
    if not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models())
    net = build_with_size(timm.create_model, "img_size", options.input_size, model_name=name,
                          pretrained=False, num_classes=0)
    config = dict(timm.data.resolve_data_config({}, model=net))
    head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or ()
    removed = (head,) if isinstance(head, str) else tuple(head)
    return SourceNet(net, config, {"library": f"timm {timm.__version__}"}, removed=removed)
