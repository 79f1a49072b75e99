"""What an audit runs (:class:`AuditConfig`), its constants, and how its settings name
its cells, threat and identity."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from advrank.attacks.base import AttackKind, make_kinds
from advrank.attacks.query import get_optimizer
from advrank.attacks.query.budget import check_budget
from advrank.attacks.selection import num_attacks_for
from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_number
from advrank.errors import AdvrankError
from advrank.experiments.protocol import check_batch_size
from advrank.experiments.results import cell_key
from advrank.experiments.target import Target
from advrank.oracles import parse_feedback

AUDIT_FORMAT = "advrank-audit"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
#: the deployed view's rank-vs-queries plot (written when the query-only rows are on)
QUERY_PLOT = "rank_vs_queries.png"
#: the shares of the query budget at which the query-only attacks' best-so-far is measured
QUERY_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: eps for natural images, in [0, 1] pixel units of the model's input
DEFAULT_AUDIT_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
AUDIT_ATTACKS = ("CA+", "CA-", "QA+", "QA-", "ES")
RECALL_KS = (1, 2, 4, 8)
#: identity values of audits written before the setting existed
IMPLIED_IDENTITY = {"index": None, "pipeline": None, "through_pipeline": False,
                    "query_oracle": "local"}
#: uploads per query-only catalog attack (``--upload-budget``): the issue's seller budget
CATALOG_UPLOADS = 50
#: the quick look (``--quick [MINUTES]``): one eps (unless given), T per cell at most
#: QUICK_MAX_T and at least QUICK_MIN_T (both capped by |X|), sized to fit the time budget
QUICK_EPS = 8 / 255
QUICK_MAX_T, QUICK_MIN_T = 100, 10
#: the T a quick look tries between them, largest first
QUICK_STEPS = (80, 60, 50, 40, 30, 20)
QUICK_MINUTES = 5.0
#: how the long-run warning points to a shorter run (not said to a quick look)
QUICK_ADVICE = (f"for a quick look add --quick (one eps, T sized to fit about "
                f"{QUICK_MINUTES:g} min)")


@dataclass
class AuditConfig:
    """What an audit runs. ``num_attacks`` None: min(1000, |X|) per (attack, eps) cell (the
    one default rule of :func:`~advrank.attacks.selection.num_attacks_for`);
    ``steps``/``step_size`` None: the paper's eta/alpha for each eps; ``examples``: panels per
    attack (at the largest eps) showing the ``top`` results before and after;
    ``max_queries``: retrieval is measured with at most this many queries (a seeded sample
    of X, each left out of its own list) unless the collection has a query split;
    ``pipeline`` (``png``, ``jpeg:75``): the upload pipeline the adversarial images are also
    measured after (figures ``*_pipeline``), attacked through when ``through_pipeline``;
    ``query_budget`` (None: off): queries per attack of the query-only rows (the kinds with a
    query-only form, at every eps > 0, on the white-box cells' selections) through the local
    oracle at ``feedback`` (``full``, ``topk:K``, ``topk-scores:K``; None: full), optimised by
    ``optimizer``; ``oracle``: an endpoint (a URL) the query-only rows go through instead,
    calibrated against the audited model first (``endpoint_differs``: expected to differ),
    their figures read from its answers (with ``catalog``: the catalog's service, the
    query-only rows through the local oracle). ``quick`` (minutes, None: off): the quick look,
    whose T the audit sizes to fit that time (see :data:`QUICK_MAX_T`; ``num_attacks``, when
    given, caps it). ``queries`` (``text:FILE``, ``prompts:TEMPLATE``; None: off): the text
    section, for a model with a text tower (see :mod:`advrank.experiments.audit.text`).
    ``catalog``: the catalog rows (CA± uploaded to the writable service ``oracle``, see
    :mod:`advrank.experiments.audit.catalog`), query-only through at most ``upload_budget``
    uploads and ``query_budget`` searches per attack (no query budget: no such row)."""

    eps_values: Sequence[float] = DEFAULT_AUDIT_EPS
    attacks: Sequence[str] = AUDIT_ATTACKS
    k: int = 1
    num_attacks: int | None = None
    seed: int = 0
    batch_size: int = 256
    steps: int | None = None
    step_size: float | None = None
    examples: int = 1
    top: int = 5
    max_queries: int = 5000
    options: dict[str, Any] = field(default_factory=dict)
    pipeline: str | None = None
    through_pipeline: bool = False
    query_budget: int | None = None
    feedback: str | None = None
    optimizer: str = "random"
    oracle: str | None = None
    endpoint_differs: bool = False
    quick: float | None = None
    queries: str | None = None
    catalog: bool = False
    upload_budget: int = CATALOG_UPLOADS

    def validate(self, gallery_size: int | None = None) -> dict[str, AttackKind]:
        """Check every setting (before any work); returns the attack kinds."""
        if not self.eps_values:
            raise AdvrankError("give at least one eps value")
        for eps in self.eps_values:  # range checks, one line
            LinfThreatModel(float(eps), self.step_size, self.steps, pipeline=self.pipeline,
                            through_pipeline=self.through_pipeline)
        check_number(self.k, "k (w/m)", low=1, integer=True)
        check_number(self.examples, "examples per attack", low=0, high=20, integer=True)
        check_number(self.top, "results shown per list", low=1, high=50, integer=True)
        check_number(self.max_queries, "max queries", low=1, integer=True)
        check_batch_size(self.batch_size)
        if self.num_attacks is not None:
            check_number(self.num_attacks, "number of attacks", low=1, integer=True)
        if self.quick is not None:
            check_number(self.quick, "quick look minutes", low=0.0, low_open=True,
                         high=24 * 60)
        kinds = make_kinds(list(self.attacks), self.options)
        for kind in kinds.values():
            if not kind.ranked:
                raise AdvrankError(f"an audit reports normalized ranks; {kind.name} has none "
                                   "(use advrank attack or advrank robustness for it)")
        self.check_query(kinds)
        self.check_catalog(kinds)
        if self.queries is not None:
            from advrank.data.texts import parse_query_spec

            parse_query_spec(self.queries)
            if not any(kind.text_queries for kind in kinds.values()):
                raise AdvrankError(f"--queries needs an attack whose queries may be texts "
                                   f"(CA+, CA-) among {', '.join(kinds)}")
        return kinds

    def check_query(self, kinds: dict[str, AttackKind]) -> None:
        """The query-only settings: a budget, a feedback level and an optimiser, and at least
        one attack kind with a query-only form; feedback without a budget is refused."""
        if self.query_budget is None:
            if self.feedback is not None or (self.oracle is not None and not self.catalog):
                raise AdvrankError("feedback and an oracle apply to the query-only rows: give "
                                   "a query budget too (--query-budget B)")
            return
        check_budget(self.query_budget)
        parse_feedback(self.feedback or "full")
        get_optimizer(self.optimizer)
        if self.oracle is not None:
            from advrank.oracles import split_oracle_spec

            split_oracle_spec(self.oracle)
        if not self.catalog and not any(kind.query_only for kind in kinds.values()):
            raise AdvrankError(f"the query-only rows need an attack with a query-only form "
                               f"(QA+, QA-, ES) among {', '.join(kinds)}")

    def check_catalog(self, kinds: dict[str, AttackKind]) -> None:
        """The catalog settings: a service to upload to and a candidate attack (CA+, CA-)."""
        check_number(self.upload_budget, "uploads per attack", low=2, high=100_000,
                     integer=True)
        if not self.catalog:
            return
        from advrank.oracles import split_oracle_spec

        if self.oracle is None or split_oracle_spec(self.oracle)[0] not in ("http", "https"):
            raise AdvrankError("--catalog needs --oracle http://HOST:PORT (a service started "
                               "with --writable --token)")
        if not any(catalog_kind(kind) for kind in kinds.values()):
            raise AdvrankError(f"the catalog rows run CA+ or CA- (a candidate a seller "
                               f"uploads): none among {', '.join(kinds)}")
        if self.query_budget is not None:  # the query-only catalog rows
            check_number(self.query_budget, "searches per attack (--query-budget)",
                         low=2 * self.k, integer=True)
            if any(0 < float(e) < 1 / 255 for e in self.eps_values):
                raise AdvrankError("the query-only catalog rows upload 8-bit pictures: an eps "
                                   "below 1/255 cannot move one")

    @property
    def query_endpoint(self) -> str | None:
        """The endpoint the query-only rows go through (None: the local oracle); with
        ``catalog`` the oracle is the catalog's, whose ids move with uploads, and the
        query-only rows of QA+, QA-, ES go through the local oracle."""
        return None if self.catalog else self.oracle

    @property
    def query_marks(self) -> list[int]:
        """The query counts at which the rank-vs-queries curve is measured."""
        b = self.query_budget or 0
        return sorted({max(1, math.ceil(f * b)) for f in QUERY_FRACTIONS}) if b else []

    def query_key(self, attack: str, eps: float, k: int) -> str:
        """The store key of a query-only cell: the white-box cell's, prefixed, with the budget,
        feedback and optimiser (so turning the rows on resumes a finished audit)."""
        return (f"query|{cell_key(attack, eps, k)}|{self.query_budget}|"
                f"{parse_feedback(self.feedback or 'full').describe()}|"
                f"{get_optimizer(self.optimizer).name}")

    def attacks_for(self, n: int, note: Callable[[str], None] | None = None) -> int:
        """T per cell: as asked (at most |X|), or min(1000, |X|) (``note`` told when |X| caps
        it); a quick look's cap is cut to |X| (its T is sized before the cells run)."""
        asked = self.num_attacks
        if self.quick is not None:
            asked = min(n, asked or QUICK_MAX_T)
        return num_attacks_for(asked, n, note)

    def check_gallery(self, n: int) -> None:
        """Refuse T or k that do not fit a collection of ``n`` members (before it is
        embedded: ``load_target``'s ``check``); a quick look fits itself."""
        if self.quick is None and self.num_attacks is not None and self.num_attacks > n:
            raise AdvrankError(f"{self.num_attacks} attacks requested but the gallery has "
                               f"only {n} items; leave --num-attacks out (T = |X|) or use "
                               "--quick")
        if self.k >= n:
            raise AdvrankError(f"k = {self.k} needs a gallery of more than {self.k} items; it "
                               f"has {n}")


    def quick_bounds(self, n: int) -> tuple[int, int]:
        """The quick look's smallest and largest T on a collection of ``n`` members (the
        largest: ``num_attacks`` when given, else :data:`QUICK_MAX_T`)."""
        high = min(n, self.num_attacks or QUICK_MAX_T)
        return min(high, QUICK_MIN_T), high

    def size(self, kind: AttackKind) -> int:
        """The size an attack runs at: ``k`` (w or m), or 1 for a kind without one (ES)."""
        return kind.sizes([self.k])[0]

    def threat(self, eps: float, kind: AttackKind) -> LinfThreatModel:
        """The threat model of ``kind``'s attacks at ``eps``: the PGD steps, the kind's random
        start and the upload pipeline of these settings."""
        return LinfThreatModel(float(eps), self.step_size, self.steps, kind.random_start,
                               pipeline=self.pipeline, through_pipeline=self.through_pipeline)

    def upload_identity(self) -> dict[str, Any]:
        """The pipeline settings as the audit's identity records them (None: the float
        pixels)."""
        return {"pipeline": LinfThreatModel(0.0, pipeline=self.pipeline).pipeline_spec,
                "through_pipeline": self.through_pipeline}


def catalog_kind(kind: AttackKind) -> bool:
    """Whether ``kind`` is a candidate attack a seller's upload runs (CA+, CA-)."""
    from advrank.attacks.ca import CandidateAttack

    return isinstance(kind, CandidateAttack) and getattr(kind, "queries", None) is None


def fingerprints_of(target: Target) -> dict[str, str]:
    """SHA-256 of the model's weights and of the collection (computed if loading did not)."""
    from advrank.models.weights import state_fingerprint

    return {"model_sha": target.info.get("model_sha") or state_fingerprint(target.model),
            "data_sha": target.info.get("data_sha") or target.dataset.fingerprint()}
