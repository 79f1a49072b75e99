"""The deployed view's catalog rows (issue 31): CA± through a writable service's uploads
(``advrank audit --catalog --oracle URL --token-file F``).

For each candidate kind the audit runs (CA+, CA-) at each eps > 0, on the white-box cell's
selection (the same attacked items):

* one **upload** cell (:func:`~advrank.experiments.catalog.run_catalog_attack`): the lab's
  white-box c~ (row ``catalog-lab``, float pixels), each uploaded through the service's
  ingestion and read from its queries' searches (row ``catalog-upload``);
* one **query** cell, when the audit has a query budget
  (:func:`~advrank.experiments.catalog_query.run_catalog_query_attack`, row
  ``catalog-query``): at most ``upload_budget`` uploads and ``query_budget`` searches per
  attack, no gradient.

Every upload is deleted once read (and on any exit): the catalog is left as found, and each
cell lists the ids it uploaded (ids are never reused, so ``id_bound`` grows). Cells are keyed
by the service (:func:`service_key`: its model fingerprint, pipeline and index), so adding
``--catalog`` to a finished audit resumes it and runs only them. The token is held by the
:class:`CatalogLink` alone: never in the config, the record or a cell.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import torch

from advrank.attacks.base import AttackKind
from advrank.errors import AdvrankError
from advrank.experiments.audit.settings import AuditConfig, catalog_kind
from advrank.experiments.results import cell_key, check_attack_cell
from advrank.experiments.store import figures_problem

#: the deployed view's catalog rows: the lab's figure, the same images after ingestion, and
#: query-only through uploads
CATALOG_VIEWS = ("catalog-lab", "catalog-upload", "catalog-query")
#: the report's sentence on them
CATALOG_NOTE = ("Through the catalog: the lab's white-box CA± image (catalog-lab), the same "
                "image uploaded through the service's ingestion (decode, pipeline, embedding, "
                "index insertion) and read from its queries' searches (catalog-upload), and a "
                "query-only attack that uploads variants and searches (catalog-query); every "
                "upload was deleted afterwards, so the catalog is left as it was found.")


def service_key(info) -> str:
    """A short hash of what the catalog rows depend on: the service's model fingerprint,
    pipeline and index kind (``info``: its :class:`~advrank.oracles.wire.InfoAnswer`)."""
    index = info.index or {}  # its kind, not its size (which grows with every upload)
    what = {"fingerprint": info.fingerprint, "pipeline": info.pipeline, "model": info.model,
            "index": [index.get("index"), index.get("metric")]}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


def catalog_cells(kinds: dict[str, AttackKind], config: AuditConfig, service: str | None
                  ) -> list[tuple[str, float, str]]:
    """``(attack, eps, key)`` of each catalog cell (none without a service): an upload cell
    per candidate kind and eps > 0, and a query cell beside it when there is a query
    budget."""
    if service is None or not config.catalog:
        return []
    out = []
    for a, kind in kinds.items():
        if not catalog_kind(kind):
            continue
        for e in config.eps_values:
            if float(e) > 0:
                base = cell_key(a, e, config.size(kind))
                out.append((a, e, f"catalog|{base}|{service}"))
                if config.query_budget is not None:
                    out.append((a, e, f"catalog-query|{base}|{service}|"
                                      f"{config.upload_budget}|{config.query_budget}"))
    return out


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_catalog_cell(key: str, cell) -> str | None:
    """Why a stored catalog cell cannot be reused (None if it can): an attack summary of its
    key's attack, eps and k, made through its key's service, the endpoint's figures in
    range, every upload deleted, and (a query cell) no attack past its budgets."""
    parts = key.split("|")
    query = parts[0] == "catalog-query"
    if len(parts) != (7 if query else 5):
        return "not a catalog cell's key"
    problem = check_attack_cell("|".join(parts[1:4]), cell) or figures_problem(
        cell, ("endpoint_before", "endpoint_after", "endpoint_after_se"))
    if problem:
        return problem
    cat = cell.get("catalog")
    if not isinstance(cat, dict) or cell.get("service_key") != parts[4]:
        return "its service does not match its key"
    ids = cat.get("uploaded_ids")
    if cat.get("held_after") != [] or not isinstance(ids, list) or \
            not all(_count(i) for i in ids):
        return "its uploads are not all listed and deleted"
    used = cat.get("uploads_used"), cat.get("searches_used")
    if not query:
        return None if all(_count(u) for u in used) else "no upload or search count"
    if not (parts[5].isdigit() and parts[6].isdigit()):
        return "not a catalog cell's key"
    budgets = [int(parts[5]), int(parts[6])]
    if [cat.get("uploads_per_attack"), cat.get("searches_per_attack")] != budgets:
        return "its upload and search budgets do not match its key"
    for counts, budget in zip(used, budgets, strict=True):
        if not isinstance(counts, list) or not all(_count(c) and c <= budget for c in counts):
            return f"uploads or searches past the budget of {budget}"
    return None


def catalog_rows(cell: dict[str, Any], base: dict[str, Any], query: bool
                 ) -> list[dict[str, Any]]:
    """The deployed view's rows of one catalog cell (ranks as % of |X|), each with the
    uploads and searches it used (totals over its attacks) and the ids it uploaded."""
    cat = cell["catalog"]
    used = {"uploads_used": int(sum(cat["uploads_used"]) if query else cat["uploads_used"]),
            "searches_used": int(sum(cat["searches_used"]) if query else
                                 cat["searches_used"]),
            "uploaded_ids": cat["uploaded_ids"], "num_attacks": cell["num_attacks"]}
    if query:
        used.update(uploads_per_attack=cat["uploads_per_attack"],
                    searches_per_attack=cat["searches_per_attack"])

    def row(view: str, fig: str) -> dict[str, Any]:
        return {**base, "view": view, **used, **{f"rank{end}": cell[f"{fig}{end}"]
                                                 for end in ("_before", "_after", "_after_se")}}

    if query:
        return [row("catalog-query", "endpoint")]
    return [row("catalog-lab", "rank"), row("catalog-upload", "endpoint")]


def upload_cell(audit, link: CatalogLink, attack: str, eps: float) -> dict[str, Any]:
    """The upload cell of one (attack, eps) of ``audit`` (an
    :class:`~advrank.experiments.audit.Audit`): its white-box cell's selection attacked in
    the lab as that cell attacks it, each c~ uploaded, read and deleted."""
    from advrank.experiments.catalog import run_catalog_attack
    from advrank.experiments.protocol import attack_batches

    kind, config, target = audit.kinds[attack], audit.config, audit.target
    k = config.size(kind)
    selection, _ = audit.columns(attack, kind, k)
    threat = kind.threat_for(config.threat(eps, kind))
    batches = attack_batches(target.model, target.gallery, kind, threat, selection,
                             config.seed, config.batch_size, False, k=k)
    with link.client(len(selection)) as client:
        result = run_catalog_attack(target.model, target.gallery, kind, client, float(eps), k,
                                    len(selection), seed=config.seed,
                                    batch_size=config.batch_size, threat=threat,
                                    progress=False, batches=batches)
    if audit.bar is not None:
        audit.bar.update(len(selection))
    return {**result.summary(), "service_key": link.key}


def query_cell(audit, link: CatalogLink, attack: str, eps: float) -> dict[str, Any]:
    """The query cell of one (attack, eps) of ``audit``: query-only CA± through uploads on
    its white-box cell's selection, at most ``upload_budget`` uploads and ``query_budget``
    searches per attack."""
    from advrank.experiments.catalog_query import run_catalog_query_attack

    kind, config, target = audit.kinds[attack], audit.config, audit.target
    k = config.size(kind)
    selection, _ = audit.columns(attack, kind, k)
    uploads = config.upload_budget
    with link.client(len(selection) * uploads) as client:
        result = run_catalog_query_attack(target.model, target.gallery, kind, client,
                                          float(eps), k, len(selection), uploads=uploads,
                                          searches=config.query_budget, seed=config.seed,
                                          selection=selection)
    if audit.bar is not None:
        audit.bar.update(len(selection))
    return {**result.summary(), "service_key": link.key}


class CatalogLink:
    """The audit's writable service at ``url`` (``token`` for its writes, held here alone):
    checked before any work (:meth:`check`, :meth:`check_size`), then the catalog cells'
    clients and their probe."""

    def __init__(self, url: str, token: str | None):
        if not isinstance(token, str) or not token.strip():
            raise AdvrankError("--catalog needs --token-file FILE or --token TOKEN (the bearer "
                               "token of the service's writes)")
        self.url, self._token = url, token.strip()
        self.oracle: Any = None
        self.info: Any = None

    def __repr__(self) -> str:  # never the token
        return f"CatalogLink({self.url!r})"

    def check(self) -> None:
        """The service answers and takes uploads (its /info says writable)."""
        from advrank.oracles import preflight
        from advrank.oracles.http import HttpOracle

        preflight(self.url)
        if self.oracle is None:
            self.oracle = HttpOracle(self.url, "topk:1")
        self.info = self.oracle.read_info()
        if not self.info.writable:
            self.close()
            raise AdvrankError(f"the service at {self.url} takes no uploads (its /info says "
                               "writable: false; start it with --writable --token)")

    def check_size(self, n: int) -> None:
        """The service holds the local collection's ``n`` items (ids from 0)."""
        if self.info.gallery_size != n or self.info.id_bound < n:
            raise AdvrankError(f"the service at {self.url} holds {self.info.gallery_size} "
                               f"items, the local gallery {n}: serve the same checkpoint and "
                               "data (items added and removed since are fine)")

    @property
    def key(self) -> str:
        """The service's :func:`service_key` (its /info read first when not yet)."""
        if self.info is None:
            self.check()
        return service_key(self.info)

    def client(self, uploads: int):
        """A :class:`~advrank.oracles.catalog.CatalogClient` of at most ``uploads`` uploads
        (a context manager: it deletes what it still holds on exit)."""
        from advrank.oracles.catalog import CatalogClient

        if self.oracle is None:
            self.check()
        return CatalogClient(self.oracle, self._token, uploads)

    def round_seconds(self, picture: torch.Tensor, w: int) -> float:
        """Seconds of one upload, its ``w`` searches and its deletion (the unit of catalog
        work), timed on ``picture [C, H, W]`` after an untimed round (the first pays the
        connections' set-up)."""
        from advrank.experiments.catalog import EndpointReader

        with self.client(2) as client:
            reader = EndpointReader(client, self.info.gallery_size)

            def one() -> float:
                start = time.perf_counter()
                new = client.upload(picture)
                for _ in range(w):
                    reader.places(picture, [new, 0])
                client.delete(new)
                return time.perf_counter() - start

            one()
            return one()

    def close(self) -> None:
        if self.oracle is not None:
            self.oracle.close()
            self.oracle = None
