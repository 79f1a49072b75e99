"""The search engine behind the HTTP layer: upload bytes -> model input -> embedding -> index
search, for a batch of queries at a time. It knows nothing of HTTP: a bad request is a
:class:`~advrank.serve.errors.ServiceError` of its kind, an answer a wire model
(:mod:`advrank.oracles.wire`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from advrank.core.index import VectorIndex
from advrank.core.pipeline import get_pipeline
from advrank.core.target import SearchTarget
from advrank.data.geometry import Geometry
from advrank.errors import AdvrankError
from advrank.models.dual import check_texts, has_text_tower, text_encoder
from advrank.oracles.wire import (
    API_VERSION,
    DeleteAnswer,
    InsertAnswer,
    RanksAnswer,
    SearchAnswer,
)
from advrank.serve.catalog import Catalog
from advrank.serve.decode import FORMATS, decode_upload
from advrank.serve.errors import BadRequest, ServiceError, Unprocessable, Unsupported
from advrank.serve.forward import Forward, use_threads
from advrank.serve.limits import Limits
from advrank.serve.rwlock import SharedLock
from advrank.serve.schema import ServiceInfo, ServiceLimits


def target_geometry(target: SearchTarget) -> Geometry:
    """How the target reads pictures: a collection's recorded geometry, else the whole
    picture squeezed to the checkpoint's input size (as :func:`load_target` reads folders)."""
    g = target.info.get("geometry")
    if g is not None:
        return Geometry(tuple(g["input_size"]), g["crop_pct"], g["interpolation"])
    return Geometry(target.meta.image_shape, None, "bilinear")


@dataclass
class Query:
    """One decoded search: ``image [C, H, W]`` (None for a text query), its ``k``, the
    ``named [j]`` ids whose ranks it asks for (None: the top-k ids) and ``text``, a text
    query (what a shopper types) for a model with a text tower."""

    image: torch.Tensor | None
    k: int
    named: torch.Tensor | None = None
    text: str | None = None


def public_name(source: str | None) -> str | None:
    """What ``/info`` may say of a model's or collection's source: a file's base name, a
    source's kind with the base name of its argument (``timm:resnet50``,
    ``imagefolder:photos``), never a path of the server's."""
    if source is None:
        return None
    kind, sep, arg = str(source).partition(":")
    if sep and kind.isidentifier() and not Path(source).exists():
        return f"{kind}:{Path(arg).name or arg}"
    return Path(source).name


class SearchService:
    """Searches ``target``'s gallery through ``index``: ``scores`` shows distances in the
    answers; ``limits`` bound each request; ``metrics`` (optional) times each stage. Up to
    ``limits.workers`` batches go through at once (searches only read), a write alone."""

    def __init__(self, target: SearchTarget, index: VectorIndex, scores: bool = False,
                 limits: Limits | None = None, metrics=None, pipeline: str | None = None):
        if index.size != len(target.gallery):
            raise AdvrankError(f"the index holds {index.size} vectors, the gallery "
                               f"{len(target.gallery)}")
        self.target, self.index, self.scores = target, index, bool(scores)
        self.limits, self.metrics = limits or Limits(), metrics
        self.geometry = target_geometry(target)
        # what the service does to every upload (search or insert) before embedding it
        chosen = get_pipeline(pipeline)
        self.pipeline = None if chosen.spec == "none" else chosen
        self.catalog = Catalog(target.gallery.dataset, target.gallery.labels)
        use_threads(self.limits.threads)  # the probe below runs as the searches will
        self.forward = Forward(target.model, target.device, self.geometry.input_size,
                               self.limits.max_batch)
        self.text = has_text_tower(target.model)  # JSON {"text": ...} searches offered
        self.lock = SharedLock()
        self.writable = False  # POST /items and DELETE /items/{id} offered (create_app)

    @property
    def max_k(self) -> int:
        """The largest k a search may ask for: the limit, at most the items held."""
        return min(self.limits.max_k, self.index.live)

    def check_k(self, k: int | None) -> int:
        if k is None:
            return min(self.limits.default_k, self.max_k)
        if not 1 <= k <= self.max_k:
            raise BadRequest(f"k must lie in [1, {self.max_k}], got {k}")
        return k

    def check_named(self, text: str | None) -> torch.Tensor | None:
        """``rank_of=I,J,...`` as ``[j]`` ids (None when absent)."""
        if text is None:
            return None
        parts = text.split(",")
        if len(parts) > self.limits.max_named:
            raise BadRequest(f"rank_of names {len(parts)} ids; the limit is "
                             f"{self.limits.max_named}")
        try:
            named = torch.tensor([int(p) for p in parts], dtype=torch.long)
        except (ValueError, RuntimeError):
            raise BadRequest(f"rank_of must be ids separated by commas, got "
                             f"{text[:40]!r}") from None
        if ((named < 0) | (named >= self.index.size)).any():  # ids ever given: [0, id_bound)
            raise BadRequest(f"rank_of ids must lie in [0, {self.index.size - 1}]")
        return named

    def check_text(self, body: bytes) -> str:
        """A text search's JSON body ``{"text": "..."}`` as its text (one 4xx when the body is
        not that, or when the model has no text tower)."""
        if not self.text:
            raise Unsupported("this service's model has no text tower: search with a picture "
                              "(image/png or image/jpeg)")
        try:
            text = json.loads(body).get("text")
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise BadRequest('a text search\'s body must be JSON {"text": "..."}') from None
        if not isinstance(text, str) or not text.strip():
            raise BadRequest('a text search\'s body must be JSON {"text": "..."} with a '
                             'non-empty text')
        try:
            return check_texts([text])[0]
        except AdvrankError as exc:
            raise BadRequest(str(exc)) from None

    def decode(self, data: bytes) -> torch.Tensor:
        """An upload's bytes as the model's input ``[C, H, W]``, re-encoded by the service's
        pipeline when it has one (a real JPEG or PNG round trip at the input size)."""
        start = time.perf_counter()
        image = decode_upload(data, self.geometry, self.limits.max_pixels)
        if self.pipeline is not None:
            image = self.pipeline(image[None])[0]
        self._time("decode", start)
        return image

    def warm_up(self) -> None:
        """A blank PNG and JPEG decoded, and one search, before the first client's (first
        calls load codecs, allocate and pick kernels: seconds a client should not pay)."""
        import io

        from PIL import Image

        c, h, w = self.geometry.input_size
        for fmt in FORMATS:
            buf = io.BytesIO()
            Image.new("L" if c == 1 else "RGB", (w, h)).save(buf, fmt)
            image = self.decode(buf.getvalue())
        self.search_batch([Query(image, 1)])

    def _time(self, stage: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.stages.labels(stage).observe(time.perf_counter() - start)

    @torch.no_grad()
    def search_batch(self, queries: list[Query]) -> list[SearchAnswer | RanksAnswer |
                                                         ServiceError]:
        """Each query's answer, or the :class:`Unprocessable` of a picture the model embeds
        to non-finite values. A query's answer is the one it gets alone: the forward gives
        each row the bits it gets alone (:class:`Forward`), the index answers row by row
        (:meth:`VectorIndex.search_rows`), and only the real rows are searched."""
        n = len(queries)
        if not 1 <= n <= self.limits.max_batch:
            raise AdvrankError(f"a batch holds 1 to {self.limits.max_batch} searches, got {n}")
        out: list = [Unprocessable("the model gives a non-finite embedding for this "
                                   "picture")] * n
        with self.lock.shared():
            start = time.perf_counter()
            emb = self._embed(queries)
            self._time("forward", start)
            finite = torch.isfinite(emb).all(1)
            start = time.perf_counter()
            for (k, ranks), rows in self._groups(queries, finite).items():
                if ranks:
                    found = self.index.rank_rows(emb[rows], [queries[r].named for r in rows], k)
                    for r, row in zip(rows, found, strict=True):
                        out[r] = RanksAnswer(ranks=row)
                    continue
                ids, scores = self.index.search_rows(emb[rows], k)
                for r, i, d in zip(rows, ids, scores, strict=True):
                    out[r] = self.answer(i, d)
            self._time("search", start)
        return out

    def _embed(self, queries: list[Query]) -> torch.Tensor:
        """``[n, D]``: the pictures through :class:`Forward`, the texts through the text tower
        one at a time (so a text's answer is the one it gets alone, whatever its batch)."""
        texts = [i for i, q in enumerate(queries) if q.image is None]
        pictures = [i for i, q in enumerate(queries) if q.image is not None]
        parts, rows = [], []
        if pictures:
            parts.append(self.forward(torch.stack([queries[i].image for i in pictures])))
            rows += pictures
        if texts:
            dual = text_encoder(self.target.model)
            parts += [dual.encode_text([queries[i].text]).float().cpu() for i in texts]
            rows += texts
        emb = torch.cat(parts)
        return emb[torch.tensor(rows).argsort()]

    @staticmethod
    def _groups(queries: list[Query], finite: torch.Tensor) -> dict[tuple[int, bool], list]:
        """The rows of the finite queries by (k, whether it asks for ranks)."""
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, q in enumerate(queries):
            if finite[i]:
                groups.setdefault((q.k, q.named is not None), []).append(i)
        return groups

    def answer(self, ids: torch.Tensor, scores: torch.Tensor) -> SearchAnswer:
        """One top-k answer from ``ids [k]`` and ``scores [k]`` (an approximate index may
        find fewer than k: ids -1 dropped)."""
        keep = ids >= 0
        return SearchAnswer(ids=ids[keep].tolist(),
                            scores=scores[keep].tolist() if self.scores else None)

    @torch.no_grad()
    def insert(self, image: torch.Tensor, name: str | None) -> InsertAnswer:
        """Add a decoded picture ``[C, H, W]`` to the catalog: embedded exactly as a search of
        it is (so its own picture finds it at distance 0), inserted into the index the way
        the index kind inserts, under the next id."""
        with self.lock.exclusive():
            emb = self.forward(image[None])
            if not torch.isfinite(emb).all():
                raise Unprocessable("the model gives a non-finite embedding for this picture")
            new = self.index.add(emb)
            self.catalog.add(new, name, image)
        return InsertAnswer(id=new)

    def delete(self, item: int) -> DeleteAnswer:
        """Remove an item for good: its id is never answered again, nor reused."""
        with self.lock.exclusive():
            if self.index.live <= 1:
                raise BadRequest("the last item of the catalog cannot be removed")
            self.catalog.remove(item)  # NotFound for an id it does not hold
            self.index.remove(item)
        return DeleteAnswer(deleted=item)

    def info(self) -> ServiceInfo:
        t, lim = self.target, self.limits
        index = dict(self.index.info)
        if isinstance(index.get("cache"), dict):  # the server's folders are nobody's business
            index["cache"] = {**index["cache"], "file": Path(index["cache"]["file"]).name}
        limits = ServiceLimits(
            max_body_bytes=lim.max_body_bytes, max_pixels=lim.max_pixels,
            max_concurrency=lim.max_concurrency, max_k=self.max_k, default_k=lim.default_k,
            max_named=lim.max_named, max_queue=lim.max_queue, max_batch=lim.max_batch,
            batch_wait_ms=lim.batch_wait * 1000, request_timeout=lim.request_timeout,
            workers=lim.workers, threads=lim.threads)
        return ServiceInfo(
            api=API_VERSION, model=t.meta.arch, source=public_name(t.source),
            fingerprint=t.fingerprint, dataset=public_name(t.meta.dataset),
            gallery_size=self.index.live, id_bound=self.index.size,
            metric=t.meta.metric, input_size=list(self.geometry.input_size),
            geometry=self.geometry.describe(), index=index, max_k=self.max_k,
            scores=self.scores, named_ranks=True, items=True, writable=self.writable,
            pipeline=None if self.pipeline is None else self.pipeline.spec, text=self.text,
            feedback=f"top-k ids{' and scores' if self.scores else ''}",
            formats=list(FORMATS), forward=self.forward.describe(), limits=limits)
