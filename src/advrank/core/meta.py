"""What a model is, as its checkpoint or its source declares it: :class:`ModelMeta`.

A checkpoint's ``meta`` mapping is read into a ModelMeta once, where the file is read and
validated (:func:`advrank.models.checkpoint.model_from_checkpoint`); an outside model's is
built where the model is loaded (:func:`advrank.experiments.target.load_target`). Everything
above reads typed fields (``meta.metric``, ``meta.image_shape``...) instead of dict keys.
:meth:`ModelMeta.to_dict` gives back the mapping it was read from (same keys, same order,
same values), so checkpoints and results do not change. It lives in ``core`` (the lowest
layer) because oracles, the service and the experiments all read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from advrank.errors import AdvrankError

#: mapping keys that are not Python names, and the field that holds each
RENAMED = {"recall@1": "recall_at_1"}
#: the fields every model declares (the others are optional: None when absent)
REQUIRED = ("dataset", "arch", "metric", "embed_dim", "image_shape", "mean", "std")
#: fields stored as tuples and written back as lists (as checkpoints hold them)
LISTS = ("image_shape", "mean", "std", "history")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ModelMeta:
    """A model's description. Required: ``dataset`` (the collection it was trained for, or
    the one an outside model ranks), ``arch``, ``metric`` (its ranking distance),
    ``embed_dim``, ``image_shape`` ``(C, H, W)`` of its input, ``mean``/``std`` (C values of
    its input normalisation). Optional (None when the model does not say): what the trainer
    records (``loss``, ``margin``, ``lr``, ``epochs``, ``epochs_done``, ``batch_size``,
    ``samples_per_class``, ``seed``, ``recall_at_1`` (key ``recall@1``), ``train_seconds``,
    ``history``), the defense (``defense``, ``defense_eps``, ``defense_config``) and where the
    weights came from (``init``, ``weights``, ``pretrained``, ``exported_from``,
    ``advrank_version``). ``extra``: any other key of the mapping; ``keys``: the mapping's keys
    in order (what :meth:`to_dict` writes back)."""

    dataset: str
    arch: str
    metric: str
    embed_dim: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loss: str | None = None
    margin: float | None = None
    lr: float | None = None
    epochs: int | None = None
    epochs_done: int | None = None
    batch_size: int | None = None
    samples_per_class: int | None = None
    seed: int | None = None
    defense: str | None = None
    defense_eps: float | None = None
    defense_config: Mapping[str, Any] | None = None
    recall_at_1: float | None = None
    train_seconds: float | None = None
    history: tuple[Mapping[str, float], ...] | None = None
    init: str | None = None
    weights: str | None = None
    pretrained: str | None = None
    exported_from: str | None = None
    advrank_version: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dataset", "arch", "metric"):
            if not isinstance(getattr(self, name), str):
                raise AdvrankError(f"model metadata: {name} must be a name, got "
                                   f"{getattr(self, name)!r}")
        if not _is_int(self.embed_dim) or self.embed_dim < 1:
            raise AdvrankError(f"model metadata: embed_dim must be a positive integer, got "
                               f"{self.embed_dim!r}")
        if len(self.image_shape) != 3 or not all(_is_int(s) and s > 0 for s in self.image_shape):
            raise AdvrankError(f"model metadata: image_shape must be [C, H, W] positive "
                               f"integers, got {list(self.image_shape)!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.image_shape[0] or not all(_is_number(v) for v in values):
                raise AdvrankError(f"model metadata: {name} must be {self.image_shape[0]} "
                                   f"finite numbers, got {list(values)!r}")

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ModelMeta:
        """The metadata a mapping (a checkpoint's ``meta``) holds; keys that are no field go
        to ``extra``. The mapping is expected validated by its reader (see
        :func:`advrank.models.checkpoint.validate_meta`); the required fields are checked
        again here."""
        missing = [k for k in REQUIRED if mapping.get(k) is None]
        if missing:
            raise AdvrankError(f"model metadata lacks {', '.join(map(repr, missing))}")
        names = {f.name for f in fields(cls)} - {"extra", "keys"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in mapping.items():
            name = RENAMED.get(key, key)
            if name in names:
                values[name] = tuple(value) if name in LISTS and value is not None else value
            else:
                extra[key] = value
        return cls(**values, extra=extra, keys=tuple(mapping))

    def to_dict(self) -> dict[str, Any]:
        """The mapping this metadata was read from (same keys, order and values); built in
        code, the required fields and the optional ones that are set."""
        keys = self.keys or (*REQUIRED, *(k for k in self._optional()
                                          if self._value(k) is not None), *self.extra)
        return {key: self._value(key) for key in keys}

    def _optional(self) -> list[str]:
        inverse = {v: k for k, v in RENAMED.items()}
        return [inverse.get(f.name, f.name) for f in fields(self)
                if f.name not in (*REQUIRED, "extra", "keys")]

    def _value(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        name = RENAMED.get(key, key)
        value = getattr(self, name)
        return list(value) if name in LISTS and value is not None else value
