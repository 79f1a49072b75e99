"""What a deployed search answers for a picture, behind one interface (:class:`Oracle`), the
feedback it shows (:class:`Feedback`). The per-attack query budget (grants, resends, checkpoints)
is the ledger of :mod:`advrank.attacks.query.budget`; an oracle only counts what it sends
(``queries``) and asks the ledger before it sends a request again (``resend``).

An oracle maps a batch of pictures ``[N, C, H, W]`` in [0, 1] to ranking lists of gallery ids
(:class:`Answer`). What the attacker sees is the feedback level:

* ``full``: the whole ranking (the rank of any named item); a simulation, the upper bound.
  A caller that reads only some items' positions names them (``answer(images, named)``); an
  oracle that can ask for those ranks alone (``ranks_named``: a service's ``rank_of``) then
  answers with them in place of |X| ids;
* ``topk-scores:K``: the top K ids with their distances;
* ``topk:K``: the top K ids only (the realistic case).

An oracle that sends pictures through an 8-bit encoding (PNG over HTTP) says so with
``eight_bit``: attacks then search the 8-bit grid inside the eps-ball, so what is measured is
what was sent. An oracle given an upload ``pipeline`` (``jpeg:75``) sends each picture through it
first (:meth:`Oracle.upload`): what the endpoint receives, and what is measured, is the
pipeline's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from advrank.core.checks import check_int
from advrank.errors import AdvrankError

LEVELS = ("full", "topk-scores", "topk")


@dataclass(frozen=True)
class Feedback:
    """A feedback level: ``level`` (one of :data:`LEVELS`) and ``k`` (None for ``full``)."""

    level: str
    k: int | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise AdvrankError(f"feedback must be full, topk:K or topk-scores:K, got "
                               f"{self.level!r}")
        if self.level == "full" and self.k is not None:
            raise AdvrankError("full feedback takes no K")
        if self.level != "full":
            check_int(self.k, f"K of {self.level} feedback", low=1)

    @property
    def scores(self) -> bool:
        return self.level == "topk-scores"

    def depth(self, gallery_size: int) -> int:
        """How many ids an answer holds: the whole gallery for ``full``, else min(K, |X|)."""
        return gallery_size if self.k is None else min(self.k, gallery_size)

    def describe(self) -> str:
        return self.level if self.k is None else f"{self.level}:{self.k}"


def parse_feedback(text: Any) -> Feedback:
    """``full``, ``topk:K`` or ``topk-scores:K`` as a :class:`Feedback` (one-line errors)."""
    if isinstance(text, Feedback):
        return text
    if not isinstance(text, str):
        raise AdvrankError(f"feedback must be a string such as topk:10, got {text!r}")
    level, sep, k = text.strip().lower().partition(":")
    if level == "full" and not sep:
        return Feedback("full")
    if level not in LEVELS or level == "full" or not sep:
        raise AdvrankError(f"feedback must be full, topk:K or topk-scores:K, got {text!r}")
    try:
        value = int(k)
    except ValueError:
        raise AdvrankError(f"the K of feedback {text!r} must be an integer") from None
    return Feedback(level, value)


@dataclass
class Answer:
    """What the attacker sees for N pictures: ``ids [N, L]`` (gallery ids, nearest first, -1
    pads a shorter list) and, at ``topk-scores``, ``scores [N, L]`` (distances, +inf pads);
    L = |X| at ``full`` feedback. An answer built from named ranks (:func:`named_list`) holds
    the named ids at their positions and |X| (no member's id: "someone else") elsewhere.
    ``lost [N]`` (bool): requests sent but never answered (the connection dropped and the
    budget paid for no resend); their rows hold no ids (-1) and are never to be scored."""

    ids: torch.Tensor
    scores: torch.Tensor | None = None
    lost: torch.Tensor | None = None

    def __post_init__(self):
        if self.lost is None:
            self.lost = torch.zeros(self.ids.shape[0], dtype=torch.bool)


class Oracle:
    """A deployed search as the attacker reaches it. Subclasses implement :meth:`search` (and
    :meth:`rank` when they can ask for named ranks alone); one that talks over a network,
    where a request can be lost or must be sent again, overrides :meth:`exchange`.
    :meth:`answer` applies the upload pipeline and the feedback level; ``queries`` counts
    every request sent to the endpoint, resends included (what tests hold against the
    budget's ledger)."""

    name: ClassVar[str] = ""
    #: pictures travel as 8-bit samples (a PNG upload): attacks stay on the 8-bit grid
    eight_bit: bool = False
    #: full feedback is answered from the ranks of named ids alone (:meth:`rank`)
    ranks_named: bool = False
    #: an endpoint outside this process (verified by calibration before it is trusted)
    remote: ClassVar[bool] = False

    def __init__(self, feedback: Feedback | str, gallery_size: int,
                 pipeline: str | None = None):
        self.feedback = parse_feedback(feedback)
        self.gallery_size = check_int(gallery_size, "gallery size", low=1, high=2**40)
        self.queries = 0
        self.pipeline = None
        if pipeline is not None:
            from advrank.core.pipeline import get_pipeline

            chosen = get_pipeline(pipeline)
            self.pipeline = None if chosen.name == "none" else chosen

    @classmethod
    def check_argument(cls, argument: str) -> None:
        """Refuse a bad spec argument (``local:ARGUMENT``, a URL) before any work."""

    @classmethod
    def preflight(cls, argument: str, **options: Any) -> None:
        """Cheap checks before the gallery is loaded (e.g. that a service answers)."""

    def upload(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, C, H, W]`` as the endpoint receives them: through the upload
        ``pipeline`` when there is one (a JPEG round trip), else unchanged. What a result
        measures is this picture, the one the endpoint ranked."""
        return images if self.pipeline is None else self.pipeline(images)

    def seen(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, C, H, W]`` as the endpoint's model is given them, as far as the client
        knows: the upload (:meth:`upload`), rounded to 8 bits when ``eight_bit``; a remote
        oracle adds what its service declares it does to an upload. What the local copy
        ranks when the endpoint is compared with it (:mod:`advrank.oracles.calibrate`)."""
        out = self.upload(images)
        return torch.round(out.clamp(0, 1) * 255) / 255 if self.eight_bit else out

    @property
    def max_depth(self) -> int:
        """The longest list one search may return (the gallery for an oracle in this process,
        the service's ``max_k`` over HTTP)."""
        return self.gallery_size

    def search(self, images: torch.Tensor, depth: int,
               scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids [N, depth], scores [N, depth] or None)`` for ``images [N, C, H, W]``."""
        raise NotImplementedError

    def rank(self, images: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        """``[N, j]``: where each of ``named [N, j]`` (gallery ids) sits in the full ranking
        of ``images [N, C, H, W]`` (0 = nearest, -1 when absent); from :meth:`search` unless
        the oracle can ask for them alone."""
        ids, _ = self.search(images, self.gallery_size, False)
        hit = ids.long().cpu()[:, None, :] == named[:, :, None]  # [N, j, L]
        return torch.where(hit.any(-1), hit.long().argmax(-1), -1)

    @property
    def named_depth(self) -> int | None:
        """How deep :meth:`ranks_of` sees (None: it cannot read named ranks; an oracle in this
        process ranks the whole gallery)."""
        return self.gallery_size

    def ranks_of(self, images: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        """``[N, j]``: where each of ``named [N, j]`` sits in the endpoint's list for
        ``images [N, C, H, W]`` (uploaded here), 0 = nearest, -1 beyond :attr:`named_depth`;
        outside any attack's budget (each request counted in ``queries``). What an
        evaluation reads (:mod:`advrank.oracles.evaluation`), whatever the feedback."""
        named = check_named(named, images.shape[0], self.gallery_size)
        self.queries += int(images.shape[0])
        return self.rank(self.upload(images), named)

    def pictures(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``[N, C, H, W]``: the endpoint's own pictures of gallery ``ids [N]`` (a service's
        thumbnails), None when it shows none. Not a search: never counted in ``queries``."""
        return None

    def exchange(self, images: torch.Tensor, depth: int, named: torch.Tensor | None,
                 resend: Callable[[int], bool] | None) -> Answer:
        """The endpoint's answer for ``images [N, C, H, W]`` (N >= 1, already uploaded): the
        top ``depth`` list, or, with ``named [N, j]``, the full list built from their ranks.
        Counts each request sent in ``queries``. An oracle in this process never loses a
        request, so ``resend`` (see :meth:`answer`) is never called here."""
        self.queries += int(images.shape[0])
        if named is not None:
            return Answer(named_list(self.rank(images, named), named, self.gallery_size))
        ids, scores = self.search(images, depth, self.feedback.scores)
        return Answer(ids.long().cpu(), scores.float().cpu() if self.feedback.scores else None)

    def answer(self, images: torch.Tensor, named: torch.Tensor | None = None,
               resend: Callable[[int], bool] | None = None) -> Answer:
        """The feedback for ``images [N, C, H, W]`` in [0, 1] (N >= 0). ``named [N, j]``: the
        gallery ids whose positions the caller reads (full feedback only); an oracle with
        ``ranks_named`` then places only those (:func:`named_list`). ``resend(i) -> bool``:
        asked before request i is sent again (a dropped connection, a busy endpoint); the
        budget's ledger charges it, False = not sent (the request is then ``lost``). None:
        resends are sent freely (still counted in ``queries``)."""
        if images.dim() != 4:
            raise AdvrankError(f"an oracle takes pictures [N, C, H, W], got "
                               f"{list(images.shape)}")
        depth = self.feedback.depth(self.gallery_size)
        if images.shape[0] == 0:
            return Answer(torch.zeros(0, depth, dtype=torch.long),
                          torch.zeros(0, depth) if self.feedback.scores else None)
        if named is not None:
            named = check_named(named, images.shape[0], self.gallery_size)
        if not (named is not None and self.ranks_named and self.feedback.level == "full"):
            named = None
        return self.exchange(self.upload(images), depth, named, resend)

    def search_texts(self, texts: list[str], depth: int,
                     scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids [N, depth], scores [N, depth] or None)`` for text queries (a search whose
        model has a text tower); oracles that take none refuse them in one line."""
        raise AdvrankError(f"the {self.name} oracle takes no text queries")

    def exchange_texts(self, texts: list[str], depth: int,
                       resend: Callable[[int], bool] | None) -> Answer:
        """The endpoint's top ``depth`` list for each text; counts each request sent."""
        self.queries += len(texts)
        ids, scores = self.search_texts(texts, depth, self.feedback.scores)
        return Answer(ids.long().cpu(), scores.float().cpu() if self.feedback.scores else None)

    def answer_texts(self, texts: Sequence[str],
                     resend: Callable[[int], bool] | None = None) -> Answer:
        """The feedback for text queries ``texts`` (a search that embeds texts, e.g. what a
        shopper types): the top list of the oracle's feedback level (named ranks are for
        pictures), ``resend`` as in :meth:`answer`."""
        from advrank.models.dual import check_texts

        return self.exchange_texts(check_texts(texts), self.feedback.depth(self.gallery_size),
                                   resend)

    def close(self) -> None:
        """Release connections (HTTP); nothing for a local oracle."""

    def describe(self) -> dict[str, Any]:
        out = {"oracle": self.name, "feedback": self.feedback.describe(),
               "eight_bit": self.eight_bit}
        return out if self.pipeline is None else {**out, "upload_pipeline": self.pipeline.spec}


def check_named(named: Any, n: int, gallery_size: int) -> torch.Tensor:
    """``named`` as ``[n, j]`` gallery ids on the CPU (one line when it is not)."""
    if not (isinstance(named, torch.Tensor) and named.dim() == 2 and named.shape[0] == n
            and not named.dtype.is_floating_point):
        raise AdvrankError(f"named ids must be an integer tensor [{n}, j], got "
                           f"{getattr(named, 'shape', type(named).__name__)}")
    named = named.long().cpu()
    if named.numel() and (named.min() < 0 or named.max() >= gallery_size):
        raise AdvrankError(f"named ids must lie in [0, {gallery_size - 1}]")
    return named


def named_list(ranks: torch.Tensor, named: torch.Tensor, gallery_size: int) -> torch.Tensor:
    """A full ranked list ``[N, |X|]`` from ``ranks [N, j]`` of ``named [N, j]`` (-1: not
    ranked): each named id at its position, |X| (no member's id) in every other slot, so the
    position of a named item among any named ones left out reads as in the whole list."""
    ids = torch.full((named.shape[0], gallery_size), gallery_size, dtype=torch.long)
    placed = ranks >= 0
    rows = torch.arange(named.shape[0])[:, None].expand_as(named)
    ids[rows[placed], ranks[placed]] = named[placed]
    return ids
