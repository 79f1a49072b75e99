"""What one request may use, and how searches are batched: the service's limits, checked
once when the service is made (:class:`Limits`)."""

from __future__ import annotations

from dataclasses import dataclass

from advrank.core.checks import check_int, check_number


@dataclass(frozen=True)
class Limits:
    """``max_body_bytes`` of upload, ``max_pixels`` of picture (read from its header, before
    decoding), ``max_k`` results (the effective bound is also the number of items held),
    ``default_k`` when a search names none, ``max_named`` ids in one ``rank_of``.

    ``max_queue`` searches may wait for the model at once (a search enters the queue only once
    its body is in and decoded; beyond it: 503 with ``Retry-After``); at most ``max_batch``
    of them go through one batch: those waiting when the model is free (batches form while
    it works, so a lone search never waits for company), and those arriving within
    ``batch_wait`` seconds after the first (0 by default); ``workers`` batches go through at
    once, each on a thread of its own, and each batch's model and FAISS index use ``threads``
    threads (None: torch's and FAISS's own defaults).
    ``request_timeout`` seconds bound each request, its body's arrival included (408 beyond
    them)."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_queue: int = 256
    max_k: int = 100
    default_k: int = 10
    max_named: int = 1024
    max_batch: int = 32
    batch_wait: float = 0.0
    request_timeout: float = 30.0
    workers: int = 1
    threads: int | None = None

    def __post_init__(self):
        check_int(self.max_body_bytes, "max body bytes", low=1, high=2**40)
        check_int(self.max_pixels, "max pixels", low=1, high=2**40)
        check_int(self.max_queue, "max queue", low=1, high=1_000_000)
        check_int(self.max_k, "max k", low=1)
        check_int(self.default_k, "default k", low=1, high=self.max_k)
        check_int(self.max_named, "max named ids", low=1, high=100_000)
        check_int(self.max_batch, "max batch", low=1, high=4096)
        check_number(self.batch_wait, "batch wait (s)", low=0.0, high=10.0)
        check_number(self.request_timeout, "request timeout (s)", low=0.0, low_open=True,
                     high=86_400.0)
        check_int(self.workers, "engine workers", low=1, high=64)
        if self.threads is not None:
            check_int(self.threads, "threads per search worker", low=1, high=1024)

    @property
    def max_concurrency(self) -> int:
        """Searches a client may keep in flight without being refused (the queue's size):
        what ``/info`` states as ``limits.max_concurrency``."""
        return self.max_queue
