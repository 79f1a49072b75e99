"""Models with a text tower (CLIP-style dual encoders): one image space, queried by pictures
or by texts.

:class:`DualEncoder` is what every command sees as the model: its ``forward`` is the image
tower (images ``[N, C, H, W]`` in [0, 1] -> ``[N, D]``, normalisation inside, like every
model), so attacks, galleries and services use it unchanged; :meth:`DualEncoder.encode_text`
maps ``list[str]`` to ``[N, D]`` embeddings in the same space. The text tower is any
``nn.Module`` whose ``forward(texts: list[str]) -> [N, D]`` tokenises its own input.
:func:`text_encoder` is the one place a single-tower model given text queries is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from advrank.errors import AdvrankError

#: texts per forward pass of a text tower
TEXT_BATCH = 256
#: the seed of a random text tower (as :mod:`advrank.models.sources.base` seeds image towers)
RANDOM_INIT_SEED = 0
#: the longest text accepted (characters); tokenisers truncate far below it anyway
MAX_TEXT_CHARS = 10_000


class DualEncoder(nn.Module):
    """An image tower and a text tower embedding into one space.

    ``image``: images ``[N, C, H, W]`` in [0, 1] -> ``[N, D]`` (an ``EmbeddingNet`` or an
    outside model's embedder); ``text``: ``list[str]`` -> ``[N, D]``. ``forward`` is the image
    tower, and the image tower's attributes are the dual encoder's, so a dual encoder is a
    model wherever a model is expected.
    """

    image: nn.Module
    text: nn.Module

    def __init__(self, image: nn.Module, text: nn.Module):
        super().__init__()
        self.image, self.text = image, text

    @property
    def _tower(self) -> Any:
        """The image tower, whose attributes (``image_shape``...) are its own."""
        return self.image

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self._tower.image_shape
        return int(c), int(h), int(w)

    @property
    def embed_dim(self) -> int:
        return int(self._tower.embed_dim)

    @embed_dim.setter
    def embed_dim(self, value: int) -> None:
        self._tower.embed_dim = value

    @property
    def geometry(self) -> Any:
        """How pictures become the image tower's inputs (an outside model's
        :class:`~advrank.data.geometry.Geometry`)."""
        return self._tower.geometry

    def __getattr__(self, name: str):
        """What the image tower has (``geometry``, ``normalize``, ``where``...): a dual
        encoder is an image model with a text tower."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            image = self.__dict__.get("_modules", {}).get("image")
            if image is None or name.startswith("__"):
                raise
            return getattr(image, name)

    def probe(self, batch_sizes: tuple[int, ...] = (2,)) -> None:
        """The image tower's checks (outside models). The text tower is checked on every
        use (:meth:`encode_text`), so picture-only work never needs its tokenizer."""
        if hasattr(self.image, "probe"):
            self._tower.probe(batch_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, D]
        return self.image(x)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, D]`` float32 embeddings of ``texts`` (N >= 1), in batches of
        :data:`TEXT_BATCH`; whatever the tower returns that is not one finite row of the
        image tower's size per text is one :class:`AdvrankError`."""
        texts = check_texts(texts)
        rows = [self._encode(list(texts[s : s + TEXT_BATCH]))
                for s in range(0, len(texts), TEXT_BATCH)]
        return torch.cat(rows)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        try:
            tower: Any = self.text
            out = tower(texts)
        except AdvrankError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise AdvrankError(f"the text tower fails on {len(texts)} texts: "
                               f"{type(exc).__name__}: {first}") from None
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or \
                out.is_complex() or out.dim() != 2 or out.shape[0] != len(texts):
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AdvrankError(f"the text tower returns {shape} for {len(texts)} texts; it "
                               "must return one floating-point row per text")
        if out.shape[1] != self.embed_dim:
            raise AdvrankError(f"the text tower returns {out.shape[1]}-d embeddings, the image "
                               f"tower {self.embed_dim}-d; they must share one space")
        if not torch.isfinite(out).all():
            raise AdvrankError("the text tower returns non-finite embeddings")
        return out.float()


def check_texts(texts: Sequence[str]) -> list[str]:
    """A non-empty list of non-empty strings of at most :data:`MAX_TEXT_CHARS` characters."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or not texts:
        raise AdvrankError("texts must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise AdvrankError(f"text {i} must be a non-empty string, got {text!r:.60}")
        if len(text) > MAX_TEXT_CHARS:
            raise AdvrankError(f"text {i} has {len(text)} characters, more than "
                               f"{MAX_TEXT_CHARS}")
    return list(texts)


def has_text_tower(model: nn.Module) -> bool:
    """Whether ``model`` (possibly wrapped in DistributedDataParallel) embeds texts."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return isinstance(model, DualEncoder)


def text_encoder(model: nn.Module, where: str = "this model") -> DualEncoder:
    """``model`` as a :class:`DualEncoder`, or the one error for a single-tower model."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(model, DualEncoder):
        raise AdvrankError(f"{where} has no text tower, so it cannot embed text queries; use "
                           "a dual encoder (open_clip:ARCH, a python: factory returning an "
                           "image and a text encoder, or a clip-tiny checkpoint)")
    return model


def load_text_weights(text: nn.Module, state: dict[str, torch.Tensor],
                      image_prefixes: tuple[str, ...], prefix: str, where: str,
                      log: Callable[[str], None]) -> str:
    """Load a text tower's tensors from a weights file's ``state``; returns ``loaded`` or
    ``random`` (the file lacks some of them: an image tower's own file, noted in ``log``).

    A dual encoder's file gives its ``text.*`` tensors; a full CLIP file every tensor outside
    the image tower's ``image_prefixes``, found under ``prefix`` in the tower. A tensor of
    another shape, or one the tower does not have, is one error line (another model)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("image.") for k in state):
        mine = {k[5:]: v for k, v in state.items() if k.startswith("text.")}
    else:
        mine = {prefix + k: v for k, v in state.items() if not k.startswith(image_prefixes)}
    own = text.state_dict()
    missing = [k for k in own if k not in mine]
    wrong = [k for k in own if k in mine and mine[k].shape != own[k].shape]
    foreign = [k for k in mine if k not in own]
    if missing and not wrong and not foreign:  # an image tower's file (a few extras at most)
        held = len(own) - len(missing)
        log(f"{where}: the weights hold {held} of the text tower's {len(own)} tensors; the "
            f"text tower is random (seed {RANDOM_INIT_SEED}): text queries are meaningless "
            "with it")
        return "random"
    if wrong or foreign:
        detail = ", ".join([f"{k} of another shape" for k in wrong[:2]]
                           + [f"missing {k}" for k in missing[:2]]
                           + [f"no {k} in the tower" for k in foreign[:2]])
        raise AdvrankError(f"the text weights do not fit {where}'s text tower: {len(missing)} "
                           f"of its {len(own)} tensors missing, {len(wrong)} of another shape, "
                           f"{len(foreign)} it does not have ({detail})")
    text.load_state_dict(mine)
    return "loaded"


class TextTokens(nn.Module):
    """A text tower over open_clip's tokenizer: ``forward(texts)`` tokenises (to
    ``context_length`` tokens, on the tower's device) and calls :meth:`encode` with the
    tokens ``[N, L]`` int64. The tokenizer ships with open_clip (no network); it is built on
    first use, so building the module (or checking a checkpoint's shapes) does not need it."""

    def __init__(self, context_length: int):
        super().__init__()
        self.context_length = int(context_length)
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            try:
                from open_clip.tokenizer import SimpleTokenizer
            except ImportError as exc:
                raise AdvrankError(f"the text tower needs open_clip's tokenizer ({exc}); "
                                   "install it with: pip install 'advrank[zoo]'") from None
            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer()(texts, context_length=self.context_length)
        return self.encode(tokens.to(self.device()))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
