"""What a query-only attack minimises, computed from an oracle's feedback alone
(:class:`FeedbackScore`), for the B attacks of a selection (the §4 one of the white-box kind):
raise (QA+) or sink (QA-) targets C in q~'s list; ES, the untargeted top-k disruption, sinks
q's own clean copy (and with it q's clean neighbourhood).

* ``full`` feedback: the normalized rank of the targets in q~'s list (for QA, q's own clean
  copy left out), as ``measure`` computes it: QA+ minimises it, QA- and ES maximise it.
* ``topk:K`` / ``topk-scores:K``: a surrogate from the visible list. Each candidate c is first
  searched once (its clean picture: m queries per attack, counted), which gives its own
  neighbourhood N(c); the score is the weighted presence of C (weight K) and of N(c) (weight
  1) in q~'s visible list, by position (``topk``) or by distance (``topk-scores``: the nearest
  weighs 1, the last visible 0). QA+ raises the presence, QA- lowers it. Unlike the rank,
  the surrogate still moves while C is out of sight.

Early stop: :meth:`FeedbackScore.goal` says where an answer shows the attack's goal met:
``top`` (QA+: C fills the first |C| places of q~'s list), ``gone`` (QA-: no member of C in the
visible list) or ``clear`` (ES: neither the targets nor their clean neighbourhood N(c) in the
visible list, the score's floor). Only ``top`` has a meaning at ``full`` feedback, where
nothing is out of sight. ``gone`` and ``clear`` are claimed only from a list that shows K ids
other than the query's own: the figures count the top K *others* (the own copy left out, as
the white-box figures leave q out), and where the own copy takes one of the K places the
attacker cannot see the K-th other, so a target just out of its sight may still be in the
figures' top K (measured: an early stop that claimed every QA- goal met while the endpoint
showed 70.5% met, results/endpoint-mnist/exact-qa-minus).

For QA, xi (the kind's SP weight) adds the semantics-preserving term on C_SP (Eq. 12) in the
same currency: xi times C_SP's mean normalized rank (full) or its weighted absence from the
visible list (top-k).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from advrank.attacks.base import QueryScore, topk_positions
from advrank.core.gallery import Gallery
from advrank.errors import AdvrankError
from advrank.oracles.base import Answer, Feedback

#: what an answer must show for an attack's goal to be met (see :meth:`FeedbackScore.goal`)
GOALS = ("top", "gone", "clear")


def visible_weights(answer: Answer, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept [N, L], weight [N, L])``: the visible members other than ``exclude [N, e]``
    and padding, weighted 1 for the nearest down to 1/L by position, or, with scores, by
    distance (nearest 1, last visible 0)."""
    ids = answer.ids
    kept = (ids >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(-1)
    position = kept.long().cumsum(1) - 1
    length = kept.sum(1, keepdim=True).clamp_min(1)
    weight = (length - position).float() / length
    if answer.scores is not None:
        d = torch.where(kept, answer.scores, torch.nan)
        lo = torch.where(kept, d, torch.inf).min(1, keepdim=True).values
        hi = torch.where(kept, d, -torch.inf).max(1, keepdim=True).values
        weight = ((hi - d) / (hi - lo).clamp_min(1e-12)).nan_to_num(0.0)
    return kept, torch.where(kept, weight, 0.0)


class FeedbackScore(QueryScore):
    """``score(answer, rows) -> [N]`` for answers of the attacks ``rows [N]``: raise (or sink)
    ``targets [B, m]`` in lists without ``exclude [B, e]``; ``neighbors [B, m, K]``: N(c) of
    each target (top-k feedback only). With ``keep [B, G]`` (C_SP, Eq. 12's semantics-
    preserving set) and weight ``xi``, the score also keeps those near: ``+ xi`` times their
    mean normalized rank (full) or their absence from the visible list (top-k). ``goal``: one
    of :data:`GOALS` (default: ``top`` when raising, else ``gone``)."""

    def __init__(self, raise_rank: bool, targets: torch.Tensor, exclude: torch.Tensor,
                 feedback: Feedback, gallery_size: int, neighbors: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None, xi: float = 0.0, goal: str | None = None):
        goal = goal or ("top" if raise_rank else "gone")
        if goal not in GOALS:
            raise AdvrankError(f"a feedback goal must be one of {', '.join(GOALS)}, got {goal!r}")
        self.goal_kind = goal
        self.sign = 1.0 if raise_rank else -1.0
        self.targets, self.exclude = targets.cpu(), exclude.cpu()
        self.feedback, self.n, self.neighbors = feedback, gallery_size, neighbors
        self.keep = keep.cpu() if keep is not None and xi else None
        self.xi = float(xi)

    def named_items(self, rows: torch.Tensor) -> torch.Tensor | None:
        """At full feedback the targets, the ids left out and C_SP (all this score reads);
        None (every visible list whole) at top-k feedback."""
        if self.feedback.level != "full":
            return None
        sets = [self.targets, self.exclude] + ([] if self.keep is None else [self.keep])
        return torch.cat([s[rows] for s in sets], 1)

    def _rank(self, answer: Answer, items: torch.Tensor, exclude: torch.Tensor):
        """Mean normalized rank (%) ``[N]`` of ``items [N, j]`` in the full lists."""
        pos = topk_positions(answer.ids, items, exclude, answer.ids.shape[1]).float()
        return 100.0 * pos.mean(1) / self.n

    def __call__(self, answer: Answer, rows: torch.Tensor) -> torch.Tensor:
        targets, exclude = self.targets[rows], self.exclude[rows]
        keep = None if self.keep is None else self.keep[rows]
        if self.feedback.level == "full":
            score = self.sign * self._rank(answer, targets, exclude)
            return score if keep is None else score + self.xi * self._rank(answer, keep,
                                                                            exclude)
        kept, weight = visible_weights(answer, exclude)
        k = max(1, answer.ids.shape[1])
        in_c = (answer.ids[:, :, None] == targets[:, None, :]).sum(-1)
        nb = self.neighbors[rows].flatten(1)
        in_nb = ((answer.ids[:, :, None] == nb[:, None, :]) & (nb[:, None, :] >= 0)).sum(-1)
        presence = (weight * (k * in_c + in_nb)).sum(1) / (2 * k * targets.shape[1])
        score = -self.sign * presence
        if keep is None:
            return score
        in_keep = (answer.ids[:, :, None] == keep[:, None, :]).sum(-1)
        return score + self.xi * (1.0 - (weight * in_keep).sum(1) / keep.shape[1])

    def goal(self, answer: Answer, rows: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the answers of the attacks ``rows [N]`` that show the goal met (see
        :data:`GOALS`); never at ``full`` feedback for ``gone``/``clear``."""
        targets, exclude = self.targets[rows], self.exclude[rows]
        depth = answer.ids.shape[1]
        pos = topk_positions(answer.ids, targets, exclude, depth)
        if self.goal_kind == "top":
            return (pos < targets.shape[1]).all(1)
        if self.feedback.level == "full":
            return torch.zeros(len(rows), dtype=torch.bool)
        own = (answer.ids[:, :, None] == exclude[:, None, :]).any(-1)  # [N, L]
        gone = (pos >= depth).all(1) & ~own.any(1)  # K others in sight: out of the top K
        if self.goal_kind == "gone":
            return gone
        nb = self.neighbors[rows].flatten(1)
        seen = ((answer.ids[:, :, None] == nb[:, None, :]) & (nb[:, None, :] >= 0)).any(-1)
        kept = (answer.ids >= 0) & ~own
        return gone & ~(seen & kept).any(1)


def feedback_score(raise_rank: bool, gallery: Gallery, targets: torch.Tensor,
                   exclude: torch.Tensor, feedback: Feedback, ask: Callable,
                   keep: torch.Tensor | None = None, xi: float = 0.0,
                   goal: str | None = None) -> FeedbackScore:
    """The :class:`FeedbackScore` of B attacks on ``targets [B, m]`` (lists without ``exclude
    [B, e]``; ``keep``/``xi``: the SP term; ``goal``: see :data:`GOALS`); at top-k feedback,
    each target's clean picture is searched first through
    ``ask(images [B, m, C, H, W]) -> (answer, rows, sent)`` (the counted oracle) for its
    neighbourhood N(c) (when ``gallery.images`` gives None, the score reads C's presence
    alone)."""
    neighbors = None
    if feedback.level != "full":
        b, m = targets.shape
        images = gallery.images(targets.flatten())
        if images is None:  # no pictures of the targets to be had: C's presence alone
            neighbors = torch.full((b, m, 0), -1, dtype=torch.long)
        else:
            answer, _, sent = ask(images.reshape(b, m, *images.shape[1:]))
            neighbors = torch.full((b, m, answer.ids.shape[1]), -1, dtype=torch.long)
            neighbors[sent] = answer.ids
    return FeedbackScore(raise_rank, targets, exclude, feedback, len(gallery), neighbors, keep,
                         xi, goal)
