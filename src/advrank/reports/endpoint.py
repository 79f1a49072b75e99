"""The endpoint-only audit's page (``report.html`` of ``advrank audit --oracle URL --data
DIR`` with no model) and its success-vs-queries plot: one self-contained file (images as
data URIs, no script, the same style and policy as the model audit's page,
:mod:`advrank.reports.html`)."""

from __future__ import annotations

from typing import Any

from advrank.reports.html import (
    CSP,
    STYLE,
    _label,
    _provenance,
    _table,
    eps_text,
    esc,
    png_data_bytes,
)
from advrank.reports.plots import _figure, _png

#: how each top-k figure reads in words
FIGURE_WORDS = {"success": "attacks that succeeded (%)", "overlap@k": "overlap with the clean "
                "top k (%)", "src": "SRC (advorder's τ_N)"}


def success_queries_png(rows: list[dict[str, Any]]) -> bytes:
    """One panel per attack: its top-k figure (success %, overlap %, SRC) of the best
    candidate queried so far at each checkpoint of the budget, from the clean figure at 0
    queries; one line per (optimiser, eps)."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    fig = _figure(max(4.8, 4.2 * len(attacks)), 4.0)
    axes = fig.subplots(1, max(1, len(attacks)), squeeze=False)[0]
    for ax, attack in zip(axes, attacks, strict=False):
        mine = [r for r in rows if r["attack"] == attack]
        head = mine[0]["topk_headline"]
        for r in sorted(mine, key=lambda r: (r["optimizer"], r["eps"])):
            points = r["checkpoints"]
            ax.plot([0] + [p["queries"] for p in points],
                    [r[f"{head}_before"]] + [p[f"{head}_after"] for p in points], marker="o",
                    label=f"{r['optimizer']}, ε = {r['eps']:.4g}")
        arrow = "↑" if mine[0]["topk_direction"] == "up" else "↓"
        ax.set_title(f"{attack}: {head} ({arrow} = the attack succeeds)", fontsize=10)
        ax.set_xlabel("queries per attack")
        ax.set_ylabel(FIGURE_WORDS.get(head, head))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    return _png(fig)


def _figure_text(row: dict[str, Any], when: str) -> str:
    head = row["topk_headline"]
    digits = 2 if head == "src" else 1
    return f"{row[f'{head}_{when}']:.{digits}f}"


def _header(report: dict[str, Any]) -> str:
    s, cfg = report["summary"], report["config"]
    service = s["endpoint"].get("service", {})
    name = service.get("model") or s["endpoint"].get("url", "the endpoint")
    ev = s["evaluation"]
    view = "exact ranks" if ev["censored_at"] is None else f"top {ev['censored_at']}"
    kpis = [("gallery (items)", f"{s['gallery_size']:,}"), ("pictures attacked",
            f"{s['queries']}"), ("figures read from", view), ("attacker sees",
            s["endpoint"].get("feedback", "?"))]
    kpi = "".join(f"<div>{esc(k)}<b>{esc(v)}</b></div>" for k, v in kpis)
    return (f"<h1>advrank endpoint audit: {esc(name)}</h1><p class=sub>"
            f"<code>{esc(s['endpoint'].get('url', ''))}</code> with the pictures of "
            f"<code>{esc(cfg.get('data'))}</code>, {esc(cfg.get('date', ''))}; no model: every "
            f"figure is read from the endpoint's own answers</p><div class=kpi>{kpi}</div>")


def _verdict(report: dict[str, Any]) -> str:
    v, s = report["summary"]["verdict"], report["summary"]
    k = s["evaluation"]["k"]
    strong = v.get("strongest")
    if v["vulnerable"]:
        lines = [f"<p class=big>Vulnerable: from ε = {esc(eps_text(v['first_eps']))} a "
                 f"query-only attack moves what the endpoint shows in its top {k} by at least "
                 f"{v['threshold']:.0f} points.</p>"]
    else:
        lines = [f"<p class=big>No query-only attack moved the endpoint's top {k} by "
                 f"{v['threshold']:.0f} points or more at the budgets tested.</p>"]
    if strong:
        head = strong["topk_headline"]
        lines.append(f"<p>Strongest: <b>{esc(strong['attack'])}</b> with "
                     f"<code>{esc(strong['optimizer'])}</code> at ε = "
                     f"{esc(eps_text(strong['eps']))}: {esc(FIGURE_WORDS.get(head, head))} "
                     f"{strong['before']:.2f} → {strong['after']:.2f}, within "
                     f"{strong['queries_used']:.0f} queries per attack on average.</p>")
    cal = s.get("calibration") or {}
    figures = ", ".join(f"{n} {x:.2f}" for n, x in cal.get("figures", {}).items())
    lines.append(f"<p class=note>The endpoint was verified first: {esc(figures)} on "
                 f"{cal.get('pictures', 0)} pictures ({cal.get('queries', 0)} queries)"
                 + ("; it differs beyond tolerance, as declared" if cal.get("failed") else "")
                 + ".</p>")
    cls = "verdict" if v["vulnerable"] else "verdict ok"
    return f'<h2>Verdict</h2><div class="{cls}" id="verdict">{"".join(lines)}</div>'


def _rows(report: dict[str, Any]) -> str:
    s = report["summary"]
    rows = []
    for r in s["rows"]:
        head = r["topk_headline"]
        others = "; ".join(f"{esc(key[:-6])} {r[key[:-6] + '_before']:.2f} → {r[key]:.2f}"
                           for key in r if key.endswith("_after") and key != f"{head}_after"
                           and not key.startswith("local:"))
        rows.append([esc(r["attack"]), esc(eps_text(r["eps"])), f"<code>{esc(r['optimizer'])}"
                     "</code>", f"{esc(head)}: {_figure_text(r, 'before')} → "
                     f"<b>{_figure_text(r, 'after')}</b>", f"{r['queries_used']:.0f}",
                     f"<span class=note>{others}</span>"])
    ev = s["evaluation"]
    view = ("its exact ranks" if ev["censored_at"] is None else
            f"its first {ev['censored_at']} results (a position beyond reads as "
            f"{ev['censored_at']}: censored)")
    return (f"<h2>Attacks</h2><p class=note>Each row: {s['queries']} attacks, each within "
            f"{s['rows'][0]['query_budget']:,} queries; the top-k figures at k = {ev['k']}. "
            f"Read from {esc(view)}, by {ev['evaluation_queries']:,} queries outside the "
            "budgets. QA+ succeeds when its candidate enters the top k, QA− when it leaves "
            "it; ES lowers the overlap with the clean top k; ORDER raises SRC.</p>"
            + _table(["attack", "ε", "optimiser", "top-k figure", "queries used",
                      "other figures"], rows, left=1))


def _list(ids: list[int], thumbs: dict[str, str | None], targets: set[int]) -> str:
    out = []
    for rank, i in enumerate(ids):
        if i < 0:
            continue
        src = thumbs.get(str(i))
        hit = " class=hit" if i in targets else ""
        image = f'<img class="pix" src="{src}" alt="item {i}">' if src else \
            f'<img src="{png_data_bytes(_blank())}" alt="item {i} (no picture)">'
        out.append(f"<figure{hit}>{image}<figcaption>{_label(f'#{rank + 1}')}"
                   f"{_label(f'id {i}')}</figcaption></figure>")
    return "".join(out)


def _blank() -> bytes:
    """A 1 x 1 grey PNG: the place of a result whose picture the endpoint does not show."""
    import base64

    return base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVQI12N4DwAB"
                            "AQEAWPxPGgAAAABJRU5ErkJggg==")


def _example(e: dict[str, Any]) -> str:
    row = e
    head = row["topk_headline"]
    targets = set(e["targets"])
    top = (f'<figure><img class="pix" src="{e["clean"]}" alt="query"><figcaption>'
           f'{_label("query")}{_label(e["query"])}</figcaption></figure>'
           f'<figure><img class="pix" src="{e["adversarial"]}" alt="adversarial"><figcaption>'
           f'{_label("adversarial")}{_label("(sent)")}</figcaption></figure>')
    lists = "".join(f'<div class="row"><span class="rowlabel">{when}</span>'
                    f'{_list(e[when], e["thumbnails"], targets)}</div>'
                    for when in ("before", "after"))
    return (f'<div class="panel"><h3>{esc(row["attack"])} at ε = {esc(eps_text(row["eps"]))} '
            f"({esc(row['optimizer'])}): {esc(head)} {e[f'{head}_before']:.2f} → "
            f"{e[f'{head}_after']:.2f}</h3><div class=note>the picture <code>{esc(e['query'])}"
            "</code> and the endpoint's lists before and after the attack"
            + (f"; targets (red): ids {esc(', '.join(map(str, sorted(targets))))}"
               if targets else "") + f'</div><div class="row">{top}</div>{lists}</div>')


def endpoint_html(report: dict[str, Any], examples: list[dict[str, Any]], plot: bytes) -> str:
    """The page for a report's content, its ``examples`` (each an attack's, at the largest
    eps: its row's attack, eps, optimiser and top-k figure, the pictures, the lists and the
    endpoint's thumbnails) and the success-vs-queries ``plot``."""
    panels = "".join(_example(e) for e in examples)
    body = (_header(report) + _verdict(report) + _rows(report)
            + "<h2>Success vs queries</h2><p class=note>The top-k figure of the best candidate "
            "queried so far, at each share of the budget.</p>"
            f'<img class="plot" src="{png_data_bytes(plot)}" alt="success vs queries">'
            + "<h2>Examples</h2><p class=note>At the largest ε, per attack, the picture whose "
            "top-k figure moved furthest: what was sent, and the endpoint's lists (its "
            "thumbnails where it shows them, ids otherwise).</p>" + panels + _provenance(report))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>advrank endpoint audit</title><style>{STYLE}</style></head><body>{body}"
            "<p class=note>Made by advrank; the numbers are in report.json.</p></body></html>\n")
