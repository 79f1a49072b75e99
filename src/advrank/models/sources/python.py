"""``python:MODULE:FACTORY``: your own ``nn.Module``, built by calling ``FACTORY()`` from an
importable module (``mypkg.models:build``) or a ``.py`` file (``./models.py:build``). The
module runs as ordinary Python: name only your own code.

The network maps normalised images to embeddings ``[B, D]`` (feature maps/tokens are
pooled). Its preprocessing comes from a ``data_config`` dict attribute (timm's keys:
``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``), else from a timm model's
``pretrained_cfg``, else ImageNet's defaults; ``--input-size``/``--mean``/``--std`` override."""

from __future__ import annotations

from torch import nn

from advrank.errors import AdvrankError
from advrank.models.sources.base import SourceNet, SourceOptions
from advrank.registry import MODEL_SOURCES, import_python


def _import(module_name: str, spec: str):
    try:
        return import_python(module_name, "advrank_user_model_", "python model file")
    except AdvrankError:
        raise
    except Exception as exc:  # ImportError, or the module itself failing
        raise AdvrankError(f"cannot import {module_name!r} for python:{spec}: "
                           f"{type(exc).__name__}: {exc}") from None


@MODEL_SOURCES.register("python", argument="MODULE:FACTORY", example="python:mypkg.nets:build")
def python_source(spec: str, options: SourceOptions) -> SourceNet:
    module_name, sep, factory_name = spec.rpartition(":")
    if not sep or not module_name or not factory_name.isidentifier():
        raise AdvrankError(f"python:{spec}: expected python:MODULE:FACTORY, e.g. "
                           "python:mypkg.nets:build or python:./nets.py:build")
    factory = getattr(_import(module_name, spec), factory_name, None)
    if not callable(factory):
        raise AdvrankError(f"{module_name} has no callable {factory_name!r}")
    try:
        net = factory()
    except Exception as exc:
        raise AdvrankError(f"python:{spec}: {factory_name}() raised {type(exc).__name__}: "
                           f"{exc}") from None
    if not isinstance(net, nn.Module):
        raise AdvrankError(f"python:{spec}: {factory_name}() returned {type(net).__name__}, "
                           "not a torch.nn.Module")
    config = getattr(net, "data_config", None) or getattr(net, "pretrained_cfg", None) or {}
    if not isinstance(config, dict):
        raise AdvrankError(f"python:{spec}: the model's data_config must be a dict")
    keys = ("input_size", "mean", "std", "crop_pct", "interpolation")
    return SourceNet(net, {k: config[k] for k in keys if k in config}, {"factory": spec})
