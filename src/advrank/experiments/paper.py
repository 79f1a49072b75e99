"""The paper's own numbers (Zhou et al., ECCV 2020), to compare ours with.

``PAPER_TABLES[name][attack][eps] -> [figures for k = 1, 2, 5, 10]`` (percent, "after" ranks),
``PAPER_EPS[dataset]``: the paper's eps rows, and ``PAPER_ATTACKS``: its four attack kinds.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from advrank.core.meta import ModelMeta
from advrank.errors import AdvrankError

PAPER_ATTACKS = ("CA+", "CA-", "QA+", "QA-")
KS = (1, 2, 5, 10)
#: the eps rows of Tables 1-4 per dataset (pixel units); digits borrows MNIST's
PAPER_EPS = {"digits": (0.0, 0.01, 0.03, 0.1, 0.3), "mnist": (0.0, 0.01, 0.03, 0.1, 0.3),
             "fashion": (0.0, 0.01, 0.03, 0.1, 0.3), "sop": (0.0, 0.01, 0.03, 0.06)}
#: the metric each paper table was measured with
PAPER_METRIC = {"mnist": "cosine", "fashion": "cosine", "sop": "euclidean"}


# Tables 1-4 of Zhou et al. (ECCV 2020), transcribed: per table its name, what it measured and
# R@1, then a row per eps: the "after" ranks of CA+ | CA- | QA+ | QA-, each for w (CA) or m (QA)
# = 1, 2, 5, 10.
_TRANSCRIBED = """
eps   | CA+                 | CA-                 | QA+                 | QA-

[mnist] Table 1: MNIST, C2F1, cosine, triplet (R@1 = 99.1%)
0     | 50 50 50 50         | 2.1 2.1 2.1 2.1     | 50 50 50 50         | 0.5 0.5 0.5 0.5
0.01  | 44.6 45.4 47.4 47.9 | 3.4 3.2 3.1 3.1     | 45.2 46.3 47.7 48.5 | 0.9 0.7 0.6 0.6
0.03  | 33.4 37.3 41.9 43.9 | 6.3 5.9 5.7 5.6     | 35.6 39.2 43.4 45.8 | 1.9 1.4 1.1 1.1
0.1   | 12.7 17.4 24.4 30.0 | 15.4 14.9 14.8 14.7 | 14.4 21.0 30.6 37.2 | 5.6 4.4 3.7 3.5
0.3   | 2.1 9.1 13.0 17.9   | 93.9 93.2 93.0 92.9 | 6.3 11.2 22.5 32.1  | 8.6 6.6 5.3 4.8

[mnist-defended] Table 2: MNIST, C2F1, cosine, triplet, defensive (R@1 = 98.3%)
0     | 50 50 50 50         | 2.0 2.0 2.0 2.0     | 50 50 50 50         | 0.5 0.5 0.5 0.5
0.01  | 48.9 49.3 49.4 49.5 | 2.2 2.2 2.2 2.1     | 49.9 49.5 49.5 49.7 | 0.5 0.5 0.5 0.5
0.03  | 47.4 48.4 48.6 48.9 | 2.5 2.5 2.4 2.4     | 48.0 48.5 49.2 49.5 | 0.6 0.6 0.5 0.5
0.1   | 42.4 44.2 45.9 46.7 | 3.8 3.6 3.5 3.4     | 43.2 45.0 47.4 48.2 | 1.0 0.8 0.7 0.7
0.3   | 30.7 34.5 38.7 40.7 | 7.0 6.7 6.5 6.5     | 33.2 37.2 42.3 45.1 | 2.4 1.9 1.6 1.5

[fashion] Table 3 (top): Fashion-MNIST, C2F1, cosine, triplet (R@1 = 88.8%)
0     | 50 50 50 50         | 1.9 1.9 1.9 1.9     | 50 50 50 50         | 0.5 0.5 0.5 0.5
0.01  | 36.6 39.9 43.2 44.8 | 5.6 5.1 4.9 4.8     | 39.4 42.0 45.3 47.1 | 2.1 1.6 1.2 1.1
0.03  | 19.7 25.4 31.7 35.6 | 15.5 14.8 14.4 14.3 | 21.7 28.2 35.7 40.6 | 5.6 4.1 3.3 2.9
0.1   | 3.7 10.5 17.3 22.7  | 87.2 86.7 86.3 86.3 | 7.1 12.4 23.6 32.5  | 10.9 8.3 6.7 6.0
0.3   | 1.3 9.4 16.0 21.5   | 100 100 100 100     | 6.3 10.8 21.8 31.7  | 12.6 9.4 7.5 6.6

[fashion-defended] Table 3 (bottom): Fashion-MNIST, C2F1, cosine, triplet, defensive (R@1 = 79.6%)
0     | 50 50 50 50         | 1.2 1.2 1.2 1.2     | 50 50 50 50         | 0.5 0.5 0.5 0.5
0.01  | 48.9 48.9 49.3 49.3 | 1.4 1.4 1.4 1.4     | 49.4 49.9 49.9 50.0 | 0.5 0.5 0.5 0.5
0.03  | 47.1 47.9 48.3 48.3 | 2.0 1.9 1.8 1.8     | 48.3 49.1 49.5 49.8 | 0.7 0.6 0.6 0.6
0.1   | 42.4 43.5 44.5 44.8 | 4.6 4.2 4.0 3.9     | 45.4 47.2 48.7 49.2 | 1.4 1.2 1.1 1.1
0.3   | 32.5 35.4 37.5 38.2 | 11.2 10.5 10.1 10.0 | 39.3 42.6 46.5 47.8 | 3.9 3.3 3.0 2.9

[sop] Table 4 (top): SOP, ResNet-18, Euclidean, triplet (R@1 = 63.1%)
0     | 50 50 50 50         | 1.9 1.9 1.9 1.9     | 50 50 50 50         | 0.5 0.5 0.5 0.5
0.01  | 0.0 0.8 2.0 2.6     | 99.7 99.6 99.4 99.3 | 4.8 7.0 16.3 25.8   | 54.9 40.2 27.1 21.9
0.03  | 0.0 0.3 1.0 1.5     | 100 100 100 100     | 1.6 3.3 10.0 19.2   | 68.1 52.4 36.6 30.1
0.06  | 0.0 0.2 1.0 1.5     | 100 100 100 100     | 1.1 2.7 8.8 17.6    | 73.8 57.9 40.3 32.4
"""


def _parse_tables(text: str) -> dict[str, dict]:
    """``PAPER_TABLES`` from the transcription above (the paper's own layout)."""
    columns, *lines = text.strip().splitlines()
    attacks = [name.strip() for name in columns.split("|")[1:]]
    tables: dict[str, dict] = {}
    for line in lines:
        head = re.fullmatch(r"\[([\w-]+)\] .*\(R@1 = ([\d.]+)%\)", line)
        if head:
            table = tables[head[1]] = {"recall@1": float(head[2])}
            table.update({attack: {} for attack in attacks})
        elif line:
            eps, *cells = line.split("|")
            for attack, cell in zip(attacks, cells, strict=True):
                table[attack][float(eps)] = [float(v) for v in cell.split()]
    return tables


PAPER_TABLES = _parse_tables(_TRANSCRIBED)


def paper_value(table: str | None, attack: str, eps: float, k: int) -> float | None:
    """The paper's figure for a cell, or None where the paper has none."""
    if not table or table not in PAPER_TABLES or k not in KS:
        return None
    rows = PAPER_TABLES[table].get(attack, {})
    for e, vals in rows.items():
        if abs(e - eps) < 1e-9:
            return vals[KS.index(k)]
    return None


def paper_lookup(table: str | None) -> Callable[[str, float, int], float | None] | None:
    """What the report tables take to show the paper's figures beside ours:
    ``(attack, eps, k) -> figure or None`` for ``table``, None without a table."""
    if not table:
        return None
    return lambda attack, eps, k: paper_value(table, attack, eps, k)


def paper_eps(dataset: str) -> tuple[float, ...]:
    """The paper's eps rows for ``dataset``; refuses datasets the paper has no rows for."""
    if dataset not in PAPER_EPS:
        raise AdvrankError(f"the paper has no eps rows for dataset {dataset!r}; give "
                           "--eps-values")
    return PAPER_EPS[dataset]


def paper_table_for(meta: ModelMeta | None, choice: str | None = "auto") -> str | None:
    """Which paper table to print beside a grid: ``choice`` is a table name, ``none`` or
    ``auto`` (the table of the checkpoint's dataset, defended or not, when its metric is the
    one the paper used; None: no model yet, ``auto`` gives no table)."""
    if choice in (None, "none"):
        return None
    if choice != "auto":
        if not isinstance(choice, str) or choice not in PAPER_TABLES:
            raise AdvrankError(f"unknown paper table {choice!r}; choose from auto, none, "
                               f"{', '.join(PAPER_TABLES)}")
        return choice
    if meta is None:
        return None
    dataset = meta.dataset
    name = f"{dataset}-defended" if meta.defense else dataset
    if name in PAPER_TABLES and meta.metric == PAPER_METRIC.get(dataset):
        return name
    return None
