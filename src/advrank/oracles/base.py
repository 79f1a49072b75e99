"""What a deployed search answers for a picture, behind one interface (:class:`Oracle`), the
feedback it shows (:class:`Feedback`) and the per-attack query budget (:class:`QueryCounter`).

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
what was sent. Every query goes through a :class:`QueryCounter` with a hard budget per attack:
a query past the budget is never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from advrank.core.checks import check_int
from advrank.errors import AdvrankError

LEVELS = ("full", "topk-scores", "topk")
MAX_BUDGET = 10**9


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
    the named ids at their positions and |X| (no member's id: "someone else") elsewhere."""

    ids: torch.Tensor
    scores: torch.Tensor | None = None


class Oracle:
    """A deployed search as the attacker reaches it. Subclasses implement :meth:`search`;
    :meth:`answer` applies the feedback level and counts every picture asked about in
    ``queries`` (the oracle's own count, which tests hold against the budget)."""

    name: ClassVar[str] = ""
    #: pictures travel as 8-bit samples (a PNG upload): attacks stay on the 8-bit grid
    eight_bit: bool = False
    #: full feedback is answered from the ranks of named ids alone (:meth:`rank`)
    ranks_named: bool = False

    def __init__(self, feedback: Feedback | str, gallery_size: int):
        self.feedback = parse_feedback(feedback)
        self.gallery_size = check_int(gallery_size, "gallery size", low=1, high=2**40)
        self.queries = 0

    @classmethod
    def check_argument(cls, argument: str) -> None:
        """Refuse a bad spec argument (``local:ARGUMENT``, a URL) before any work."""

    @classmethod
    def preflight(cls, argument: str) -> None:
        """Cheap checks before the gallery is loaded (e.g. that a service answers)."""

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

    def answer(self, images: torch.Tensor, named: torch.Tensor | None = None) -> Answer:
        """The feedback for ``images [N, C, H, W]`` in [0, 1] (N >= 0). ``named [N, j]``: the
        gallery ids whose positions the caller reads (full feedback only); an oracle with
        ``ranks_named`` then places only those (:func:`named_list`)."""
        if images.dim() != 4:
            raise AdvrankError(f"an oracle takes pictures [N, C, H, W], got "
                               f"{list(images.shape)}")
        depth = self.feedback.depth(self.gallery_size)
        if images.shape[0] == 0:
            return Answer(torch.zeros(0, depth, dtype=torch.long),
                          torch.zeros(0, depth) if self.feedback.scores else None)
        if named is not None:
            named = check_named(named, images.shape[0], self.gallery_size)
        self.queries += int(images.shape[0])
        if named is not None and self.ranks_named and self.feedback.level == "full":
            return Answer(named_list(self.rank(images, named), named, self.gallery_size))
        ids, scores = self.search(images, depth, self.feedback.scores)
        return Answer(ids.long().cpu(), scores.float().cpu() if self.feedback.scores else None)

    def close(self) -> None:
        """Release connections (HTTP); nothing for a local oracle."""

    def describe(self) -> dict[str, Any]:
        return {"oracle": self.name, "feedback": self.feedback.describe(),
                "eight_bit": self.eight_bit}


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


def check_budget(budget: Any) -> int:
    """A query budget per attack: a positive integer (NaN, 0 and negatives refused)."""
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    return check_int(budget, "query budget", low=1, high=MAX_BUDGET)


class QueryCounter:
    """Queries used by each of B attacks, against a hard ``budget`` per attack."""

    def __init__(self, num_attacks: int, budget: int):
        self.budget = check_budget(budget)
        self.used = torch.zeros(check_int(num_attacks, "number of attacks", low=0,
                                          high=2**40), dtype=torch.long)

    @property
    def remaining(self) -> torch.Tensor:
        """``[B]`` queries each attack may still send."""
        return self.budget - self.used

    def grant(self, wanted: int, active: torch.Tensor | None = None) -> torch.Tensor:
        """``sent [B, wanted]`` (bool): the first min(wanted, remaining) requests of each
        active attack, now counted as used; the others are never to be sent."""
        active = torch.ones_like(self.used, dtype=torch.bool) if active is None else active
        allowed = torch.where(active.cpu(), self.remaining.clamp(0, wanted), 0)
        sent = torch.arange(wanted)[None, :] < allowed[:, None]
        self.used += allowed
        return sent


def granted(counter: QueryCounter, x: torch.Tensor, active: torch.Tensor | None = None):
    """The requests of ``x [B, P, ...]`` that the budget lets through: ``(x[sent] [N, ...],
    rows [N] (each one's attack), sent [B, P])``; the others are never sent."""
    sent = counter.grant(x.shape[1], active)
    rows = torch.arange(x.shape[0])[:, None].expand(sent.shape)[sent]
    return x[sent.to(x.device)], rows, sent


def ask(oracle: Oracle, counter: QueryCounter, x: torch.Tensor,
        active: torch.Tensor | None = None) -> tuple[Answer, torch.Tensor, torch.Tensor]:
    """``oracle``'s answer for the requests of ``x [B, P, C, H, W]`` within the budget:
    ``(answer over the N sent, rows [N], sent [B, P])``."""
    flat, rows, sent = granted(counter, x, active)
    return oracle.answer(flat), rows, sent
