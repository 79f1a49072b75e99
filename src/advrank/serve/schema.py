"""What this service says beyond the wire's minimum (:mod:`advrank.oracles.wire`): its
``/info`` and limits as subclasses that only add fields, so a client that knows the wire
alone reads them unchanged (unknown fields are ignored)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from advrank.oracles.wire import InfoAnswer, LimitsInfo


class ServiceLimits(LimitsInfo):
    """:class:`LimitsInfo` plus the queue, the batching and the deadline."""

    max_queue: int = Field(ge=1)
    max_batch: int = Field(ge=1)
    batch_wait_ms: float = Field(ge=0)
    request_timeout: float = Field(gt=0)
    workers: int = Field(ge=1)
    threads: int | None = Field(None, ge=1)


class ServiceInfo(InfoAnswer):
    """:class:`InfoAnswer` plus how the service reads pictures and what it shows. ``source``
    is the checkpoint's base file name (or the model source's name), never a path."""

    source: str | None = None
    geometry: dict[str, Any] | None = None
    feedback: str | None = None
    forward: str | None = None
    limits: ServiceLimits | None = None


class Health(BaseModel):
    """``GET /health``."""

    status: str
