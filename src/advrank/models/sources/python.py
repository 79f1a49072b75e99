"""``python:MODULE:FACTORY``: your own ``nn.Module``, built by calling ``FACTORY()`` from an
importable module (``mypkg.models:build``) or a ``.py`` file (``./models.py:build``). The
module runs as ordinary Python: name only your own code.

The network maps normalised images to embeddings ``[B, D]`` (feature maps/tokens are
pooled). A factory may return a pair ``(image_net, text_net)`` instead: a dual encoder whose
``text_net(texts: list[str]) -> [N, D]`` (tokenising its own input) embeds text queries into
the image embeddings' space. Its preprocessing comes from a ``data_config`` dict attribute
(timm's keys: ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``), else from a
timm model's ``pretrained_cfg``, else ImageNet's defaults; ``--input-size``/``--mean``/``--std``
override."""

from __future__ import annotations

import inspect
import os
import sys

from torch import nn

from advrank.core.io import file_sha256
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


def code_files(module, net: nn.Module, imported: set[str]) -> dict[str, str]:
    """SHA-256 of the source files that define the model: the factory's module, the module of
    the network's class, and every module imported with them from the same folder tree (the
    user's package), by path. Library code (torch, timm...) is identified by its version
    elsewhere; this catches a forward() edited without touching the weights."""
    files = [getattr(module, "__file__", None)]
    try:
        files.append(inspect.getsourcefile(type(net)))
    except (TypeError, OSError):
        pass
    top = module.__name__.partition(".")[0]
    base = sys.modules.get(top, module)
    root = os.path.dirname(os.path.dirname(getattr(base, "__file__", "") or "")) \
        if getattr(base, "__path__", None) else os.path.dirname(files[0] or "")
    for name in imported:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and root and os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
            files.append(path)
    return {str(f): file_sha256(f) for f in sorted({f for f in files if f and os.path.isfile(f)})}


@MODEL_SOURCES.register("python", argument="MODULE:FACTORY", example="python:mypkg.nets:build")
def python_source(spec: str, options: SourceOptions) -> SourceNet:
    module_name, sep, factory_name = spec.rpartition(":")
    if not sep or not module_name or not factory_name.isidentifier():
        raise AdvrankError(f"python:{spec}: expected python:MODULE:FACTORY, e.g. "
                           "python:mypkg.nets:build or python:./nets.py:build")
    before = set(sys.modules)
    module = _import(module_name, spec)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise AdvrankError(f"{module_name} has no callable {factory_name!r}")
    try:
        net = factory()
    except Exception as exc:
        raise AdvrankError(f"python:{spec}: {factory_name}() raised {type(exc).__name__}: "
                           f"{exc}") from None
    text = None
    if isinstance(net, tuple) and len(net) == 2:
        net, text = net
        if not isinstance(text, nn.Module):
            raise AdvrankError(f"python:{spec}: {factory_name}() returned a text encoder of "
                               f"type {type(text).__name__}, not a torch.nn.Module")
    if not isinstance(net, nn.Module):
        raise AdvrankError(f"python:{spec}: {factory_name}() returned {type(net).__name__}, "
                           "not a torch.nn.Module (or a pair: image and text encoders)")
    config = getattr(net, "data_config", None) or getattr(net, "pretrained_cfg", None) or {}
    if not isinstance(config, dict):
        raise AdvrankError(f"python:{spec}: the model's data_config must be a dict")
    keys = ("input_size", "mean", "std", "crop_pct", "interpolation")
    files = code_files(module, net, set(sys.modules) - before)
    if text is not None:
        files.update(code_files(module, text, set()))
    return SourceNet(net, {k: config[k] for k in keys if k in config},
                     {"factory": spec, "code_files": files}, text=text)
