"""The small HTML pieces every section of the audit's page uses (escaping, eps as grey
levels, tables, direction arrows)."""

from __future__ import annotations

import html
from fractions import Fraction
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def eps_text(eps: float) -> str:
    """``8/255 (0.0314)`` when eps is a whole number of grey levels, else ``0.03``."""
    levels = Fraction(eps).limit_denominator(255) * 255
    if eps > 0 and levels.denominator == 1 and abs(float(levels) / 255 - eps) < 1e-9:
        return f"{levels.numerator}/255 ({eps:.4f})"
    return f"{eps:g}"


def table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A table (scrolling sideways on a narrow screen); the first ``left`` columns are
    left-aligned."""
    head = "".join(f'<th{" class=l" if i < left else ""}>{h}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td{" class=l" if i < left else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def arrow(direction: str) -> str:
    """The direction in which an attack's rank moves when it succeeds, as a coloured arrow."""
    return '<b class="down">↓</b>' if direction == "down" else '<b class="up">↑</b>'
