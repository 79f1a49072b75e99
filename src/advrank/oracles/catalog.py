"""The catalog client: a seller's writes to ``advrank serve --writable`` (``POST /items``,
``DELETE /items/{id}``) and the shoppers' searches that read where an upload landed, through
the HTTP oracle's transport (one deadline per send, a size cap, ``Retry-After``).

* Writes carry ``Authorization: Bearer TOKEN``. The token is held by the client alone: never
  printed, logged, shown by ``repr`` or recorded in a result.
* Uploads are counted and budgeted apart from searches (:class:`UploadLedger`): every send
  of ``POST /items`` counts, busy resends included, and nothing past the upload budget is
  ever sent. A write is never sent again after a dropped connection (``POST`` is not
  idempotent: the item may have been inserted), so such a write is one error naming the
  ids it may have taken.
* :class:`CatalogClient` is a context manager: on exit (an error and Ctrl-C included) it
  deletes every item it uploaded and still holds, so a run leaves the catalog as it found
  it; ``uploaded`` keeps every id it was given, for the result.

Searches are counted in ``searches`` (the caller's budget, apart from uploads) and read as
validated answers: ``ranks`` (``rank_of``, where the service offers it) or ``top`` (ids).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import torch

from advrank.core.checks import check_int
from advrank.errors import AdvrankError
from advrank.oracles.http import INFO_CAP, HttpOracle, answer_cap, png_bytes
from advrank.oracles.info import read_info
from advrank.oracles.transport import Patience, Transport
from advrank.oracles.wire import (
    DeleteAnswer,
    InfoAnswer,
    InsertAnswer,
    RanksAnswer,
    SearchAnswer,
    check_ranks,
    check_search,
    parse,
)

WRITE_CAP = 64 << 10  # bytes of an InsertAnswer / DeleteAnswer


class UploadLedger:
    """The uploads of one run: at most ``budget`` sends of ``POST /items``."""

    def __init__(self, budget: int):
        self.budget = check_int(budget, "upload budget", low=1, high=10_000_000)
        self.used = 0

    def grant(self) -> bool:
        """One more upload send, if the budget allows it (False: not sent)."""
        if self.used >= self.budget:
            return False
        self.used += 1
        return True


class CatalogClient:
    """Writes to and searches of the service behind ``oracle`` (an open :class:`HttpOracle`,
    its /info read), with ``token`` for writes and at most ``upload_budget`` uploads."""

    def __init__(self, oracle: HttpOracle, token: str, upload_budget: int):
        if not isinstance(token, str) or not token.strip():
            raise AdvrankError("the catalog's writes need a token (--token-file)")
        self.oracle = oracle
        self._token = token.strip()
        self.ledger = UploadLedger(upload_budget)
        self.info = self.read_info()
        if not self.info.writable:
            raise AdvrankError(f"the service at {oracle.url} takes no uploads (its /info says "
                               "writable: false; start it with --writable --token)")
        p = oracle.patience  # a write is never resent after a drop: it may have been applied
        self.writes = Transport(oracle.client, oracle.url,
                                Patience(p.deadline, p.max_wait, p.max_busy, 0))
        self.uploaded: list[int] = []
        self.deleted: list[int] = []
        self.searches = 0

    def __repr__(self) -> str:  # never the token
        return f"CatalogClient({self.oracle.url!r}, uploads {self.ledger.used})"

    def read_info(self) -> InfoAnswer:
        body = self.oracle._run(self.oracle.transport.fetch("GET", "/info", INFO_CAP))
        self.info = read_info(body, f"{self.oracle.url}/info")
        return self.info

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"}

    def _write(self, coro, what: str) -> bytes:
        """Run a write on the oracle's loop; on Ctrl-C its answer is still awaited (up to the
        deadline) so that an item it inserted is known, and removed on exit."""
        future = asyncio.run_coroutine_threadsafe(coro, self.oracle.loop)
        try:
            body = future.result()
        except KeyboardInterrupt:
            try:
                self._record(future.result(self.oracle.patience.deadline), what)
            except (Exception, concurrent.futures.TimeoutError):
                pass
            raise
        if body is None:
            raise AdvrankError(f"the upload budget of {self.ledger.budget} is spent ({what})")
        return body

    def _record(self, body: bytes | None, what: str) -> int | None:
        if body is None or what != "upload":
            return None
        new = parse(InsertAnswer, body, f"{self.oracle.url}/items").id
        self.uploaded.append(new)
        return new

    def upload(self, image: torch.Tensor) -> int:
        """Upload ``image [C, H, W]`` in [0, 1] (an 8-bit PNG, as a seller's photo file) and
        return its new id. Refused before sending when the upload budget is spent."""
        if not self.ledger.grant():
            raise AdvrankError(f"the upload budget of {self.ledger.budget} is spent")
        body = png_bytes(image[None])[0]
        bound = self.info.id_bound
        try:
            raw = self._write(self.writes.fetch(
                "POST", "/items", WRITE_CAP, resend=self.ledger.grant,
                content=body, headers={"content-type": "image/png", **self._auth()}),
                "upload")
        except AdvrankError as exc:
            if "cannot reach" in str(exc) or "did not answer" in str(exc):
                raise AdvrankError(f"an upload's answer was lost: the catalog may hold it "
                                   f"under an id at or above {bound} ({exc})") from None
            raise
        new = self._record(raw, "upload")
        assert new is not None
        if new < bound:
            raise AdvrankError(f"the service gave the upload id {new}, an id it gave before "
                               f"(ids run to {bound - 1})")
        self.info = self.info.model_copy(update={"id_bound": new + 1})
        return new

    def delete(self, item: int) -> None:
        """Remove item ``item`` (one of this client's uploads) for good."""
        if item not in self.uploaded or item in self.deleted:
            raise AdvrankError(f"item {item} is not one this client uploaded and holds")
        where = f"{self.oracle.url}/items/{item}"
        raw = self._write(self.writes.fetch("DELETE", f"/items/{item}", WRITE_CAP,
                                            resend=lambda: True, headers=self._auth()),
                          "delete")
        if parse(DeleteAnswer, raw, where).deleted != item:
            raise AdvrankError(f"{where} answered the deletion of another id")
        self.deleted.append(item)

    @property
    def held(self) -> list[int]:
        """The uploads not yet deleted."""
        return [i for i in self.uploaded if i not in self.deleted]

    def cleanup(self) -> None:
        """Delete every upload still held; one error naming those that could not be."""
        failed = []
        for item in self.held:
            try:
                self.delete(item)
            except AdvrankError:
                failed.append(item)
        if failed:
            raise AdvrankError(f"the catalog still holds uploads {failed} (their deletion "
                               "failed): remove them by hand")

    def __enter__(self) -> CatalogClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def _searches(self, image: torch.Tensor, params: list[dict[str, str]],
                  caps: list[int]) -> list[bytes]:
        """One search of ``image [C, H, W]`` per ``params``, every send counted."""
        body = png_bytes(image[None])[0]

        def count() -> None:
            self.searches += 1

        async def all_of():
            return await asyncio.gather(*(self.oracle.transport.fetch(
                "POST", "/search", cap, None, count, content=body, params=p,
                headers={"content-type": "image/png"}) for p, cap in zip(params, caps,
                                                                         strict=True)))

        return [b or b"" for b in self.oracle._run(all_of())]

    def ranks(self, image: torch.Tensor, named: list[int], depth: int) -> list[int | None]:
        """Where each id of ``named`` sits in the top-``depth`` answer to ``image`` (None:
        beyond it), from the service's ``rank_of``."""
        where = f"{self.oracle.url}/search?rank_of"
        raw = self._searches(image, [{"k": str(depth), "rank_of": ",".join(map(str, named))}],
                             [answer_cap(0, len(named))])[0]
        return list(check_ranks(parse(RanksAnswer, raw, where), named, depth, where).ranks)

    def top(self, image: torch.Tensor, depth: int) -> list[int]:
        """The ids of the top-``depth`` answer to ``image``, nearest first."""
        where = f"{self.oracle.url}/search"
        raw = self._searches(image, [{"k": str(depth)}], [answer_cap(depth)])[0]
        answer = parse(SearchAnswer, raw, where)
        return list(check_search(answer, depth, self.info.id_bound, False, where).ids)
