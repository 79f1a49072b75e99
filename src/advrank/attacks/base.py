"""The attack-kind unit: what every kind of attack answers, so that the protocol, grid,
transfer, universal, audit and report code never branch on "CA"/"QA"/"+"/"-".

A kind is one file under ``advrank/attacks/`` that subclasses :class:`AttackKind` and
registers itself in :data:`advrank.registry.ATTACKS`. It says

* its ``name`` and the name of its size parameter (``size_name``: "w", "m" or None);
* ``select(gallery, k, num_attacks, seed)``: the deterministic targets of T attacks (§4 rules);
* ``objective(embeddings, distance, part, clean)``: what PGD minimises, as an object whose
  ``value_and_grad(emb [B, D])`` returns ``([B], [B, D])``: the gradient with respect to the
  embeddings, so the ranking loss never enters the model's autograd graph;
* ``prepare(..., policy, memory)`` (optional): the objective under an
  :class:`~advrank.core.execution.ExecutionPolicy` (precision) and a memory share, and
  ``memory_per_attack`` for the protocol's sub-batching under the memory budget;
* ``measure(gallery, part, emb)``: per-attack figures ``{name: [B]}`` for the perturbed items'
  embeddings (pass the clean ones for "before"), and ``summarize`` for a table cell;
* optionally ``view(gallery, part, emb)``: the one ranking list an attack changes, for the
  example panels of a report (:class:`RankingView`);
* ``random_start``: whether PGD must start at a random point of the ball (an objective with
  zero gradient at the clean input, such as the embedding shift);
* ``ranked``: whether its figures include ``rank`` (the audit and its report show it).

Hyper-parameters go to the constructor (``ATTACKS.get("QA-")(xi=100)``), data to the calls.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from advrank.attacks.params import Param, params_from_defaults
from advrank.attacks.selection import Selection, check_num_attacks, check_size, draw_anchors
from advrank.core.checks import check_list, check_name
from advrank.core.distances import Distance
from advrank.core.execution import ExecutionPolicy
from advrank.core.gallery import Gallery
from advrank.core.metrics import nearest_neighbors
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS


class RankingObjective:
    """Base class: ``__call__(emb [B, D]) -> [B]``; ``value_and_grad`` -> (``[B]``, ``[B, D]``)."""

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def value_and_grad(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = emb.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self(e)
            (grad,) = torch.autograd.grad(loss.sum(), e)
        return loss.detach(), grad

    def grad(self, emb: torch.Tensor) -> torch.Tensor:
        """The gradient ``[B, D]`` alone (what PGD uses); objectives may skip the loss value."""
        return self.value_and_grad(emb)[1]


@dataclass
class RankingView:
    """One ranking list that an attack changes, as a report shows it: the list of
    ``query_emb [D]`` over the gallery, with member ``replace[0]``'s embedding replaced by
    ``replace[1] [D]`` (CA: the candidate by its perturbed self), ``exclude`` left out and
    ``highlight`` (the attack's targets) marked. ``query``: the gallery index of the query
    shown, or None when the perturbed image itself is the query or the query is a text
    (``query_text``)."""

    query_emb: torch.Tensor
    query: int | None = None
    replace: tuple[int, torch.Tensor] | None = None
    exclude: list[int] = field(default_factory=list)
    highlight: list[int] = field(default_factory=list)
    query_text: str | None = None


class QueryScore:
    """What a query-only attack of a kind minimises from an oracle's answers:
    ``score(answer, rows [N]) -> [N]`` for the answers of the attacks ``rows``, and
    :meth:`named_items`, the gallery ids whose positions it reads (so an oracle may answer with
    their ranks alone). ``QueryScore(fn)`` wraps a function of the answers' whole lists."""

    def __init__(self, fn: Callable[[Any, torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, answer: Any, rows: torch.Tensor) -> torch.Tensor:
        return self.fn(answer, rows)

    def named_items(self, rows: torch.Tensor) -> torch.Tensor | None:
        """``[N, j]``: the ids this score reads in the lists of the attacks ``rows [N]``;
        None: it reads every list whole."""
        return None


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of per-attack figures (float64)."""
    v = values.double()
    se = (v.std(unbiased=True) / math.sqrt(v.numel())).item() if v.numel() > 1 else 0.0
    return v.mean().item(), se


class AttackKind:
    """One kind of attack; see the module docstring for what a subclass defines."""

    name: ClassVar[str] = ""
    size_name: ClassVar[str | None] = None
    #: the hyper-parameters this kind accepts, declared once (see :mod:`advrank.attacks.params`)
    parameters: ClassVar[tuple[Param, ...]] = ()
    #: ``{name: default}`` of :attr:`parameters` (derived; old plugins may still set it alone)
    params: ClassVar[dict[str, Any]] = {}
    #: needs the clean embeddings of the attacked images in ``objective`` (e.g. to move away)
    needs_clean: ClassVar[bool] = False
    #: the per-attack figure that tables show, and whether the attack drives it "up" or "down"
    headline: ClassVar[str] = "rank"
    direction: ClassVar[str] = "down"
    #: the headline figure's unit in text output ("%" for ranks and recalls)
    unit: ClassVar[str] = "%"
    #: PGD must start at a random point of the ball (the objective's gradient vanishes at r = 0)
    random_start: ClassVar[bool] = False
    #: its figures include ``rank`` (a normalized rank, %), the figure an audit reports
    ranked: ClassVar[bool] = True
    #: it has a query-only form (:meth:`query_score`): attacked through an oracle
    query_only: ClassVar[bool] = False
    #: its queries may come from an outside query set, e.g. texts (:meth:`for_queries`)
    text_queries: ClassVar[bool] = False
    description: ClassVar[str] = ""
    #: set for each kind from its parameters (see ``__init_subclass__``)
    __signature__: ClassVar[inspect.Signature]

    def __init_subclass__(cls, **kwargs: Any):
        """Derive ``params`` from ``parameters`` (or, for an old-style kind that sets only a
        ``params`` dict, the declarations from it) and give the class a signature listing its
        parameters, so ``help()`` and ``inspect.signature`` show them."""
        super().__init_subclass__(**kwargs)
        if "parameters" not in cls.__dict__ and "params" in cls.__dict__:
            cls.parameters = params_from_defaults(cls.__dict__["params"])
        cls.params = {p.name: p.default for p in cls.parameters}
        cls.__signature__ = inspect.Signature([
            inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
            for p in cls.parameters])

    def __init__(self, **params: Any):
        unknown = {k for k, v in params.items() if v is not None} - set(self.params)
        if unknown:
            raise AdvrankError(f"{self.name} takes no {', '.join(sorted(unknown))} option"
                               + (f" (it takes: {', '.join(self.params)})" if self.params
                                  else ""))
        given = {p.name: p.check(params.get(p.name), self.name) for p in self.parameters}
        merged = {**self.params, **{k: v for k, v in given.items() if v is not None}}
        self.options = self.validate(merged)

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        """Check (and resolve) the hyper-parameters; subclasses refuse bad values here."""
        return options

    def check_size(self, k: int, n: int) -> None:
        check_size(k, n, self.size_name or "k")

    def sizes(self, ks: Sequence[int]) -> list[int]:
        """The sizes a run over ``ks`` uses: ``ks``, or just 1 for a kind without a size."""
        return list(ks) if self.size_name else [1]

    def check_fits(self, k: int, num_attacks: int, n: int) -> None:
        """Refuse a size k or a number of attacks T that an n-item gallery cannot hold: what
        :meth:`select` would refuse, known from |X| alone, so commands check it before the
        gallery is embedded. Kinds with further limits extend it."""
        check_num_attacks(num_attacks, n)
        self.check_size(k, n)

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        raise NotImplementedError

    def available(self, gallery: Gallery, k: int) -> int:
        """How many distinct attacked items the §4 draw has on ``gallery`` at size k (the
        most attacks :meth:`select` can draw): |X|, unless a kind's draw says fewer."""
        return len(gallery)

    def objective(self, embeddings: torch.Tensor, distance: Distance, part: Selection,
                  clean: torch.Tensor | None = None) -> RankingObjective:
        raise NotImplementedError

    def prepare(self, embeddings: torch.Tensor, distance: Distance, part: Selection,
                clean: torch.Tensor | None = None, policy: ExecutionPolicy | None = None,
                memory: int | None = None) -> RankingObjective:
        """:meth:`objective` under an execution policy (precision) with ``memory`` bytes for
        its working set; the default ignores both. What the protocol calls."""
        return self.objective(embeddings, distance, part, clean)

    def memory_per_attack(self, gallery_size: int, k: int, dim: int,
                          policy: ExecutionPolicy) -> int:
        """Bytes one attack's objective holds during PGD (beyond the model), used to size the
        sub-batches that fit the memory budget; 0 = unknown (out-of-memory splitting still
        applies)."""
        return 0

    def shared_memory(self, gallery_size: int, dim: int, distance: Distance,
                      policy: ExecutionPolicy) -> int:
        """Bytes held once for all attacks (e.g. a prepared copy of the gallery)."""
        return 0

    def measure(self, gallery: Gallery, part: Selection,
                emb: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def measure_topk(self, gallery: Gallery, part: Selection, emb: torch.Tensor, index,
                     depth: int) -> dict[str, torch.Tensor]:
        """The kind's ranks as a search ``index`` (:class:`~advrank.core.index.VectorIndex`)
        returns them: ``rank_topk [B]`` (0-based position among the index's top ``depth``,
        ``depth`` when beyond it) and ``in_topk [B]`` (100 when within it). Empty for kinds
        not scored by ranks."""
        return {}

    def query_score(self, gallery: Gallery, part: Selection, feedback, ask):
        """What a query-only attack of this kind minimises from an oracle's ``feedback``:
        ``score(answer, rows [N]) -> [N]``; ``ask`` sends further (counted) queries the score
        needs. Kinds without one are refused for ``--oracle``."""
        check_query_only(self)  # refuses a kind without one
        raise NotImplementedError

    def endpoint_form(self):
        """How this kind's query-only attacks are drawn and measured from what an endpoint
        shows (an :class:`~advrank.attacks.visible.EndpointForm`); None: it has none."""
        return None

    def for_queries(self, queries) -> AttackKind:
        """This kind with an outside query set (a :class:`~advrank.attacks.queryset.QuerySet`
        of texts) as its queries; kinds that perturb the query itself refuse it."""
        check_text_queries(self)
        raise NotImplementedError

    def view(self, gallery: Gallery, part: Selection, emb: torch.Tensor) -> RankingView:
        """The ranking list one attack (``part`` of length 1) changes, with the attacked item's
        embedding ``emb [1, D]`` (the clean one for "before")."""
        raise AdvrankError(f"{self.name} has no example view")

    def summarize(self, before: dict[str, torch.Tensor],
                  after: dict[str, torch.Tensor]) -> dict[str, float]:
        """``{fig}_before``/``_after`` and their ``_se`` for every measured figure ``[T]``."""
        out: dict[str, float] = {}
        for key in before:
            for when, values in (("before", before[key]), ("after", after[key])):
                out[f"{key}_{when}"], out[f"{key}_{when}_se"] = mean_se(values)
        return out

    def threat_for(self, threat):
        """``threat`` (a LinfThreatModel) with a random start when this kind needs one (ES:
        its objective's gradient vanishes at r = 0); unchanged otherwise."""
        if self.random_start and not threat.random_start:
            return dataclasses.replace(threat, random_start=True)
        return threat

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, **self.options}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name}{', ' + opts if opts else ''})"


class QueryKind(AttackKind):
    """A kind that perturbs a query q, a gallery member left out of its own ranking list, and
    has no size parameter (robrank's TMA, ES, LTM, GTM, GTT): ``k`` must be 1. Subclasses
    draw their targets in :meth:`draw` from the generator the anchors came from."""

    size_name = None
    ranked = False

    def check_size(self, k: int, n: int) -> None:
        if isinstance(k, bool) or k != 1:
            raise AdvrankError(f"{self.name} has no size parameter; use k = 1, got {k!r}")
        if n < 3:
            raise AdvrankError(f"{self.name} needs a gallery of at least 3 items, got {n}")

    def select(self, gallery: Gallery, k: int, num_attacks: int, seed: int = 0) -> Selection:
        anchors, gen = select_anchors(self, gallery, k, num_attacks, seed)
        return self.draw(gallery, anchors, gen)

    def draw(self, gallery: Gallery, anchors: torch.Tensor, gen: torch.Generator) -> Selection:
        return Selection(anchors)


def neighbors_of_query(gallery: Gallery, part: Selection, emb: torch.Tensor,
                       k: int) -> torch.Tensor:
    """The k nearest gallery members ``[B, k]`` of the (perturbed) queries ``emb [B, D]``,
    each query's own clean copy (its anchor) left out."""
    anchors = part.anchors.to(gallery.device)
    return nearest_neighbors(emb, gallery.embeddings, k, gallery.distance, anchors)


def recall_at_1(gallery: Gallery, part: Selection, emb: torch.Tensor,
                top1: torch.Tensor | None = None) -> torch.Tensor:
    """``[B]``: 100 where the nearest other member of q~ (``top1 [B]`` if already known)
    shares q's label, else 0."""
    if top1 is None:
        top1 = neighbors_of_query(gallery, part, emb, 1)[:, 0]
    labels = gallery.labels
    return 100.0 * (labels[top1] == labels[part.anchors.to(labels.device)]).float()


def topk_positions(ids: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor,
                   depth: int) -> torch.Tensor:
    """Positions ``[B, m]`` of ``targets [B, m]`` in the returned lists ``ids [B, L]`` once the
    members ``exclude [B, e]`` (the query itself, a clean copy) and the padding (-1) are
    dropped; ``depth`` where a target is not among the first ``depth`` kept."""
    kept = (ids >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(-1)  # [B, L]
    position = kept.long().cumsum(1) - 1  # [B, L]
    hit = (ids[:, None, :] == targets[:, :, None]) & kept[:, None, :]  # [B, m, L]
    found = torch.where(hit, position[:, None, :], depth).min(-1).values
    return found.clamp_max(depth)


def check_query_only(kind: AttackKind) -> AttackKind:
    """Refuse a kind without a query-only form (one that needs gradients) for an oracle."""
    if not kind.query_only:
        raise AdvrankError(f"{kind.name} has no query-only form (it needs gradients); "
                           f"query-only attacks: {kinds_with('query_only')}")
    return kind


def check_text_queries(kind: AttackKind) -> AttackKind:
    """Refuse a kind whose queries cannot be texts (one that perturbs the query itself)."""
    if not kind.text_queries:
        raise AdvrankError(f"{kind.name} perturbs picture queries; text queries go with the "
                           f"candidate attacks ({kinds_with('text_queries')})")
    return kind


def kinds_with(flag: str) -> str:
    """The registered kinds whose class attribute ``flag`` is true, comma-separated."""
    return ", ".join(n for n in ATTACKS.names() if getattr(ATTACKS.get(n), flag))


def check_ranked(kind: AttackKind, what: str) -> AttackKind:
    """Refuse a kind that is not scored by normalized ranks where ``what`` (transfer, the
    universal attack) reports ranks only."""
    if kind.headline != "rank":
        raise AdvrankError(f"{what} reports normalized ranks; {kind.name} is scored by "
                           f"{kind.headline} (use advrank attack or grid for it)")
    return kind


def get_attack(attack: str | AttackKind, **params: Any) -> AttackKind:
    """An attack kind by name (aliases such as the Unicode minus accepted) with its options;
    an :class:`AttackKind` instance passes through (then no options may be given)."""
    if isinstance(attack, AttackKind):
        if any(v is not None for v in params.values()):
            raise AdvrankError("give options to the attack kind's constructor, not twice")
        return attack
    return ATTACKS.get(attack)(**params)


def make_kinds(attacks: Sequence[str], options: dict) -> dict[str, AttackKind]:
    """Several attack kinds (a grid, a transfer matrix), each with those of ``options`` it
    accepts; an empty list, a name that is not a string or an option that none of them accepts
    is refused."""
    attacks = check_list(attacks, "attacks", lambda a: check_name(a, "attack"))
    options = {k: v for k, v in options.items() if v is not None}
    kinds = {}
    for name in dict.fromkeys(ATTACKS.canonical(a) for a in attacks):
        accepted = ATTACKS.get(name).params
        kinds[name] = get_attack(name, **{k: v for k, v in options.items() if k in accepted})
    unused = [k for k in options if not any(k in kind.params for kind in kinds.values())]
    if unused:
        raise AdvrankError(f"option {', '.join(unused)} applies to none of the attacks "
                           f"{', '.join(kinds)}")
    return kinds


def check_fits_all(kinds: Iterable[AttackKind], ks: Sequence[int], num_attacks: int | None,
                   n: int) -> None:
    """:meth:`AttackKind.check_fits` for every kind and size of a run (a grid, a matrix);
    ``num_attacks`` None means T = |X|."""
    for kind in kinds:
        for k in kind.sizes(ks):
            kind.check_fits(k, n if num_attacks is None else num_attacks, n)


def attack_names() -> list[str]:
    return ATTACKS.names()


def select_anchors(kind: AttackKind, gallery: Gallery, k: int, num_attacks: int,
                   seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """The §4 anchors (validated) and the generator the kind's further draws continue from."""
    n = len(gallery)
    kind.check_fits(k, num_attacks, n)
    gen = torch.Generator().manual_seed(seed)
    return draw_anchors(n, num_attacks, gen), gen
