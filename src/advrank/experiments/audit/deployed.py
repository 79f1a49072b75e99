"""The deployed view: the query-only and transfer cells (their keys and checks) and the
rows that put them beside the white-box, pipeline and index figures."""

from __future__ import annotations

from typing import Any

from advrank.attacks.base import AttackKind
from advrank.attacks.query import get_optimizer
from advrank.errors import AdvrankError
from advrank.experiments.audit.catalog import CATALOG_NOTE, catalog_rows
from advrank.experiments.audit.settings import (
    QUERY_PLOT,
    AuditConfig,
    fingerprints_of,
)
from advrank.experiments.results import cell_key, check_attack_cell
from advrank.experiments.store import Store, figures_problem
from advrank.experiments.target import Target
from advrank.oracles import parse_feedback
from advrank.oracles.base import Oracle


def _attack_part_of(key: str, cell, fields: int, what: str) -> tuple[list[str], str | None]:
    """``(the key's fields, why not)``: a deployed cell's key has ``fields`` fields, its
    fields 1-3 (attack, eps, k) those of the attack summary it holds."""
    parts = key.split("|")
    if len(parts) != fields:
        return parts, f"not a {what} cell's key"
    return parts, check_attack_cell("|".join(parts[1:4]), cell)


def check_query_cell(key: str, cell) -> str | None:
    """Why a stored query-only cell cannot be reused (None if it can): an attack summary
    whose budget, feedback and optimiser match its key, no attack past its budget, and its
    rank-vs-queries checkpoints within their range."""
    parts, problem = _attack_part_of(key, cell, 7, "query-only")
    if problem:
        return problem
    budget, used = cell.get("query_budget"), cell.get("queries_used_max")
    if [str(budget), cell.get("feedback"), cell.get("optimizer")] != parts[4:]:
        return "its budget, feedback and optimizer do not match its key"
    if not isinstance(used, int) or isinstance(used, bool) or not 0 <= used <= budget:
        return f"{repr(used)[:40]} queries used, budget {budget}"
    points = cell.get("checkpoints")
    if not isinstance(points, list) or not points:
        return "no rank-vs-queries checkpoints"
    for point in points:
        problem = figures_problem(point, ("rank_after", "rank_after_se"))
        q = point.get("queries") if isinstance(point, dict) else None
        if problem or not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= budget:
            return f"a checkpoint: {problem or f'{q!r} queries'}"
    return None


def check_transfer_cell(key: str, cell) -> str | None:
    """Why a stored transfer cell cannot be reused (None if it can): an attack summary made
    on the source its key names, with the source's own figures in range."""
    parts, problem = _attack_part_of(key, cell, 5, "transfer")
    if problem:
        return problem
    if cell.get("source_model") != parts[4]:
        return "its source model does not match its key"
    problem = figures_problem(cell.get("source"), ("rank_before", "rank_after",
                                                   "rank_after_se"))
    return f"the source's figures: {problem}" if problem else None

def query_cells(kinds: dict[str, AttackKind], config: AuditConfig
                ) -> list[tuple[str, float, str]]:
    """``(attack, eps, key)`` of each query-only cell: the kinds with a query-only form at
    every eps > 0 (none without a query budget)."""
    if config.query_budget is None:
        return []
    return [(a, e, config.query_key(a, e, config.size(kind))) for a, kind in kinds.items()
            if kind.query_only for e in config.eps_values if float(e) > 0]


def query_oracle(target: Target, config: AuditConfig) -> Oracle:
    """The oracle of the query-only rows: the local one, or the config's endpoint (whose
    ranks the deployed view reads: it must serve every depth)."""
    from advrank.oracles import make_oracle

    oracle = make_oracle(config.query_endpoint or "local", target, config.feedback or "full")
    if oracle.named_depth is None or oracle.named_depth < len(target.gallery):
        oracle.close()
        raise AdvrankError(f"the deployed view reads ranks: the endpoint {config.oracle} shows "
                           f"{oracle.max_depth} of {len(target.gallery)} results (start it "
                           f"with --max-k {len(target.gallery)})")
    return oracle


def check_source(source: Target | None, target: Target) -> Target | None:
    """The transfer source, refused unless it embeds the audited collection (same pictures,
    same order: the selections index both galleries)."""
    if source is None:
        return None
    if len(source.gallery) != len(target.gallery) or \
            fingerprints_of(source)["data_sha"] != fingerprints_of(target)["data_sha"]:
        raise AdvrankError(f"the transfer source {source.source} embeds another collection "
                           f"({len(source.gallery)} items) than the audited model "
                           f"({len(target.gallery)}); transfer needs one shared collection")
    return source


def transfer_cells(kinds: dict[str, AttackKind], config: AuditConfig,
                   source: Target | None) -> list[tuple[str, float, str]]:
    """``(attack, eps, key)`` of each transfer cell: every kind at every eps > 0, keyed by
    the source's fingerprint (none without a source)."""
    if source is None:
        return []
    return [(a, e, f"transfer|{cell_key(a, e, config.size(kind))}|{source.fingerprint}")
            for a, kind in kinds.items() for e in config.eps_values if float(e) > 0]


#: the deployed view's rows from a white-box cell: (view, suffix of its figures); ranks (% of
#: |X|) first, then positions in the top results of exact search and of the index
RANK_VIEWS = (("white-box", ""), ("pipeline", "_pipeline"))
TOPK_VIEWS = (("exact", "_exact"), ("index", "_index"), ("exact-pipeline", "_exact_pipeline"),
              ("index-pipeline", "_index_pipeline"))


def _view_rows(cell: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one white-box cell: its figures under each view's suffix, renamed to the
    plain names (``rank_pipeline_after`` -> ``rank_after`` in the ``pipeline`` row)."""
    rows = []
    for views, figures in ((RANK_VIEWS, ("rank",)), (TOPK_VIEWS, ("rank_topk", "in_topk"))):
        for view, suffix in views:
            if f"{figures[0]}{suffix}_after" not in cell:
                continue
            row = {**base, "view": view}
            for fig in figures:
                for end in ("_before", "_after", "_after_se"):
                    row[fig + end] = cell[f"{fig}{suffix}{end}"]
            rows.append(row)
    return rows


def deployed_view(st: Store, kinds: dict[str, AttackKind], config: AuditConfig,
                  index=None, source: Target | None = None,
                  service: tuple[str, str] | None = None) -> dict[str, Any] | None:
    """What a deployed search would see, at the audit's eps and on the same attacked items
    (None when the audit asked for none of it): ``rows``, one per (attack, eps, view) with
    ``view`` one of ``white-box``, ``pipeline`` (the white-box images after the upload
    pipeline), ``query-only`` (through the local oracle; with ``checkpoints``, the rank at
    each query mark), ``transfer`` (made white-box on ``source``, ranked by the audited
    model; ``source``: the source's own figures), ``exact``/``index`` (and ``*-pipeline``:
    position ``rank_topk`` and share ``in_topk`` within the top ``index_depth`` results),
    ``catalog-*`` (through the writable ``service``: its key and URL, see
    :mod:`advrank.experiments.audit.catalog`); and the settings behind them."""
    if config.query_budget is None and config.pipeline is None and index is None and \
            source is None and service is None:
        return None
    rows = []
    for attack, kind in kinds.items():
        k = config.size(kind)
        for eps in config.eps_values:
            base = {"attack": attack, "eps": float(eps), "k": k, "direction": kind.direction}
            cell = st.get(cell_key(attack, eps, k))
            if cell is not None:  # (a partial report: not run yet)
                rows += _view_rows(cell, base)
            moved = st.get(f"transfer|{cell_key(attack, eps, k)}|{source.fingerprint}") \
                if source is not None else None
            if moved is not None:
                rows.append({**base, "view": "transfer", "source": moved["source"],
                             **{key: moved[key] for key in ("rank_before", "rank_after",
                                                            "rank_after_se")}})
            query = st.get(config.query_key(attack, eps, k)) if config.query_budget else None
            if query is not None:
                rows.append({**base, "view": "query-only",
                             **{key: query[key] for key in ("rank_before", "rank_after",
                                                            "rank_after_se", "queries_used",
                                                            "queries_used_max",
                                                            "checkpoints")}})
            rows += _catalog_rows(st, config, service, base)
    settings = None if config.query_budget is None else {
        "budget": config.query_budget, "feedback": parse_feedback(config.feedback or "full")
        .describe(), "optimizer": get_optimizer(config.optimizer).name,
        "oracle": config.query_endpoint or "local", "marks": config.query_marks, "plot": QUERY_PLOT}
    first: dict[str, Any] = next((st.get(cell_key(a, e, config.size(kinds[a])))
                                  for a in kinds for e in config.eps_values
                                  if cell_key(a, e, config.size(kinds[a])) in st), {})
    return {"query": settings, "pipeline": config.upload_identity()["pipeline"],
            "through_pipeline": config.through_pipeline,
            "index": None if index is None else index.spec,
            "index_depth": first.get("index_depth"), "rows": rows,
            "catalog": _catalog_settings(config, service, rows),
            "transfer": None if source is None else {
                "source": source.source, "fingerprint": source.fingerprint,
                "model_sha": fingerprints_of(source)["model_sha"]}}


def _catalog_rows(st: Store, config: AuditConfig, service: tuple[str, str] | None,
                  base: dict[str, Any]) -> list[dict[str, Any]]:
    """The catalog rows of one (attack, eps): its upload cell's and its query cell's."""
    if service is None or not config.catalog:
        return []
    key = f"{cell_key(base['attack'], base['eps'], base['k'])}|{service[0]}"
    upload = st.get(f"catalog|{key}")
    query = st.get(f"catalog-query|{key}|{config.upload_budget}|{config.query_budget}")
    return [*([] if upload is None else catalog_rows(upload, base, False)),
            *([] if query is None else catalog_rows(query, base, True))]


def _catalog_settings(config: AuditConfig, service: tuple[str, str] | None,
                      rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the catalog rows ran through and used: the service, the budgets, every id
    uploaded (all deleted afterwards) and the sentence that explains the rows."""
    if service is None or not config.catalog:
        return None
    ids = sorted({i for r in rows if r["view"] in ("catalog-upload", "catalog-query")
                  for i in r["uploaded_ids"]})
    return {"service": service[1], "service_key": service[0],
            "upload_budget": config.upload_budget, "search_budget": config.query_budget,
            "uploaded_ids": ids, "deleted": True, "note": CATALOG_NOTE}


#: the deployed views whose ranks a deployed search would give (the white-box row is the
#: attack table's, and catalog-lab its copy beside the catalog's) and those that say what
#: its index shows
DEPLOYED_RANK_VIEWS = ("pipeline", "transfer", "query-only", "catalog-upload", "catalog-query")
INDEX_VIEWS = ("index", "index-pipeline")


def _gain(row: dict[str, Any], figure: str) -> float:
    """How far ``figure`` moved in the attack's favour: ranks fall and shares in the top
    results rise for a kind that succeeds downwards, the reverse for one that sinks."""
    move = row[f"{figure}_after"] - row[f"{figure}_before"]
    down = row.get("direction", "down") == "down"
    return (-move if down else move) if figure == "rank" else (move if down else -move)


def deployed_worst(deployed: dict[str, Any]) -> dict[str, Any]:
    """The deployed view's worst cases, for the verdict: ``rank``, the row of a deployed
    view (after the pipeline, transfer, query-only) whose rank moved furthest in its
    attack's favour, and ``topk``, the index row whose share of targets in the top
    ``depth`` results moved furthest (each None when the audit has no such row)."""
    def worst(views: tuple[str, ...], figure: str):
        rows = [r for r in deployed["rows"] if r["view"] in views and r["eps"] > 0
                and f"{figure}_after" in r]
        if not rows:
            return None
        row = max(rows, key=lambda r: _gain(r, figure))
        keep = ("attack", "eps", "view", "direction", f"{figure}_before", f"{figure}_after",
                "queries_used", "uploads_used", "searches_used", "num_attacks")
        return {**{k: row[k] for k in keep if k in row}, "gain": _gain(row, figure)}

    return {"rank": worst(DEPLOYED_RANK_VIEWS, "rank"), "topk": worst(INDEX_VIEWS, "in_topk"),
            "depth": deployed.get("index_depth"), "index": deployed.get("index")}
