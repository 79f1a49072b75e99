"""The audit's text section (``--queries``, a model with a text tower): text-to-image
retrieval quality, CA+ / CA- with the texts as queries at every eps (§4 with texts: the
candidate from the gallery, Q from the text set, CA-'s from the candidate's "moderation"
texts), and example panels: the product photo before and after beside the text query's top
results. Its cells are keyed by the query set's SHA-256 (``text-retrieval|SHA`` and
``text|SHA|ATTACK|eps|w``), so adding the section, or another query set, to a finished audit
runs only them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from advrank.attacks.base import AttackKind
from advrank.errors import AdvrankError
from advrank.experiments.audit.settings import RECALL_KS, AuditConfig
from advrank.experiments.protocol import ColumnSelections, run_attack
from advrank.experiments.results import cell_key, check_attack_cell
from advrank.experiments.runner import Cell
from advrank.experiments.store import Store
from advrank.experiments.target import Target
from advrank.experiments.textqueries import load_text_queries, text_retrieval

PREFIX, RETRIEVAL = "text", "text-retrieval"


def text_key(sha: str, attack: str, eps: float, k: int) -> str:
    """The store key of a text cell: the picture cell's, prefixed with the query set's
    SHA-256 (16 hex digits)."""
    return f"{PREFIX}|{sha}|{cell_key(attack, eps, k)}"


def is_text_key(key: str) -> bool:
    return key.partition("|")[0] in (PREFIX, RETRIEVAL)


def check_text_cell(key: str, cell) -> str | None:
    """Why a stored text cell cannot be reused (None if it can)."""
    if key.partition("|")[0] == RETRIEVAL:
        if not isinstance(cell, dict):
            return f"a {type(cell).__name__}, not a mapping"
        for name in ("map", *(f"recall@{k}" for k in RECALL_KS)):
            value = cell.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    not 0.0 <= value <= 100.0:
                return f"{name} is {repr(value)[:40]}, not a percentage"
        return None
    return check_attack_cell(key.partition("|")[2].partition("|")[2], cell)


def text_kinds(kinds: dict[str, AttackKind]) -> list[str]:
    """The audit's attacks whose queries may be texts (CA+, CA-), or the one error."""
    names = [a for a, kind in kinds.items() if kind.text_queries]
    if not names:
        raise AdvrankError(f"--queries needs an attack whose queries may be texts (CA+, CA-) "
                           f"among {', '.join(kinds)}")
    return names


class TextSection:
    """The text cells of one audit: the query set embedded by the target's text tower, the
    text-capable kinds with it, one selection per kind shared by its eps cells."""

    def __init__(self, target: Target, config: AuditConfig, kinds: dict[str, AttackKind],
                 t: int, log: Callable[[str], None] = lambda msg: None):
        self.queries = load_text_queries(target, config.queries)
        self.kinds = {a: kinds[a].for_queries(self.queries) for a in text_kinds(kinds)}
        self.target, self.config, self.t = target, config, {}
        for a, kind in self.kinds.items():
            k = config.size(kind)
            kind.check_fits(k, 1, len(target.gallery))  # w fits the gallery and the texts
            self.t[a] = min(t, kind.available(target.gallery, k))
            if self.t[a] < 1:
                top = kind.options["top_fraction"]
                raise AdvrankError(f"no gallery item is in the top {top:.0%} of {k} of the "
                                   f"{len(self.queries)} texts: text {a} has no candidate; "
                                   "give more texts or a larger --top-fraction")
            if self.t[a] < t:
                log(f"audit: note: text {a}: T = {self.t[a]} (the gallery items its draw "
                    f"may pick, fewer than {t})")
        self.columns = {a: ColumnSelections(target.gallery, self.t[a], config.seed)
                        for a in self.kinds}

    @property
    def retrieval_key(self) -> str:
        return f"{RETRIEVAL}|{self.queries.info['text_queries_sha']}"

    def keys(self) -> list[tuple[str, float, str]]:
        """``(attack, eps, key)`` of every text attack cell."""
        config, sha = self.config, self.queries.info["text_queries_sha"]
        return [(a, e, text_key(sha, a, e, config.size(kind)))
                for a, kind in self.kinds.items() for e in config.eps_values]

    def done(self, store: Store) -> bool:
        """Whether every cell of the section is in ``store``."""
        return self.retrieval_key in store and all(key in store for _, _, key in self.keys())

    def cells(self, bar) -> list[Cell]:
        """The section's cells; ``bar()`` gives the audit's progress bar when a cell runs."""
        return [Cell(self.retrieval_key,
                     partial(text_retrieval, self.target, self.queries, RECALL_KS)),
                *(Cell(key, partial(self.cell, a, e, bar)) for a, e, key in self.keys())]

    def cell(self, attack: str, eps: float, bar: Callable[[], Any]) -> dict[str, Any]:
        kind, config = self.kinds[attack], self.config
        k = config.size(kind)
        selection, clean_cache = self.columns[attack](attack, kind, k)
        return run_attack(self.target.model, self.target.gallery, kind, float(eps), k,
                          self.t[attack],
                          seed=config.seed, batch_size=config.batch_size,
                          threat=config.threat(eps, kind), selection=selection,
                          progress=False, clean_cache=clean_cache, bar=bar()).summary()

    def summary(self, store: Store) -> dict[str, Any]:
        """The section as report.json and ``--json`` give it: the query set, its retrieval
        figures and one row per (attack, eps) cell."""
        rows = []
        for attack, eps, key in self.keys():
            cell = store.get(key)
            rows.append({"attack": attack, "eps": float(eps), "k": cell["k"],
                         "direction": self.kinds[attack].direction,
                         **{f: cell[f] for f in cell if f.endswith(("_before", "_after", "_se"))},
                         "num_attacks": cell["num_attacks"], "seconds": cell["seconds"]})
        return {**self.queries.info, "retrieval": store.get(self.retrieval_key),
                "attacks": rows}

    def panels(self, bar) -> list[dict[str, Any]]:
        """The example panels of the text attacks (the text query shown as the query)."""
        from advrank.experiments.audit.panels import example_panels

        return [panel for a, kind in self.kinds.items() for panel in example_panels(
            self.target, {a: kind}, self.config, self.t[a], bar)]
