"""The audit's verdict in plain words: the figures a reader needs before any table.

Computed from what the audit measured (its summary rows and example panels) and stored in
``report.json`` beside them, so the page only renders it (:mod:`advrank.reports.html`).
"""

from __future__ import annotations

from typing import Any

#: a mean rank move (points of |X|, in the attack's direction of success) from which the
#: verdict calls the model vulnerable at that eps: a tenth of the ranking list
VULNERABLE_MOVE = 10.0


def success_move(row: dict[str, Any], before: str = "rank_before",
                 after: str = "rank_after") -> float:
    """How far a row's rank moved in its attack's direction of success (points, >= 0 when the
    attack helped): ``down`` kinds succeed by lowering the rank, ``up`` kinds by raising it."""
    move = row[before] - row[after]
    return move if row.get("direction", "down") == "down" else -move


def _worst_example(examples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The example panel whose rank moved furthest (the panels are each attack's largest)."""
    scored = [(success_move({"direction": e["direction"], "rank_before":
                             e["measure_before"]["rank"], "rank_after":
                             e["measure_after"]["rank"]}), e) for e in examples
              if "rank" in e.get("measure_before", {})]
    if not scored:
        return None
    move, e = max(scored, key=lambda pair: pair[0])
    target = e["targets"][0] if len(e.get("targets", [])) == 1 else None
    return {"attack": e["attack"], "eps": e["eps"], "move": move,
            "rank_before": e["measure_before"]["rank"], "rank_after": e["measure_after"]["rank"],
            "gallery_size": e["gallery_size"], "anchor": e["anchor"]["name"],
            "position_before": None if target is None else target["rank_before"] + 1,
            "position_after": None if target is None else target["rank_after"] + 1}


def _strongest(rows: list[dict[str, Any]], eps: float) -> dict[str, Any] | None:
    """The attack whose mean rank moved furthest at ``eps``."""
    at = [r for r in rows if r["eps"] == eps and "rank_before" in r]
    if not at:
        return None
    row = max(at, key=success_move)
    return {"attack": row["attack"], "eps": eps, "move": success_move(row),
            "rank_before": row["rank_before"], "rank_after": row["rank_after"],
            "direction": row.get("direction", "down")}


def audit_verdict(rows: list[dict[str, Any]], examples: list[dict[str, Any]],
                  ers: float | None = None) -> dict[str, Any]:
    """``rows``: the audit summary's one row per (attack, eps) cell; ``examples``: the panels'
    figures. Returns ``vulnerable`` (any mean move >= VULNERABLE_MOVE), ``first_eps`` (the
    smallest eps where that happens, or None), ``strongest`` (at the largest and the smallest
    eps), ``worst_example``, ``ers`` (None: not measured by an audit) and ``seconds`` (the
    attacks' total time)."""
    eps_values = sorted({r["eps"] for r in rows})
    vulnerable_at = [e for e in eps_values
                     if any(success_move(r) >= VULNERABLE_MOVE for r in rows if r["eps"] == e)]
    return {
        "vulnerable": bool(vulnerable_at), "threshold": VULNERABLE_MOVE,
        "first_eps": vulnerable_at[0] if vulnerable_at else None,
        "strongest_at_largest": _strongest(rows, eps_values[-1]) if eps_values else None,
        "strongest_at_smallest": _strongest(rows, eps_values[0]) if eps_values else None,
        "worst_example": _worst_example(examples), "ers": ers,
        "seconds": float(sum(r.get("seconds", 0.0) for r in rows)),
    }
