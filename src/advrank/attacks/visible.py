"""Query-only attacks as an endpoint shows them (issue 29): each query-only kind's *form* says
how its targets are drawn from what the endpoint shows of the clean query, what the optimiser
minimises, and which of its figures a ranked list can show, read from the endpoint's answers
(:class:`~advrank.oracles.evaluation.EvaluationView`).

Targets come from the clean query's list as the endpoint returns it (``lists [T, L]``, each
query's own id left out), never from a ranking the attacker cannot see; K is the attacker's
visible depth (its ``topk:K``; 10 at full feedback):

* QA- (:class:`RankedForm`, sinking): C from the visible top K; C_SP the first G of the
  visible list outside C. Success: every member of C out of the top K.
* QA+ (raising): C from positions [K, ``PLUS_POOL`` * K) of the evaluation list, so that
  "C enters the top K" is observable; C_SP the first G of the visible list. Success: every
  member of C within the top K.
* ES (:class:`DisruptForm`): the clean top K is what the attack disrupts. Figures:
  ``overlap@k`` (% of the clean top K still in q~'s top K) and ``ndcg@k`` (q~'s top K scored
  with graded relevance K - clean position, %), and R(q~, q) (``rank``) where the view is
  full and the query is a gallery member.
* ORDER (:class:`~advrank.attacks.order.OrderForm`): the first k of the visible list (or
  k of its first ``pool``), in a seeded random target order. Figures: advorder's SRC at
  the kind's depth (``src``), and where the view is full Kendall's ``tau``.

Positions (``position``, the candidates' mean 0-based place among the others) read
"beyond D" as D where the view is censored; ``rank`` (% of |X|) and ``tau`` appear only where
the view holds exact ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from advrank.attacks.base import AttackKind, QueryScore
from advrank.attacks.selection import Selection
from advrank.errors import AdvrankError

#: QA+ candidates lie at positions [K, PLUS_POOL * K) of the clean query's list
PLUS_POOL = 10


class Pictures:
    """What a query-only score needs of the gallery: its ``size`` and the pictures of ids
    (``fetch(ids [N]) -> [N, C, H, W]`` or None: none to be had), for the top-k surrogate's
    neighbourhoods N(c)."""

    def __init__(self, size: int, fetch: Callable[[torch.Tensor], torch.Tensor | None]):
        self.size, self.fetch = int(size), fetch

    def __len__(self) -> int:
        return self.size

    def images(self, ids: torch.Tensor) -> torch.Tensor | None:
        return self.fetch(ids)


def check_lists(lists: torch.Tensor, start: int, stop: int, need: int, what: str) -> None:
    """Refuse lists whose positions [start, stop) hold fewer than ``need`` ids."""
    held = (lists[:, start:stop] >= 0).sum(1)
    if (held < need).any():
        raise AdvrankError(f"{what} needs {need} results at positions {start}..{stop - 1} of "
                           f"each query's list; the endpoint shows {lists.shape[1]} (raise "
                           "the service's max_k or lower K)")


class EndpointForm:
    """A kind's form (see the module docstring). ``list_figures``: its figures read the top-K
    lists; ``own_rank``: they read where the query's own id sits (full view only)."""

    list_figures: ClassVar[bool] = False
    own_rank: ClassVar[bool] = False
    #: the figure a top-k list always shows, and the way the attack drives it
    topk_headline: ClassVar[tuple[str, str]] = ("success", "up")

    def __init__(self, kind: AttackKind):
        self.kind = kind

    def list_depth(self, k_visible: int) -> int:
        """How deep the clean lists must be for :meth:`select`."""
        return k_visible

    def select(self, lists: torch.Tensor, anchors: torch.Tensor, own: torch.Tensor, size: int,
               k_visible: int, gen: torch.Generator) -> Selection:
        """The T attacks on the queries ``anchors [T]`` (own ids ``own [T]``, -1: not a
        member) from their clean ``lists [T, L]`` (own left out), drawing from ``gen``."""
        raise NotImplementedError

    def named(self, part: Selection) -> torch.Tensor | None:
        """``[B, j]``: the ids whose positions the figures read (None: none)."""
        return None

    def score(self, part: Selection, feedback, ask, pictures: Pictures) -> QueryScore:
        """What the optimiser minimises from the attacker's feedback; ``ask`` sends the
        further (counted) queries the score needs."""
        raise NotImplementedError

    def figures(self, reading, part: Selection, view) -> dict[str, torch.Tensor]:
        """The per-attack figures ``{name: [B]}`` of one reading of the endpoint."""
        raise NotImplementedError

    def headline(self, full: bool) -> str:
        return self.kind.headline


def exclude_of(part: Selection) -> torch.Tensor:
    """``[B, e]``: each query's own id to leave out of its lists (e = 0 without one)."""
    own = part.extra["own"].cpu()
    return own[:, None] if bool((own >= 0).all()) else own[:, None][:, :0]


class RankedForm(EndpointForm):
    """QA+ / QA- (see the module docstring)."""

    def __init__(self, kind: AttackKind):
        super().__init__(kind)
        self.raise_rank = bool(getattr(kind, "raise_rank"))  # noqa: B009  # QA's, not every kind's

    def list_depth(self, k_visible: int) -> int:
        return PLUS_POOL * k_visible if self.raise_rank else k_visible

    def select(self, lists, anchors, own, size, k_visible, gen):
        g = min(self.kind.options["g"], k_visible - (0 if self.raise_rank else size))
        if self.raise_rank:
            check_lists(lists, k_visible, PLUS_POOL * k_visible, size, "QA+")
            pool = lists[:, k_visible : PLUS_POOL * k_visible]
        else:
            check_lists(lists, 0, k_visible, size + max(g, 0), "QA-")
            pool = lists[:, :k_visible]
        valid = pool >= 0  # a short list: draw among the ids it holds
        keys = torch.rand(pool.shape, generator=gen).masked_fill(~valid, 2.0)
        targets = pool.gather(1, keys.argsort(1)[:, :size])
        sp = None
        if g > 0 and self.kind.options["xi"]:
            top = lists[:, :k_visible]
            in_c = (top[:, :, None] == targets[:, None, :]).any(-1)
            sp = top.gather(1, in_c.int().argsort(dim=1, stable=True)[:, :g])
        return Selection(anchors, targets, sp, {"own": own})

    def named(self, part):
        return part.targets if part.sp is None else torch.cat([part.targets, part.sp], 1)

    def score(self, part, feedback, ask, pictures):
        from advrank.attacks.feedback import feedback_score

        return feedback_score(self.raise_rank, pictures, part.targets, exclude_of(part),
                              feedback, ask, part.sp, self.kind.options["xi"])

    def figures(self, reading, part, view):
        m, k = part.targets.shape[1], view.k
        pos = reading.positions
        seen = pos[:, :m] < k
        met = seen.all(1) if self.raise_rank else ~seen.any(1)
        out = {"success": 100.0 * met.float(), "in_topk": 100.0 * seen.float().mean(1),
               "position": pos[:, :m].float().mean(1)}
        if view.full:
            out["rank"] = 100.0 * out["position"] / view.oracle.gallery_size
        if part.sp is not None:
            out["sp_in_topk"] = 100.0 * (pos[:, m:] < k).float().mean(1)
            if view.full:  # the worst of C_SP, as the white-box figure
                out["sp_rank"] = 100.0 * pos[:, m:].float().amax(1) / view.oracle.gallery_size
        return out

    def headline(self, full):
        return "rank" if full else "success"


def ndcg_at_k(top: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``[N]`` nDCG (%) of the lists ``top [N, K]`` against the clean lists ``clean [N, K]``:
    an id at clean position p has relevance K - p, one absent from it 0 (-1 pads count 0)."""
    k = clean.shape[1]
    rel_of = torch.arange(k, 0, -1, dtype=torch.float64)
    hit = (top[:, :, None] == clean[:, None, :]) & (clean[:, None, :] >= 0)
    rel = (hit.double() * rel_of).sum(-1)  # [N, K]: relevance of each returned id
    discount = 1.0 / torch.log2(torch.arange(top.shape[1], dtype=torch.float64) + 2)
    ideal = ((clean >= 0).double() * rel_of * discount[:k]).sum(1)
    return torch.where(ideal > 0, 100.0 * (rel * discount).sum(1) / ideal.clamp_min(1e-12),
                       100.0).float()


class DisruptForm(EndpointForm):
    """ES, the untargeted top-k disruption (see the module docstring)."""

    list_figures = True
    own_rank = True
    topk_headline = ("overlap@k", "down")

    def select(self, lists, anchors, own, size, k_visible, gen):
        check_lists(lists, 0, k_visible, k_visible, "ES")
        return Selection(anchors, None, None, {"own": own, "clean": lists[:, :k_visible]})

    def score(self, part, feedback, ask, pictures):
        """Sink the query's own copy and its clean list (a member), else its clean list; the
        goal is ``clear`` (no member of the clean list in sight), never the own copy's
        leaving alone (which stopped attacks with a tenth of the clean list still shown)."""
        from advrank.attacks.feedback import FeedbackScore

        clean, exclude = part.extra["clean"].cpu(), exclude_of(part)
        if exclude.shape[1]:
            return FeedbackScore(False, exclude, exclude[:, :0], feedback, len(pictures),
                                 clean[:, None, :], goal="clear")
        return FeedbackScore(False, clean, exclude, feedback, len(pictures),
                             torch.full((*clean.shape, 0), -1, dtype=torch.long), goal="clear")

    def figures(self, reading, part, view):
        from advrank.oracles.calibrate import overlap_at_k

        clean = part.extra["clean"].cpu()[:, : view.k]
        top = reading.top[:, : view.k]
        out = {"overlap@k": 100.0 * overlap_at_k(top, clean), "ndcg@k": ndcg_at_k(top, clean)}
        if reading.own is not None and bool((reading.own >= 0).all()):
            out["rank"] = 100.0 * reading.own.float() / view.oracle.gallery_size
        return out

    def headline(self, full):
        return "overlap@k"


def endpoint_form(kind: AttackKind) -> EndpointForm:
    """``kind``'s form, refused in one line for a kind without one."""
    form = kind.endpoint_form()
    if form is None:
        raise AdvrankError(f"{kind.name} has no form an endpoint can show (query-only kinds "
                           "with one: QA+, QA-, ES, ORDER)")
    return form


__all__ = ["PLUS_POOL", "DisruptForm", "EndpointForm", "Pictures", "RankedForm",
           "check_lists", "endpoint_form", "exclude_of", "ndcg_at_k"]
