"""The queue in front of the model: bounded (Busy when full, with a Retry-After), batches of
what waits, requests that gave up never computed, and a stop that answers everyone."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from advrank.serve.batcher import Batcher
from advrank.serve.errors import Busy
from advrank.serve.limits import Limits


class SlowEngine:
    """A stand-in engine: answers each query with itself, once ``gate`` opens."""

    def __init__(self, **limits):
        self.limits, self.metrics = Limits(**limits), None
        self.gate, self.batches = threading.Event(), []

    def search_batch(self, queries):
        self.gate.wait(10)
        self.batches.append(list(queries))
        return [SimpleNamespace(answer=q) for q in queries]


def test_a_full_queue_refuses_at_once_and_the_rest_are_answered():
    async def main():
        engine = SlowEngine(max_queue=3, max_batch=2, batch_wait=0.0)
        batcher = Batcher(engine)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.05)  # "a" is in the model, waiting on the gate
        queued = [asyncio.ensure_future(batcher.submit(q)) for q in "bcd"]
        await asyncio.sleep(0.01)
        with pytest.raises(Busy) as refused:
            await batcher.submit("e")
        assert refused.value.retry_after >= 1 and "queue" in refused.value.message
        queued[1].cancel()  # "c" gives up: never computed
        engine.gate.set()
        answers = await asyncio.gather(first, queued[0], queued[2])
        await batcher.stop()
        return answers, engine.batches

    answers, batches = asyncio.run(main())
    assert [a.answer for a in answers] == ["a", "b", "d"]
    assert batches == [["a"], ["b", "d"]]


def test_stop_answers_the_waiting_searches():
    async def main():
        engine = SlowEngine(max_queue=8, max_batch=1, batch_wait=0.0)
        batcher = Batcher(engine)
        await batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(q)) for q in "abc"]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.05)
        engine.gate.set()
        await stopping
        return await asyncio.gather(*waiting, return_exceptions=True)

    out = asyncio.run(main())
    assert all(isinstance(o, Busy) for o in out), out


class ThreadsEngine(SlowEngine):
    """Records the threads torch and FAISS would use in the search thread."""

    def search_batch(self, queries):
        import faiss
        import torch

        self.batches.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        return [SimpleNamespace(answer=q) for q in queries]


def test_search_threads_use_the_limits_threads():
    import faiss
    import torch

    before = (torch.get_num_threads(), faiss.omp_get_max_threads())

    async def main():
        engine = ThreadsEngine(threads=3, workers=2)
        batcher = Batcher(engine)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(q) for q in "abcd"))
        await batcher.stop()
        return engine.batches

    try:
        seen = asyncio.run(main())
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
    assert seen and all(s == (3, 3) for s in seen)


def test_threads_are_checked():
    with pytest.raises(Exception, match="threads per search worker"):
        Limits(threads=0)
