"""What every model source gives and what advrank wraps around it.

A source (one module per library, registered in :data:`advrank.registry.MODEL_SOURCES`) turns
its argument (``resnet50`` in ``timm:resnet50``) into a :class:`SourceNet`: the network and its
data config (timm's keys: ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``).
:func:`load_source_model` then builds the :class:`ExternalEmbedder` every command uses:

    images [B, C, H, W] in [0, 1] -> Normalize(mean, std) -> network -> pool -> (projection)
    -> embeddings [B, D]

The resize/crop of the data config is the embedder's ``geometry``, applied when pictures are
read (see :mod:`advrank.data.geometry` for why: eps is in model-input pixels).
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrank.core.io import file_sha256, strict_json
from advrank.data.geometry import Geometry, geometry_from_config
from advrank.errors import AdvrankError
from advrank.models.base import Normalize
from advrank.models.dual import DualEncoder, load_text_weights
from advrank.models.weights import read_state_dict
from advrank.registry import MODEL_SOURCES

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: a source that does not know its preprocessing (TorchScript, a plain nn.Module) gets this
DEFAULT_CONFIG = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                  "crop_pct": 0.875, "interpolation": "bilinear"}
RANDOM_INIT_SEED = 0


@dataclass
class SourceOptions:
    """How to turn a source into an embedder. ``weights``: a state_dict ``.pt``/``.pth`` (read
    with ``weights_only``) or ``.safetensors`` (None: random weights, for testing);
    ``layer``: embed with this module's output (pooled) instead of the pooled features;
    ``embed_dim``: add a linear projection head to that size; ``input_size`` (H = W), ``mean``,
    ``std``: override the model's data config; ``pretrained``: the library's published weights
    (``DEFAULT``, a torchvision weights enum member, an open_clip tag; see
    :mod:`advrank.models.pretrained`) instead of ``weights``."""

    weights: str | None = None
    layer: str | None = None
    embed_dim: int | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pretrained: str | None = None


@dataclass
class SourceNet:
    """What a source builds: the network, its data config, what to record about it, the key
    prefixes a full weights file nests this network under (``visual.`` in a CLIP file), and
    the modules removed from it whose tensors a weights file may hold (``fc``: the classifier
    of an ImageNet checkpoint, ignored rather than refused); ``pretrained``: the published
    weights file the source located for ``--pretrained``. ``text``: a text tower
    (``forward(list[str]) -> [N, D]`` in the image embeddings' space) when the source has
    one; a full weights file's tensors outside ``prefixes`` are its tensors, under
    ``text_prefix`` in its own state_dict."""

    net: nn.Module
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    prefixes: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    pretrained: str | None = None
    text: nn.Module | None = None
    text_prefix: str = ""


def require(module: str, package: str, source: str):
    """Import an optional library, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AdvrankError(f"model source {source!r} needs the package {package} ({exc}); "
                           "install it with: pip install 'advrank[zoo]'") from None


def unknown_name(source: str, name: str, known: list[str]) -> AdvrankError:
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return AdvrankError(f"{source} has no model {name!r}"
                        + (f"; did you mean {', '.join(close)}?" if close else ""))


def build_with_size(factory: Callable[..., nn.Module], size_kw: str, size: int | None,
                    **kwargs) -> nn.Module:
    """``factory(**kwargs)`` with ``size_kw=size`` when a size is asked for and the
    architecture takes one (ViTs fix their input size when built; CNNs take any size)."""
    if size is not None:
        try:
            return factory(**kwargs, **{size_kw: size})
        except TypeError as exc:
            if size_kw not in str(exc):
                raise
    return factory(**kwargs)


class _Reached(Exception):
    """Raised by the layer hook: the embedding layer is reached, the rest need not run."""


def pool(features: torch.Tensor, where: str) -> torch.Tensor:
    """Feature maps ``[B, C, H, W]`` (spatial mean), tokens ``[B, N, C]`` (mean over tokens) or
    vectors ``[B, D]`` -> ``[B, D]``."""
    if not isinstance(features, torch.Tensor):
        raise AdvrankError(f"{where} returns {type(features).__name__}, not a tensor; wrap it "
                           "so that it returns [B, D] embeddings (or name a --layer)")
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() == 3:
        return features.mean(dim=1)
    if features.dim() == 2:
        return features
    raise AdvrankError(f"{where} returns shape {list(features.shape)}; expected [B, D], "
                       "[B, N, D] or [B, C, H, W]")


class ExternalEmbedder(nn.Module):
    """``[B, C, H, W]`` in [0, 1] -> ``[B, D]``: normalisation, the network (up to ``layer``),
    pooling, optional projection. ``geometry`` says how pictures become its inputs."""

    def __init__(self, net: nn.Module, geometry: Geometry, mean, std, layer: str | None,
                 where: str):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.projection: nn.Linear | None = None
        self.geometry, self.image_shape = geometry, geometry.input_size
        self.layer, self.where, self.embed_dim = layer, where, 0
        self._grabbed: torch.Tensor | None = None
        if layer:
            try:
                module = net.get_submodule(layer)
            except AttributeError:
                names = [n for n, _ in net.named_modules() if n][:8]
                raise AdvrankError(f"{where} has no layer {layer!r}; its layers are named like "
                                   f"{', '.join(names)} ...") from None
            module.register_forward_hook(self._grab)

    def _grab(self, module, inputs, output):
        self._grabbed = output
        raise _Reached  # stop the forward pass: what follows the layer is not needed

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` of normalised inputs."""
        if not self.layer:
            return pool(self.net(x), self.where)
        try:
            self.net(x)
        except _Reached:
            pass
        out, self._grabbed = self._grabbed, None
        if out is None:
            raise AdvrankError(f"{self.where}: layer {self.layer!r} did not run")
        return pool(out[0] if isinstance(out, tuple) else out, f"layer {self.layer!r}")

    def _checked_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, F]`` (float32) of images ``x [B, C, H, W]``; whatever the
        network raises or returns that is not one floating-point row per image is one
        :class:`AdvrankError` (out-of-memory passes through: the batch splitter handles it)."""
        try:
            f = self.features(self.normalize(x))
        except AdvrankError:
            raise
        except Exception as exc:
            from advrank.core.execution import is_out_of_memory

            if is_out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise AdvrankError(f"{self.where} fails on a {list(x.shape)} input: "
                               f"{type(exc).__name__}: {first}") from None
        if f.is_complex() or not f.is_floating_point():
            raise AdvrankError(f"{self.where} returns {f.dtype} values; it must return "
                               "floating-point embeddings")
        if f.shape[0] != x.shape[0] or f.shape[1] == 0:
            raise AdvrankError(f"{self.where} returns shape {list(f.shape)} for {x.shape[0]} "
                               f"images; it must return one non-empty row per image")
        return f.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._checked_features(x)
        return f if self.projection is None else self.projection(f)

    @torch.no_grad()
    def feature_size(self) -> int:
        """The feature size F, from two images run through (refusing what the network does
        wrong, see :meth:`_checked_features`)."""
        self.eval()
        return int(self._checked_features(torch.zeros(2, *self.image_shape)).shape[1])

    def probe(self, batch_sizes: tuple[int, ...] = (2,)) -> None:
        """Refuse a model the attacks cannot use, before any work: for each batch size, seeded
        random images go forward and the gradient of the embeddings comes back, and both must
        be finite; embeddings detached from the input (``detach()``, ``no_grad``, integer
        outputs) are refused too, as the attacks need their gradient."""
        self.eval()
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        gen = torch.Generator().manual_seed(RANDOM_INIT_SEED)
        for b in dict.fromkeys(batch_sizes):
            x = torch.rand(b, *self.image_shape, generator=gen).to(device).requires_grad_()
            with torch.enable_grad():
                f = self(x)
                if not torch.isfinite(f).all():
                    raise AdvrankError(f"{self.where} returns non-finite embeddings for {b} "
                                       "random images")
                if not f.requires_grad:
                    raise AdvrankError(f"{self.where} returns embeddings without a gradient "
                                       "(detached or computed under no_grad); the attacks need "
                                       "d embeddings / d image")
                weights = torch.randn(f.shape, generator=gen).to(f.device)
                try:
                    grad = torch.autograd.grad((f * weights).sum(), x, allow_unused=True)[0]
                except Exception as exc:  # a backward that raises, or runs out of memory
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    raise AdvrankError(f"{self.where} fails computing the gradient for a batch "
                                       f"of {b}: {type(exc).__name__}: {first}") from None
            if grad is None or not torch.isfinite(grad).all():
                what = "no" if grad is None else "a NaN or infinite"
                raise AdvrankError(f"{self.where} gives {what} gradient with respect to its "
                                   f"input (batch of {b}); the attacks need a finite one")


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_embedder_weights(model: ExternalEmbedder, path: str, built: SourceNet,
                          log: Callable[[str], None],
                          state: dict[str, torch.Tensor] | None = None) -> str:
    """Load a weights file (``state``: its tensors, when already read) into ``model``; returns
    how the projection head was set (``none``, ``loaded`` or ``random``).

    The file is either the network's own state_dict or an embedder's (keys ``net.*`` and
    ``projection.*``). It must hold every tensor of the network with its shape, and nothing
    else but the modules the source removed (a classifier head, ignored with a note): anything
    else is another architecture (ResNet-34 weights hold all of ResNet-18's names), refused.
    A dual encoder's file (``image.*``, ``text.*``) gives its ``image.*`` part here.
    """
    state = read_state_dict(path) if state is None else state
    if any(k.startswith("image.") for k in state):
        state = {k[6:]: v for k, v in state.items() if k.startswith("image.")}
    if any(k.startswith("net.") for k in state):
        net_state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        head = {k[11:]: v for k, v in state.items() if k.startswith("projection.")}
    else:
        net_state, head = _strip(state, built.prefixes), {}
    own = model.net.state_dict()
    missing = [k for k in own if k not in net_state]
    wrong = [f"{k} is {list(net_state[k].shape)}, expected {list(own[k].shape)}"
             for k in own if k in net_state and net_state[k].shape != own[k].shape]
    unused = [k for k in net_state if k not in own]
    removed = tuple(f"{m}." for m in built.removed)
    foreign = [k for k in unused if not k.startswith(removed)]
    if missing or wrong or foreign:
        detail = "; ".join(wrong[:2] + [f"missing {k}" for k in missing[:2]]
                           + [f"no {k} in the model" for k in foreign[:2]])
        raise AdvrankError(f"weights in {path} do not fit {model.where}: {len(missing)} of its "
                           f"{len(own)} tensors missing, {len(wrong)} of another shape, "
                           f"{len(foreign)} it does not have ({detail})")
    model.net.load_state_dict({k: net_state[k] for k in own})
    if unused:
        log(f"{path}: ignored {len(unused)} tensors of the removed "
            f"{'/'.join(built.removed)} (e.g. {', '.join(unused[:2])})")
    if model.projection is None:
        return "none"
    if not head:
        log(f"{path} has no projection.* tensors: the projection head is random (seed "
            f"{RANDOM_INIT_SEED})")
        return "random"
    try:
        model.projection.load_state_dict(head)
    except RuntimeError as exc:
        raise AdvrankError(f"projection weights in {path} do not fit a "
                           f"{model.projection.in_features} -> {model.projection.out_features} "
                           f"head: {str(exc).splitlines()[0][:200]}") from None
    return "loaded"


def _normalisation(config: dict, options: SourceOptions, channels: int, where: str):
    mean = tuple(options.mean if options.mean is not None else config.get("mean", IMAGENET_MEAN))
    std = tuple(options.std if options.std is not None else config.get("std", IMAGENET_STD))
    if len(mean) != channels or len(std) != channels:
        raise AdvrankError(f"{where}: mean/std need {channels} values (one per channel), got "
                           f"{len(mean)}/{len(std)}")
    if any(s <= 0 for s in std):
        raise AdvrankError(f"{where}: std must be positive, got {list(std)}")
    return [float(m) for m in mean], [float(s) for s in std]


def parse_source(spec: str) -> tuple[str, str]:
    """``"timm:resnet50"`` -> ``("timm", "resnet50")``; refuses unknown sources (one line)."""
    if not isinstance(spec, str):
        raise AdvrankError(f"a model source must be a string, got {type(spec).__name__}")
    name, sep, arg = spec.partition(":")
    entry = MODEL_SOURCES.entry(name)
    if not sep or not arg:
        raise AdvrankError(f"model source {name!r} needs an argument: "
                           f"{name}:{entry.info.get('argument', 'NAME')}")
    return entry.name, arg


def _check_options(name: str, entry, options: SourceOptions) -> None:
    if options.layer and not entry.info.get("supports_layer", True):
        raise AdvrankError(f"--layer is not available for {name} models")
    if options.weights is not None and not Path(options.weights).is_file():
        raise AdvrankError(f"weights file {options.weights} does not exist")
    if options.pretrained is not None:
        if options.weights is not None:
            raise AdvrankError("give --weights FILE or --pretrained, not both")
        if not entry.info.get("pretrained"):
            raise AdvrankError(f"--pretrained is not available for {name} models (give "
                               "--weights FILE)")


def _build(spec: str, entry, arg: str, options: SourceOptions):
    """The source's network wrapped as an embedder, with random weights seeded by
    :data:`RANDOM_INIT_SEED`: ``(built, model, geometry, mean, std, feature_dim)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        built = entry.obj(arg, options)
        config = {**DEFAULT_CONFIG, **{k: v for k, v in built.config.items() if v is not None}}
        try:
            geometry = geometry_from_config(config, options.input_size)
            mean, std = _normalisation(config, options, geometry.input_size[0], spec)
        except (TypeError, ValueError) as exc:
            raise AdvrankError(f"{spec}: its data config cannot be used ({exc}); it needs "
                               "input_size (C, H, W), mean and std (C numbers each), crop_pct "
                               "and interpolation") from None
        model = ExternalEmbedder(built.net, geometry, mean, std, options.layer, spec)
        feature_dim = model.feature_size()
        if options.embed_dim is not None:
            model.projection = nn.Linear(feature_dim, int(options.embed_dim))
    return built, model, geometry, mean, std, feature_dim


def _with_text(model: ExternalEmbedder, built: SourceNet, options: SourceOptions,
               state: dict[str, torch.Tensor] | None, log: Callable[[str], None]):
    """``(model, how the text tower was set)``: a :class:`DualEncoder` when the source has a
    text tower and the image embedding is the source's own (no ``--layer``, no
    ``--embed-dim`` head: those leave the text tower's space), else ``model`` alone."""
    if built.text is None:
        return model, None
    if options.layer or options.embed_dim is not None:
        log(f"{model.where}: the text tower is left out (--layer / --embed-dim leave the "
            "space the text tower embeds into)")
        return model, None
    how = "random" if state is None else load_text_weights(
        built.text, state, built.prefixes, built.text_prefix, model.where, log)
    return DualEncoder(model, built.text), how


def load_source_model(spec: str, options: SourceOptions | None = None,
                      log: Callable[[str], None] | None = None
                      ) -> tuple[ExternalEmbedder | DualEncoder, dict[str, Any]]:
    """Build the embedder for ``spec`` (``SOURCE:ARGUMENT``), in eval mode on the CPU, and what
    results record about it. Without ``options.weights`` the weights are random but the same
    every run (seeded), so caches and resumed runs stay valid. A source with a text tower
    (``open_clip``, a ``python:`` factory returning two encoders) gives a
    :class:`~advrank.models.dual.DualEncoder` (``info["text_tower"]``: how its weights were
    set)."""
    options = options or SourceOptions()
    log = log or (lambda msg: print(f"advrank: {msg}", file=sys.stderr))
    name, arg = parse_source(spec)
    entry = MODEL_SOURCES.entry(name)
    _check_options(name, entry, options)
    built, model, geometry, mean, std, feature_dim = _build(spec, entry, arg, options)
    projection = "random" if model.projection is not None else "none"
    weights = options.weights if options.pretrained is None else built.pretrained
    state = read_state_dict(weights) if weights is not None else None
    if weights is not None:
        projection = load_embedder_weights(model, weights, built, log, state)
    else:
        log(f"{spec}: no --weights given, using random weights (seed {RANDOM_INIT_SEED}); "
            "fine for testing, meaningless as an audit of a real model")
    model.embed_dim = int(options.embed_dim or feature_dim)
    model.probe()  # the loaded weights must give finite embeddings and gradients too
    model, text = _with_text(model, built, options, state, log)
    info = {"model": spec, "weights": weights, "pretrained": options.pretrained,
            "weights_sha": file_sha256(weights) if weights else None,
            "random_weights": weights is None, "layer": options.layer,
            "feature_dim": feature_dim, "embed_dim": model.embed_dim, "projection": projection,
            "geometry": geometry.describe(), "mean": mean, "std": std, **built.info}
    if text is not None:
        info["text_tower"] = text
    # what determines the model besides its weights: the source and its code (library
    # version, TorchScript bytes, the factory's source files), see each source
    info["code_sha"] = hashlib.sha256(strict_json({"source": name, **built.info}).encode()
                                      ).hexdigest()
    return model.eval(), info
