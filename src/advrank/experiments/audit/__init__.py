"""``advrank audit``: one model on one collection, everything a reviewer needs in one folder.

Measures retrieval quality (Recall@K, mAP), runs every attack kind (CA+, CA-, QA+, QA- and the
embedding shift ES by default) at a few eps in model-input pixel units, and writes

* ``report.json`` (through the store: resumable, locked, one cell per finished measurement,
  so an interrupted audit continues where it stopped): every figure plus the command, seed,
  commit, hardware and the model/data fingerprints;
* ``report.html`` (:mod:`advrank.reports.html`): one self-contained page with the tables,
  the rank-vs-eps plots and Fig. 1-style example panels (recomputed from the seed each time:
  the adversarial examples are not stored, only their figures).

With an upload pipeline, an index, a transfer source or a query budget, the report adds the
*deployed view* (:func:`deployed_view`): at the same eps and on the same attacked items, the
white-box ranks beside the ranks after the upload pipeline, exact search beside the index,
the source model's white-box attacks ranked by the audited one (transfer), and query-only
attacks through the local oracle (the search's answers alone), with their rank at 10%, 25%,
50% and 100% of the budget (``rank_vs_queries.png``). Transfer and query-only cells are keyed
by their settings (the source's fingerprint; the budget, feedback and optimiser), so adding
them to a finished audit resumes it and runs only them. With a writable catalog
(``--catalog --oracle URL --token-file F``) it adds the catalog rows: white-box CA± in the
lab, the same images after the service's ingestion, and query-only CA± through uploads,
each with the uploads and searches it used; every upload is deleted afterwards and listed.

The package, one job per file: :mod:`.settings` (what an audit runs: :class:`AuditConfig` and
its constants), :mod:`.experiment` (the experiment: :class:`Audit`, :func:`run_audit`, the
quick look's sizing), :mod:`.plan` (the probes and each cell's price), :mod:`.timing` (the
estimate, its corrections as cells finish, the progress bar), :mod:`.deployed` (the deployed
view: its query-only and transfer cells and their checks), :mod:`.catalog` (its catalog rows:
CA± uploaded through a writable service, ``--catalog``) and :mod:`.panels` (the example
panels).
"""

from advrank.experiments.audit.catalog import (
    CATALOG_VIEWS,
    CatalogLink,
    catalog_cells,
    check_catalog_cell,
)
from advrank.experiments.audit.deployed import (
    RANK_VIEWS,
    TOPK_VIEWS,
    check_query_cell,
    check_source,
    check_transfer_cell,
    deployed_view,
    deployed_worst,
    query_cells,
    transfer_cells,
)
from advrank.experiments.audit.experiment import (
    Audit,
    audit_summary,
    check_cell,
    fit_quick_look,
    retrieval_figures,
    run_audit,
)
from advrank.experiments.audit.job import AuditJob
from advrank.experiments.audit.panels import EXAMPLE_POOL, _largest_moves, example_panels
from advrank.experiments.audit.plan import (
    LONG_AUDIT_SECONDS,
    CellPlan,
    Work,
    plan_cells,
    probe_seconds,
)
from advrank.experiments.audit.settings import (
    AUDIT_ATTACKS,
    AUDIT_FORMAT,
    DEFAULT_AUDIT_EPS,
    IMPLIED_IDENTITY,
    QUERY_FRACTIONS,
    QUERY_PLOT,
    QUICK_ADVICE,
    QUICK_EPS,
    QUICK_MINUTES,
    RECALL_KS,
    REPORT_HTML,
    REPORT_JSON,
    AuditConfig,
    fingerprints_of,
)
from advrank.experiments.audit.timing import (
    EstimateBar,
    TimeModel,
    estimate_message,
    format_duration,
)

__all__ = [
    "AUDIT_ATTACKS", "AUDIT_FORMAT", "CATALOG_VIEWS", "CatalogLink", "catalog_cells",
    "check_catalog_cell", "DEFAULT_AUDIT_EPS", "EXAMPLE_POOL", "IMPLIED_IDENTITY",
    "LONG_AUDIT_SECONDS", "QUERY_FRACTIONS", "QUERY_PLOT", "QUICK_ADVICE", "QUICK_EPS",
    "QUICK_MINUTES", "RANK_VIEWS", "RECALL_KS", "REPORT_HTML", "REPORT_JSON", "TOPK_VIEWS",
    "_largest_moves", "Audit", "audit_summary", "AuditConfig", "AuditJob", "CellPlan",
    "check_cell", "check_query_cell", "check_source", "check_transfer_cell", "deployed_view",
    "deployed_worst", "EstimateBar", "estimate_message", "example_panels", "fingerprints_of",
    "fit_quick_look", "format_duration", "plan_cells", "probe_seconds", "query_cells",
    "retrieval_figures", "run_audit", "TimeModel", "transfer_cells", "Work",
]
