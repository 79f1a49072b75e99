"""The auditor's view of an endpoint (issue 29): what every reported figure of a query-only
attack is read from, kept apart from what the attacker sees (the ``--feedback``).

It is the richest view the endpoint offers: the ranks of any named ids (``rank_of`` on
``advrank serve``, the whole ranking for an oracle in this process) as deep as the endpoint
serves them, otherwise its longest list (``max_k``). Whatever lies beyond that depth is
*censored*: a position read as "beyond D" is D (:attr:`EvaluationView.beyond`), and the view
says so (:meth:`EvaluationView.describe`). Only when the view reaches the whole gallery
(:attr:`EvaluationView.full`) are positions exact ranks.

Every evaluation request is counted apart from the attacks' budgets
(:attr:`EvaluationView.queries`, also counted in ``oracle.queries``). A query that is itself
a gallery member (``own`` id >= 0) is left out of its own lists, as the white-box figures
leave q out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from advrank.core.checks import check_int
from advrank.errors import AdvrankError
from advrank.oracles.base import Oracle

#: the depth K of the figures a top-k list shows when the attacker's feedback names none
#: (``full`` feedback)
DEFAULT_K = 10


@dataclass
class Reading:
    """What the endpoint answered for N pictures: ``top [N, L]`` (its list, each picture's
    own id left out, -1 pads; L = the depth asked), ``positions [N, j]`` of the named ids
    among the others (own left out; :attr:`EvaluationView.beyond` where not seen) and
    ``own [N]``: where the picture's own id sits in the whole list (-1: not a member; one
    the endpoint does not rank reads :attr:`EvaluationView.beyond`), or None."""

    top: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    own: torch.Tensor | None = None


def drop_own(ids: torch.Tensor, own: torch.Tensor, length: int) -> torch.Tensor:
    """``ids [N, L]`` without each row's ``own [N]`` id (-1: none), kept in order, the first
    ``length`` (-1 pads)."""
    keep = (ids >= 0) & (ids != own[:, None])
    order = torch.where(keep, torch.arange(ids.shape[1]), ids.shape[1]).argsort(dim=1, stable=True)
    out = torch.where(keep.gather(1, order), ids.gather(1, order), -1)
    if out.shape[1] < length:
        out = torch.cat([out, torch.full((ids.shape[0], length - out.shape[1]), -1,
                                         dtype=out.dtype)], 1)
    return out[:, :length]


class EvaluationView:
    """The evaluation view of ``oracle`` (see the module docstring); ``k``: the depth of the
    top-k figures (the attacker's visible K)."""

    def __init__(self, oracle: Oracle, k: int = DEFAULT_K):
        self.oracle = oracle
        self.named_depth = oracle.named_depth
        self.depth = min(oracle.max_depth, oracle.gallery_size)
        self.k = min(check_int(k, "evaluation k", low=1), self.depth)
        self.queries = 0

    @property
    def full(self) -> bool:
        """Positions are exact ranks over the whole gallery."""
        return self.named_depth is not None and self.named_depth >= self.oracle.gallery_size

    @property
    def beyond(self) -> int:
        """The position a named id beyond the view reads as (|X| - 1 when it is full: the
        last place among the others)."""
        if self.full:
            return self.oracle.gallery_size - 1
        return self.named_depth or self.depth

    def _send(self, images: torch.Tensor, depth: int) -> torch.Tensor:
        before = self.oracle.queries
        answer = self.oracle.exchange(self.oracle.upload(images), depth, None, None)
        self.queries += self.oracle.queries - before
        if answer.lost.any():  # sent with no ledger: a request is never refused
            raise AdvrankError("an evaluation query was lost")
        return answer.ids.long().cpu()

    def lists(self, images: torch.Tensor, own: torch.Tensor, length: int) -> torch.Tensor:
        """``[N, length]``: the endpoint's lists for ``images [N, C, H, W]``, own ids left
        out (``length`` at most the depth it serves, less one for the own id)."""
        length = min(length, self.depth - int((own >= 0).any()))
        if images.shape[0] == 0:
            return torch.zeros(0, length, dtype=torch.long)
        ids = self._send(images, min(self.depth, length + 1))
        return drop_own(ids, own.long().cpu(), length)

    def _ranks(self, images: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
        before = self.oracle.queries
        ranks = self.oracle.ranks_of(images, named)
        self.queries += self.oracle.queries - before
        return ranks

    def read(self, images: torch.Tensor, own: torch.Tensor, named: torch.Tensor | None = None,
             top: int = 0, own_rank: bool = False) -> Reading:
        """What the figures of ``images [N, C, H, W]`` need: the ``top``-long lists (0: none),
        the positions of ``named [N, j]`` (None: none) and, with ``own_rank`` (full view
        only), where each own id (``own [N]``, -1: not a member) sits."""
        own = own.long().cpu()
        out = Reading()
        if named is not None and self.named_depth is None:  # positions from the longest list
            ids = self._send(images, self.depth)
            out.positions = positions_in(drop_own(ids, own, self.depth), named, self.beyond)
            if top:
                out.top = drop_own(ids, own, top)
        elif named is not None or (own_rank and self.full):
            extra = own[:, None].clamp_min(0)
            asked = extra if named is None else torch.cat([named.long().cpu(), extra], 1)
            ranks = self._ranks(images, asked)
            # a member whose own id the endpoint does not rank (an HNSW search that misses
            # it) sits beyond the view, as a named id it does not rank
            mine = torch.where(own >= 0, torch.where(ranks[:, -1] >= 0, ranks[:, -1],
                                                     self.beyond), -1)
            if named is not None:
                r = ranks[:, :-1]
                r = r - ((mine[:, None] >= 0) & (mine[:, None] < r)).long()  # own left out
                out.positions = torch.where(r >= 0, r, self.beyond).clamp_max(self.beyond)
            out.own = mine if own_rank and self.full else None
        if top and out.top is None:
            out.top = self.lists(images, own, top)
        return out

    def describe(self) -> dict[str, Any]:
        """How figures were read: ``view`` (``ranks``: exact ranks over the whole gallery;
        ``top-D``: the first D results, positions beyond censored at D), ``k``, the depth
        and the evaluation queries sent."""
        view = "ranks" if self.full else f"top-{self.named_depth or self.depth}"
        return {"view": view, "k": self.k, "censored_at": None if self.full else self.beyond,
                "evaluation_queries": self.queries}


def positions_in(ids: torch.Tensor, named: torch.Tensor, beyond: int) -> torch.Tensor:
    """``[N, j]``: the 0-based positions of ``named [N, j]`` in the lists ``ids [N, L]`` (-1
    pads), ``beyond`` where not found."""
    hit = ids[:, None, :] == named.long().cpu()[:, :, None]
    hit &= ids[:, None, :] >= 0
    return torch.where(hit.any(-1), hit.long().argmax(-1), beyond).clamp_max(beyond)
