"""Micro-batching of concurrent searches, with a bounded queue in front of the model.

A request enters the queue only once its body is in and decoded (a slow upload never holds a
place); when ``max_queue`` searches already wait, it is refused at once (:class:`Busy`: 503
with ``Retry-After``). ``workers`` worker tasks each take what waits (up to ``max_batch``;
batches form while the model works, and a batch waits ``batch_wait`` s for more only when
asked), run it through :meth:`SearchService.search_batch` on a thread of their own, and hand
each request its answer. A request that gave up meanwhile (deadline, hang-up) is skipped,
never computed.

Started and stopped by the app's lifespan (:meth:`start`, :meth:`stop`).
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from advrank.serve.engine import Query, SearchService
from advrank.serve.errors import Busy
from advrank.serve.forward import use_threads


class Batcher:
    """The queue and its worker (see the module docstring)."""

    def __init__(self, service: SearchService):
        self.service = service
        self.queue: asyncio.Queue | None = None
        self.workers: list[asyncio.Task] = []
        self.pool: ThreadPoolExecutor | None = None
        self.batch_seconds = 0.01  # a running mean, for Retry-After
        self.running: set[asyncio.Future] = set()  # the requests of the batches in the model

    async def start(self) -> None:
        self.queue = asyncio.Queue(self.service.limits.max_queue)
        n = self.service.limits.workers
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="advrank-search",
                                       initializer=use_threads,
                                       initargs=(self.service.limits.threads,))
        warm_up = getattr(self.service, "warm_up", None)
        if warm_up is not None:
            await asyncio.get_running_loop().run_in_executor(self.pool, warm_up)
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self.run(), name=f"advrank-batcher-{i}")
                        for i in range(n)]

    async def stop(self) -> None:
        """Stop the worker; searches still waiting are answered 503."""
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        left = list(self.running)
        while self.queue is not None and not self.queue.empty():
            left.append(self.queue.get_nowait()[1])
        for done in left:
            if not done.done():
                done.set_exception(Busy("the service is stopping", retry_after=5))
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.workers, self.pool = [], None

    @property
    def waiting(self) -> int:
        return 0 if self.queue is None else self.queue.qsize()

    async def submit(self, query: Query) -> Any:
        """The answer to ``query`` (raises what the engine answers with an error)."""
        if not self.workers or all(w.done() for w in self.workers):
            raise Busy("the search engine is not running", retry_after=5)
        done = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((query, done))
        except asyncio.QueueFull:
            wait = max(1, math.ceil(self.waiting / self.service.limits.max_batch
                                    * self.batch_seconds))
            raise Busy(f"busy: {self.waiting} searches wait (the queue's limit); retry "
                       f"in {wait} s", retry_after=wait) from None
        self._gauge()
        return await done

    def _gauge(self) -> None:
        if self.service.metrics is not None:
            self.service.metrics.queue.set(self.waiting)

    async def gather(self) -> list[tuple[Query, asyncio.Future]]:
        """The next batch: the first waiting search, then what arrives within the wait;
        searches whose requests gave up meanwhile take no room in it."""
        limits, loop = self.service.limits, asyncio.get_running_loop()
        batch: list[tuple[Query, asyncio.Future]] = []
        deadline = None
        while len(batch) < limits.max_batch:
            if not self.queue.empty():
                item = self.queue.get_nowait()
            elif deadline is None:  # nothing yet: wait for the first, however long
                item = await self.queue.get()
            else:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if not item[1].done():
                batch.append(item)
                if deadline is None:
                    deadline = loop.time() + limits.batch_wait
        self._gauge()
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.gather()
            if self.service.metrics is not None:
                self.service.metrics.batch.observe(len(batch))
            start, mine = loop.time(), {done for _, done in batch}
            self.running |= mine
            try:
                answers = await loop.run_in_executor(self.pool, self.service.search_batch,
                                                     [q for q, _ in batch])
            except Exception as exc:  # every waiting request gets it (a 500), the loop goes on
                answers = [exc] * len(batch)  # type: ignore[list-item]
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (loop.time() - start)
            for (_, done), answer in zip(batch, answers, strict=True):
                if done.done():  # the request gave up meanwhile
                    continue
                if isinstance(answer, Exception):
                    done.set_exception(answer)
                else:
                    done.set_result(answer)
            self.running -= mine
