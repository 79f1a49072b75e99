"""``timm:NAME``: any timm architecture as an embedder (its pooled features: the classifier is
removed), with its preprocessing from ``timm.data.resolve_data_config``. Needs timm
(``pip install 'advrank[zoo]'``). Weights: ``--weights FILE``, or ``--pretrained``: the file
timm's ``pretrained=True`` loads (its ``pretrained_cfg``: the HF hub file, or the torch hub file
of its url), from the caches or downloaded into them. ``timm:hf-hub:ORG/NAME`` names a model by
its Hugging Face repository (its config is fetched, or read from the HF cache)."""

from __future__ import annotations

from advrank.errors import AdvrankError
from advrank.models.pretrained import DEFAULT_TAG, timm_weights
from advrank.models.sources.base import (
    SourceNet,
    SourceOptions,
    build_with_size,
    require,
    unknown_name,
)
from advrank.registry import MODEL_SOURCES


@MODEL_SOURCES.register("timm", argument="NAME", example="timm:resnet50", package="timm",
                        pretrained=True)
def timm_source(name: str, options: SourceOptions) -> SourceNet:
    timm = require("timm", "timm", "timm")
    hub = name.startswith("hf-hub:")
    if not hub and not timm.is_model(name):
        raise unknown_name("timm", name, timm.list_models())
    if options.pretrained not in (None, DEFAULT_TAG):
        raise AdvrankError(f"--pretrained takes no tag for timm models; name it in the model "
                           f"(timm:{name.split('.')[0]}.TAG)")
    try:
        net = build_with_size(timm.create_model, "img_size", options.input_size,
                              model_name=name, pretrained=False, num_classes=0)
    except Exception as exc:  # hf-hub: its config is not reachable; or a bad name
        if not hub:
            raise
        raise AdvrankError(f"cannot build timm:{name}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    if hub:
        cfg.setdefault("hf_hub_id", name.removeprefix("hf-hub:"))
    pretrained = str(timm_weights(name, cfg)) if options.pretrained is not None else None
    config = dict(timm.data.resolve_data_config({}, model=net))
    head = cfg.get("classifier") or ()
    removed = (head,) if isinstance(head, str) else tuple(head)
    return SourceNet(net, config, {"library": f"timm {timm.__version__}"}, removed=removed,
                     pretrained=pretrained)
