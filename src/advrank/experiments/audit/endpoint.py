"""The endpoint-only audit (issue 29): ``advrank audit --oracle URL --data imagefolder:DIR``
with no model. The auditor holds a search endpoint (a vendor's visual-search API, a
production search whose model lives with another team) and a folder of pictures; nothing
else is known of the model.

The queries are T pictures of the folder (seeded), read at the input size the endpoint
states. Before any attack the endpoint is verified against itself (its determinism on those
queries, :mod:`advrank.oracles.calibrate`). Each query-only kind (QA+, QA-, ES, ORDER) draws
its targets from each query's list as the endpoint shows it (:mod:`advrank.attacks.visible`)
and is attacked at every eps with every optimiser asked for, within the query budget, every
figure read from the endpoint's answers (:mod:`advrank.experiments.endpoint`), its best so
far measured at 10%, 25%, 50% and 100% of the budget (success vs queries).

``report.json`` goes through the store (resumable, locked; the endpoint's ``/info`` identity
and the folder's fingerprint must match to resume) and ``report.html``
(:mod:`advrank.reports.endpoint`) keeps the verdict, the table, the success-vs-queries plot
and, per attack, an example: the attacked picture and the endpoint's lists before and after
(the service's thumbnails where its ``/info`` offers items, ids otherwise).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from advrank.attacks.base import AttackKind, make_kinds
from advrank.attacks.query import get_optimizer
from advrank.attacks.query.budget import check_budget
from advrank.attacks.threat import LinfThreatModel
from advrank.attacks.visible import Pictures, endpoint_form
from advrank.core.checks import check_number, format_eps
from advrank.core.runtime import derived_seed, progress_bar
from advrank.errors import AdvrankError
from advrank.experiments.audit.settings import DEFAULT_AUDIT_EPS, QUERY_FRACTIONS, REPORT_HTML
from advrank.experiments.endpoint import (
    EndpointRun,
    QuerySet,
    run_endpoint_attack,
    visible_k,
    visible_selection,
)
from advrank.experiments.runner import Cell, Experiment, progress_log, run
from advrank.experiments.store import Store, figures_problem
from advrank.oracles import parse_feedback
from advrank.oracles.evaluation import EvaluationView

ENDPOINT_FORMAT = "advrank-endpoint-audit"
ENDPOINT_ATTACKS = ("QA+", "QA-", "ES", "ORDER")
#: T when none is asked for: every attack costs up to a whole query budget of the endpoint's
DEFAULT_ENDPOINT_T = 50
SUCCESS_PLOT = "success_vs_queries.png"
#: the verdict's bar: a move of the top-k figure by this many points (success or overlap %,
#: SRC x 50) in the attack's favour
VULNERABLE_POINTS = 20.0


@dataclass
class EndpointAuditConfig:
    """What an endpoint-only audit runs: ``eps_values`` (pixels of the endpoint's input),
    ``attacks`` (query-only kinds with a form, see :mod:`advrank.attacks.visible`), ``k``
    (QA's m), ``order_k`` (ORDER's k), T = ``num_attacks`` (None: min(50, pictures)),
    ``query_budget`` per attack, ``feedback`` (what the optimiser sees), ``optimizers`` (each
    one a column of cells), ``top`` results per list in the ``examples`` (one per attack at
    the largest eps, or none), ``pipeline`` (what each upload goes through first), kind
    ``options``."""

    eps_values: Sequence[float] = DEFAULT_AUDIT_EPS
    attacks: Sequence[str] = ENDPOINT_ATTACKS
    k: int = 1
    order_k: int = 5
    num_attacks: int | None = None
    seed: int = 0
    batch_size: int = 64
    query_budget: int = 1000
    feedback: str = "topk:10"
    optimizers: Sequence[str] = ("random",)
    top: int = 10
    examples: bool = True
    pipeline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> dict[str, AttackKind]:
        """Every setting checked before any work; returns the attack kinds."""
        if not self.eps_values:
            raise AdvrankError("give at least one eps value")
        for eps in self.eps_values:
            check_number(float(eps), "eps (pixel units)", low=0.0, high=1.0, low_open=True)
        check_number(self.k, "m of QA", low=1, integer=True)
        check_number(self.order_k, "k of ORDER", low=2, integer=True)
        check_number(self.top, "results shown per list", low=1, high=50, integer=True)
        check_number(self.batch_size, "batch size", low=1, high=100_000, integer=True)
        if self.num_attacks is not None:
            check_number(self.num_attacks, "number of attacks", low=1, integer=True)
        check_budget(self.query_budget)
        parse_feedback(self.feedback)
        self.optimizers = [get_optimizer(o).name for o in self.optimizers] or ["random"]
        kinds = make_kinds(list(self.attacks), self.options)
        for kind in kinds.values():
            endpoint_form(kind)  # a kind an endpoint cannot show is refused here
        return kinds

    def size(self, kind: AttackKind) -> int:
        return self.order_k if kind.size_name == "k" else kind.sizes([self.k])[0]

    def key(self, attack: str, eps: float, size: int, optimizer: str) -> str:
        return (f"endpoint|{attack}|{float(eps):g}|{size}|{self.query_budget}|"
                f"{parse_feedback(self.feedback).describe()}|{optimizer}")

    @property
    def marks(self) -> list[int]:
        b = self.query_budget
        return sorted({max(1, math.ceil(f * b)) for f in QUERY_FRACTIONS})


def check_endpoint_cell(key: str, cell) -> str | None:
    """Why a stored endpoint cell cannot be reused (None if it can): a query-only summary
    whose attack, eps, size, budget, feedback and optimiser are its key's, its top-k
    figure finite, no attack past its budget, and its success-vs-queries checkpoints."""
    if not isinstance(cell, dict):
        return f"a {type(cell).__name__}, not a mapping"
    try:
        named = (f"endpoint|{cell['attack']}|{float(cell['eps']):g}|{cell['k']}|"
                 f"{cell['query_budget']}|{cell['feedback']}|{cell['optimizer']}")
    except (KeyError, TypeError, ValueError):
        named = None
    if named != key:
        return "its attack, eps, size, budget, feedback and optimizer do not match its key"
    head = cell.get("topk_headline")
    problem = figures_problem(cell, (f"{head}_before", f"{head}_after", f"{head}_after_se"))
    used = cell.get("queries_used_max")
    if problem or not isinstance(used, int) or not 0 <= used <= cell["query_budget"]:
        return problem or f"{used!r} queries used"
    if not isinstance(cell.get("checkpoints"), list) or not cell["checkpoints"]:
        return "no success-vs-queries checkpoints"
    return None


def effect(row: dict[str, Any], when: str = "after") -> float:
    """How far a row's top-k figure moved in the attack's favour (points)."""
    head, up = row["topk_headline"], row["topk_direction"] == "up"
    scale = 50.0 if head == "src" else 1.0
    move = (row[f"{head}_{when}"] - row[f"{head}_before"]) * scale
    return move if up else -move


class EndpointAudit(Experiment):
    """The endpoint-only audit's declaration (see the module docstring)."""

    name, filename, format = "audit", "report.json", ENDPOINT_FORMAT
    outputs = (REPORT_HTML, SUCCESS_PLOT)

    def __init__(self, oracle, queries: QuerySet, names: list[str], data: dict[str, Any],
                 config: EndpointAuditConfig, record: dict[str, Any] | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 differs: bool = False):
        self.kinds = config.validate()
        self.oracle, self.queries, self.names, self.data = oracle, queries, names, data
        self.config, self.extra_record = config, record or {}
        self.progress, self.log, self.differs = progress, log or (lambda m: None), differs
        self.view = EvaluationView(oracle, visible_k(oracle.feedback))
        self.pictures = Pictures(oracle.gallery_size, oracle.pictures)
        self.selections: dict[str, Any] = {}
        self.calibration: dict[str, Any] | None = None
        self.bar: Any = None

    def identity(self) -> dict[str, Any]:
        info = self.oracle.describe().get("service", {})
        return {"endpoint": {k: info.get(k) for k in ("api", "model", "fingerprint",
                                                     "gallery_size", "index", "pipeline")},
                **self.data, "num_attacks": len(self.queries), "seed": self.config.seed,
                "k": self.config.k, "order_k": self.config.order_k,
                "options": {a: kind.options for a, kind in self.kinds.items()},
                "upload_pipeline": self.config.pipeline}

    def record(self) -> dict[str, Any]:
        return {**self.extra_record, "audit": asdict(self.config),
                "oracle": self.oracle.describe()}

    def check_cell(self, key: str, cell) -> str | None:
        return check_endpoint_cell(key, cell)

    def cells(self, store: Store) -> list[Cell]:
        c = self.config
        return [Cell(c.key(a, e, c.size(kind), o), partial(self.cell, a, float(e), o))
                for a, kind in self.kinds.items() for e in c.eps_values for o in c.optimizers]

    @contextlib.contextmanager
    def running(self, store: Store):
        """Verify the endpoint against itself before any attack, then one progress bar."""
        from advrank.oracles.calibrate import calibrate

        self.calibration = calibrate(self.oracle, self.queries.images,
                                     differs=self.differs).describe()
        todo = sum(cell.key not in store for cell in self.cells(store))
        with progress_bar(total=todo * len(self.queries), desc="endpoint audit",
                          unit="attack", enabled=self.progress) as self.bar:
            yield
        self.bar = None

    def selection(self, attack: str):
        """The attacks of one kind (the same at every eps and optimiser)."""
        if attack not in self.selections:
            kind = self.kinds[attack]
            gen = torch.Generator().manual_seed(derived_seed(self.config.seed, "endpoint",
                                                             attack))
            self.selections[attack] = visible_selection(kind, self.view, self.queries,
                                                        self.config.size(kind), gen)
        return self.selections[attack]

    def cell(self, attack: str, eps: float, optimizer: str) -> dict[str, Any]:
        kind, c = self.kinds[attack], self.config
        threat = LinfThreatModel(eps, pipeline=self.oracle.pipeline).for_queries(
            self.oracle.eight_bit, c.query_budget)
        run_ = EndpointRun(kind, get_optimizer(optimizer), self.oracle, self.view, threat,
                           self.pictures, keep=c.examples and eps == max(map(float,
                                                                          c.eps_values)))
        selection = self.selection(attack)
        result = run_endpoint_attack(run_, self.queries, selection, eps, c.size(kind),
                                     c.seed, c.batch_size, checkpoints=c.marks)
        if self.bar is not None:
            self.bar.update(len(selection))
        form = run_.forms[0]
        head, direction = form.topk_headline
        out = {**result.summary(), "topk_headline": head, "topk_direction": direction,
               "checkpoints": [{"queries": q, **{k: v for k, v in f.items()
                                                 if k.endswith(("_after", "_after_se"))
                                                 or k == "queries_used"}}
                               for q, f in result.extra["checkpoints"].items()]}
        if run_.kept:
            out["example"] = self.example(run_, result, selection, out)
        return out

    def example(self, run_: EndpointRun, result, selection, row) -> dict[str, Any]:
        """The attack that moved its top-k figure furthest: its picture, perturbation and
        the endpoint's lists before and after (ids; thumbnails are fetched when the page is
        written)."""
        from advrank.reports.html import png_data

        head = row["topk_headline"]
        moves = [effect({**row, f"{head}_before": b, f"{head}_after": a})
                 for b, a in zip(result.before[head], result.after[head], strict=True)]
        i = max(range(len(moves)), key=lambda j: moves[j])
        clean, adv = self.queries.images[i : i + 1], run_.adversarial()[i : i + 1]
        own = self.queries.own[i : i + 1]
        lists = [self.view.lists(x, own, self.config.top)[0].tolist() for x in (clean, adv)]
        targets = [] if selection.targets is None else selection.targets[i].tolist()
        return {"query": self.names[i], "move": moves[i], "clean": png_data(clean[0]),
                "adversarial": png_data(adv[0]), "before": lists[0], "after": lists[1],
                "targets": targets, f"{head}_before": result.before[head][i],
                f"{head}_after": result.after[head][i]}

    def finished(self, store: Store, cell: Cell, value: Any, seconds: float, log) -> None:
        head = value["topk_headline"]
        with self.bar.external_write_mode():
            log(f"  {value['attack']} eps={format_eps(value['eps'])} {value['optimizer']}: "
                f"{head} {value[f'{head}_before']:.2f} -> {value[f'{head}_after']:.2f} "
                f"({value['queries_used']:.0f} queries, {seconds:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> dict[str, Any]:
        from advrank.reports.endpoint import endpoint_html, success_queries_png

        rows = [store.get(cell.key) for cell in self.cells(store)]
        summary = {"endpoint": self.oracle.describe(), "calibration": self.calibration,
                   "evaluation": self.view.describe(), "queries": len(self.queries),
                   "gallery_size": self.oracle.gallery_size, "verdict": verdict(rows),
                   "rows": [{k: v for k, v in r.items() if k != "example"} for r in rows]}
        plot = success_queries_png(summary["rows"])
        store.write_bytes(SUCCESS_PLOT, plot)
        examples = self.thumbnails(best_examples(rows))
        store.extra = {"summary": summary}
        store.flush()
        store.write_text(REPORT_HTML, endpoint_html(store.content(), examples, plot))
        return summary

    def thumbnails(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The examples with the endpoint's own pictures of their listed ids (None each
        where it shows none)."""
        from advrank.reports.html import png_data

        ids = sorted({i for e in examples for key in ("before", "after", "targets")
                      for i in e[key] if i >= 0})
        pictures = self.oracle.pictures(torch.tensor(ids, dtype=torch.long)) if ids else None
        shown = {} if pictures is None else {i: png_data(p) for i, p in zip(ids, pictures,
                                                                             strict=True)}
        return [{**e, "thumbnails": {str(i): shown.get(i) for i in ids}} for e in examples]


def best_examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per attack, the example of the optimiser whose attack moved furthest (the examples
    are the largest eps's), with its row's attack, eps, optimiser and top-k figure."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        e = r.get("example")
        if e and (r["attack"] not in best or e["move"] > best[r["attack"]]["move"]):
            best[r["attack"]] = {**e, **{k: r[k] for k in ("attack", "eps", "optimizer",
                                                           "topk_headline")}}
    return list(best.values())


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The endpoint's verdict: vulnerable where some cell moved its top-k figure by
    :data:`VULNERABLE_POINTS` or more; the strongest cell, and the smallest eps that did."""
    scored = sorted(((effect(r), r) for r in rows), key=lambda p: -p[0])
    strong = scored[0][1] if scored else None
    hits = [r for m, r in scored if m >= VULNERABLE_POINTS]
    first = min((r["eps"] for r in hits), default=None)
    keep = ("attack", "eps", "optimizer", "topk_headline", "topk_direction", "queries_used")
    return {"vulnerable": bool(hits), "threshold": VULNERABLE_POINTS, "first_eps": first,
            "strongest": None if strong is None else {
                **{k: strong[k] for k in keep}, "move": scored[0][0],
                "before": strong[f"{strong['topk_headline']}_before"],
                "after": strong[f"{strong['topk_headline']}_after"]}}


@dataclass
class EndpointAuditJob:
    """One endpoint-only audit: the endpoint ``oracle`` (a URL; ``schema``), the picture
    collection ``data`` (``imagefolder:DIR`` or ``csv:FILE``), the folder ``out``, the
    ``config``; ``force`` overwrites a report.html no report.json belongs to;
    ``endpoint_differs``: an endpoint that does not answer a picture twice alike is measured
    anyway (its calibration recorded, not refused)."""

    oracle: str
    data: str
    out: str | Path
    config: EndpointAuditConfig = field(default_factory=EndpointAuditConfig)
    schema: str | None = None
    data_root: str | None = None
    allow_outside_root: bool = False
    progress: bool = False
    log: Callable[[str], None] | None = None
    force: bool = False
    endpoint_differs: bool = False

    def run(self) -> dict[str, Any]:
        """Check everything, claim the folder, read /info, load the pictures at its input
        size and run (or resume) the audit; returns its summary."""
        from advrank.core.io import check_writable_dir
        from advrank.data import check_dataset_name
        from advrank.experiments.store import claim
        from advrank.oracles import make_oracle, preflight, split_oracle_spec
        from advrank.registry import ORACLES

        self.config.validate()
        if not ORACLES.get(split_oracle_spec(self.oracle)[0]).remote:
            raise AdvrankError("an audit without a model needs an endpoint (--oracle "
                               "http://HOST:PORT); the local oracle is the model itself")
        check_dataset_name(self.data)
        check_writable_dir(self.out)
        options = {"schema": self.schema} if self.schema else {}
        preflight(self.oracle, **options)
        with claim(self.out):
            oracle = make_oracle(self.oracle, None, self.config.feedback,
                                 pipeline=self.config.pipeline, **options)
            try:
                queries, names, data = self.pictures(oracle)
                audit = EndpointAudit(oracle, queries, names, data, self.config,
                                      self.record(), self.progress, self.log,
                                      self.endpoint_differs)
                audit.force = self.force
                summary = run(audit, self.out, self.log or progress_log(self.progress))
            finally:
                oracle.close()
        folder = Path(self.out)
        return {**summary, "report_html": str(folder / REPORT_HTML),
                "report_json": str(folder / "report.json")}

    def record(self) -> dict[str, Any]:
        from advrank.core.runtime import resolve_device, run_record

        return run_record(resolve_device("cpu"), self.config.seed)

    def pictures(self, oracle) -> tuple[QuerySet, list[str], dict[str, Any]]:
        """T readable pictures of the collection (a seeded draw), at the endpoint's input
        size: the query set, their names and the collection's identity."""
        from advrank.data import Geometry, load_dataset

        shape = oracle.info.input_size if oracle.info is not None else None
        if not shape:
            raise AdvrankError(f"the endpoint {self.oracle} states no input size in /info: "
                               "the pictures cannot be brought to it")
        geometry = Geometry(tuple(shape), None, "bilinear")  # the whole picture, resized
        dataset = load_dataset(self.data, "test", self.data_root, geometry=geometry,
                               allow_outside_root=self.allow_outside_root)
        n = len(dataset)
        t = min(self.config.num_attacks or DEFAULT_ENDPOINT_T, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        images, names, skipped = [], [], []
        for i in order.tolist():
            image, error = dataset.try_load(i)
            if image is None:
                skipped.append({"item": dataset.item_name(i), "error": error})
                continue
            images.append(image)
            names.append(dataset.item_name(i))
            if len(images) == t:
                break
        if len(images) < 2:
            raise AdvrankError(f"{self.data} holds {len(images)} readable pictures; an audit "
                               "needs at least 2")
        data = {"data": self.data, "data_sha": dataset.fingerprint(),
                "input_size": list(shape), "pictures": n, "unreadable": skipped[:100]}
        return QuerySet.outside(torch.stack(images)), names, data
