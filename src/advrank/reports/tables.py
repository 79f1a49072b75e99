"""Tables laid out like the paper's: Markdown and CSV for grids, the transfer matrix, and
plain-text tables for curves and comparisons. Column order and the w/m names come from the
attack registry, so a new attack kind appears without changes here."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import PurePath

from advrank.registry import ATTACKS

#: the paper's figure of a cell, ``(attack, eps, k) -> figure or None`` (given by the caller:
#: reports render what they receive)
PaperLookup = Callable[[str, float, int], "float | None"]


def attack_order(names: Iterable[str]) -> list[str]:
    """``names`` in registry order (CA+, CA-, QA+, QA-, then plugins), each once."""
    present = set(names)
    ordered = [a for a in ATTACKS.names() if a in present]
    return ordered + sorted(present - set(ordered))


def size_name(attack: str) -> str:
    """"w" for CA, "m" for QA, "k" for kinds without a named size."""
    return (ATTACKS.get(attack).size_name if attack in ATTACKS else None) or "k"


def format_attack(summary: dict) -> str:
    """One line for an attack cell: its headline figure first, then every other figure the
    kind measured, before -> after (± standard error). Figures are % except a unit-less
    headline (a cosine, a distance), shown with 4 decimals."""
    head, digits = headline_of(summary)
    figures = [key[: -len("_before")] for key in summary
               if key.endswith("_before") and f"{key[:-7]}_after" in summary]
    figures.sort(key=lambda fig: fig != head)  # stable: the headline first
    parts = []
    for fig in figures:
        unit, places = ("%", 2) if fig != head or digits == 1 else ("", 4)
        name = {"sp_rank": "sp_rank (worst of C_SP)",  # the ECCV code reports the mean
                "sp_rank_mean": "sp_rank_mean (mean of C_SP, as the ECCV code)"}.get(fig, fig)
        se = summary.get(f"{fig}_after_se")
        parts.append(f"{name} {summary[f'{fig}_before']:.{places}f}{unit} -> "
                     f"{summary[f'{fig}_after']:.{places}f}{unit}"
                     + (f" (± {se:.{places}f})" if se is not None else ""))
    return (f"{summary['attack']} eps={summary['eps']:g} {summary.get('k_name') or 'k'}="
            f"{summary['k']}: " + "; ".join(parts)
            + f" (T={summary['num_attacks']}, |X|={summary['gallery_size']})")


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def headline_of(cell: dict) -> tuple[str, int]:
    """The figure a cell shows (its kind's headline; "rank" in cells written before kinds had
    other headlines) and its number of decimals (1 for %, 3 for a cosine or a distance)."""
    name = cell.get("headline", "rank")
    unit = ATTACKS.get(cell["attack"]).unit if cell["attack"] in ATTACKS else "%"
    return name, 1 if unit else 3


def _paper(paper: PaperLookup | None, c: dict) -> float | None:
    return None if paper is None else paper(c["attack"], c["eps"], c["k"])


def _cell_text(c: dict | None, paper: PaperLookup | None, show_se: bool) -> str:
    if c is None:
        return ""
    fig, digits = headline_of(c)
    text = _fmt(c[f"{fig}_after"], digits)
    if show_se and c.get(f"{fig}_after_se") and c["eps"] > 0:
        text += f" ± {c[f'{fig}_after_se']:.{digits}f}"
    ref = _paper(paper, c)
    return text if ref is None else f"{text} ({ref:g})"


def _sp_lines(cells: list[dict]) -> list[str]:
    """One line per attack with C_SP figures: the worst C_SP rank after attack, max over m."""
    lines = []
    sp = [c for c in cells if "sp_rank_after" in c and c["eps"] > 0]
    for a in attack_order(c["attack"] for c in sp):
        worst: dict[float, float] = {}
        for c in sp:
            if c["attack"] == a:
                worst[c["eps"]] = max(worst.get(c["eps"], 0.0), c["sp_rank_after"])
        lines.append(f"{a}: mean worst rank of C_SP after attack (the worst of each "
                     "attack's C_SP members; the ECCV code reports their mean), max over "
                     f"{size_name(a)}: " + ", ".join(f"ε={e:g}: {v:.1f}%"
                                                    for e, v in sorted(worst.items())))
    return lines


def markdown_table(cells: Iterable[dict], paper: PaperLookup | None = None, show_se: bool = True,
                   title: str | None = None) -> str:
    """A Table-1 style Markdown table: rows eps, columns attack x k; cell = the attack's
    headline figure after attack (the normalized rank, %, for CA/QA).

    ``cells``: dicts from ``AttackResult.summary()``. With ``paper`` (``(attack, eps, k) ->
    figure or None``, e.g. ``experiments.paper.paper_lookup("mnist")``), each cell also shows
    the paper's figure in brackets.
    """
    cells = list(cells)
    by_key = {(c["attack"], round(c["eps"], 6), c["k"]): c for c in cells}
    eps_values = sorted({round(c["eps"], 6) for c in cells})
    columns = [(a, k) for a in attack_order(c["attack"] for c in cells)
               for k in sorted({c["k"] for c in cells if c["attack"] == a})]
    head = ["ε"] + [f"{a} {size_name(a)}={k}" for a, k in columns]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for eps in eps_values:
        row = [f"{eps:g}"] + [_cell_text(by_key.get((a, eps, k)), paper, show_se)
                              for a, k in columns]
        lines.append("| " + " | ".join(row) + " |")
    sp = _sp_lines(cells)
    if sp:
        lines += [""] + sp
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("attack", "eps", "k", "num_attacks", "gallery_size", "rank_before",
              "rank_before_se", "rank_after", "rank_after_se", "sp_rank_before", "sp_rank_after",
              "recall@1_before", "recall@1_after", "paper", "seconds", "headline",
              "headline_before", "headline_after", "headline_after_se",
              "rank_pipeline_before", "rank_pipeline_after", "rank_pipeline_after_se")


def csv_table(cells: Iterable[dict], paper: PaperLookup | None = None) -> str:
    """One CSV row per cell, with the paper's figure beside ours."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for c in cells:
        fig, _ = headline_of(c)
        writer.writerow({**c, "paper": _paper(paper, c),
                         "headline": fig, "headline_before": c[f"{fig}_before"],
                         "headline_after": c[f"{fig}_after"],
                         "headline_after_se": c.get(f"{fig}_after_se")})
    return buf.getvalue()


def _matrix_cell(cell: dict | None, diagonal: bool) -> str:
    if cell is None:
        return "…"
    text = f"{cell['rank_before']:.1f}→{cell['rank_after']:.1f}"
    return f"**{text}**" if diagonal else text


def transfer_markdown(matrix: dict) -> str:
    """Table 5 as Markdown: one table per attack, rows = source, columns = target.

    Each cell is "before→after" (mean normalized rank on the target, %); the diagonal (bold)
    is the white-box attack; cells still being computed show "…".
    """
    names = list(matrix["models"])
    s = matrix["settings"]
    lines = [
        "# Transfer of adversarial ranking examples (Table 5)", "",
        f"Dataset {s['dataset']} (|X| = {s['gallery_size']}), eps = {s['eps']}, "
        f"w = m = {s['k']}, T = {s['num_attacks']} attacks, seed {s['seed']}, "
        f"selections drawn on the {s['select_on']} model.",
        "Each cell: mean normalized rank (%) of the chosen candidates on the target model, "
        "before → after adding the perturbation made white-box on the source model; the "
        "diagonal (bold) is the white-box attack. \"+\" attacks lower the rank towards 0, "
        "\"-\" attacks raise it towards 100.", "",
    ]
    ses = []
    order = attack_order(matrix["results"])  # "+" kinds (rank driven down) first, as Table 5
    attacks = sorted(order, key=lambda a: a in ATTACKS and ATTACKS.get(a).direction == "up")
    for attack in attacks:
        rows = matrix["results"][attack]
        lines += [f"## {attack} transfer (black box), {size_name(attack)} = {s['k']}", "",
                  "| From \\ To | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for src in names:
            row = rows.get(src) or {}
            ses += [c[key] for c in row.values() for key in ("rank_before_se", "rank_after_se")]
            lines.append(f"| {src} | " + " | ".join(_matrix_cell(row.get(tgt), src == tgt)
                                                   for tgt in names) + " |")
        lines.append("")
    if ses:
        lines.append(f"Largest standard error of any figure: {max(ses):.2f} (all standard "
                     "errors are in transfer.json).")
    models = ", ".join(f"{n} = {m['arch']}/{m['metric']} (R@1 {_fmt(m.get('recall@1'))}%)"
                       for n, m in matrix["models"].items())
    lines += ["", f"Models: {models}.", ""]
    return "\n".join(lines)


def format_curves(result: dict) -> str:
    """A plain-text table of curves output, one row per (checkpoint, eps)."""
    attacks = result["attacks"]
    lines = [f"{'model':<36} {'eps':>5} " + " ".join(f"{a:>6}" for a in attacks) + "  shift"]
    for p in result["points"]:
        ranks = " ".join(f"{p[f'{a}_after']:6.1f}" for a in attacks)
        lines.append(f"{p['label'][:36]:<36} {p['eps']:5.3g} {ranks}  {p['shift_mean']:.3f}")
    files = result.get("files", {})
    lines.append(f"(mean rank % after attack, T={result['points'][0]['num_attacks']}, "
                 f"k={result['k']}; wrote {', '.join(files.values())})")
    return "\n".join(lines)


def format_comparison(result: dict) -> str:
    """Plain-text table of a vanilla-vs-defended comparison: one row per model."""
    attacks = result["attacks"]
    lines = [f"eps = {result['eps']:g}, w = m = {result['k']} "
             f"(mean normalized rank %, before -> after attack)",
             f"{'model':<36} {'R@1':>6} " + " ".join(f"{a:>12}" for a in attacks) + "  shift"]
    for r in result["models"].values():
        cells = " ".join(f"{r[f'{a}_before']:5.1f}->{r[f'{a}_after']:5.1f}" for a in attacks)
        lines.append(f"{r['label'][:36]:<36} {r['recall@1']:6.2f} {cells}  {r['shift_mean']:.3f}")
    return "\n".join(lines)


def view_name(view: str, deployed: dict) -> str:
    """A deployed-view row's name in words (``pipeline`` -> ``white-box, after jpeg:75``)."""
    q, pipe, index = deployed.get("query") or {}, deployed.get("pipeline"), deployed.get("index")
    source = PurePath(str((deployed.get("transfer") or {}).get("source"))).name
    names = {"white-box": "white-box (float pixels)", "pipeline": f"white-box, after {pipe}",
             "transfer": f"transfer from {source}",
             "query-only": f"query-only: {q.get('budget')} queries, {q.get('feedback')} "
                           f"feedback, {q.get('optimizer')}",
             "exact": "exact search", "index": f"{index} index",
             "exact-pipeline": f"exact search, after {pipe}",
             "index-pipeline": f"{index} index, after {pipe}",
             "catalog-lab": "catalog: white-box in the lab",
             "catalog-upload": "catalog: the same images after ingestion",
             "catalog-query": "catalog: query-only through uploads"}
    return names.get(view, view)


def id_ranges(ids: list[int]) -> str:
    """Ids in words, runs of consecutive ids as ranges (``[3, 4, 5, 9]`` -> ``3-5, 9``)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def deployed_markdown(deployed: dict) -> str:
    """The audit's deployed view as a Markdown table: one row per (attack, view), one column
    per eps; ranks (% of |X|) before -> after, and for the exact/index views the share of the
    targets within the top ``index_depth`` results (%)."""
    eps_values = sorted({r["eps"] for r in deployed["rows"]})
    lines = ["| attack | view | before | " + " | ".join(f"ε={e:g}" for e in eps_values) + " |",
             "|---|---|---|" + "---|" * len(eps_values)]
    keys = list(dict.fromkeys((r["attack"], r["view"]) for r in deployed["rows"]))
    for attack, view in keys:
        cells = {r["eps"]: r for r in deployed["rows"]
                 if r["attack"] == attack and r["view"] == view}
        fig = "rank" if "rank_after" in next(iter(cells.values())) else "in_topk"
        before = next(iter(cells.values()))[f"{fig}_before"]
        row = [f"{cells[e][f'{fig}_after']:.1f}" if e in cells else "–" for e in eps_values]
        unit = "" if fig == "rank" else \
            f" (% in top {deployed.get('index_depth') or 'results'})"
        lines.append(f"| {attack} | {view_name(view, deployed)}{unit} | {before:.1f} | "
                     + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _eps_text(eps: float) -> str:
    from advrank.core.checks import format_eps

    return format_eps(eps)


def deployed_sentences(worst: dict | None) -> list[str]:
    """The deployed view's worst cases in words, one sentence each (the audit's verdict
    holds them as ``deployed``: ``rank``, the deployed view whose rank moved furthest;
    ``topk``, the index row whose share of targets in the top ``depth`` moved furthest)."""
    if not worst:
        return []
    out = []
    r, t = worst.get("rank"), worst.get("topk")
    if r:
        how = {"pipeline": "on the images after the upload pipeline",
               "transfer": "made on another model (transfer)",
               "query-only": f"query-only, with {r.get('queries_used', 0):.0f} queries per "
                             "attack",
               "catalog-upload": f"uploaded through the catalog ({r.get('uploads_used', 0)} "
                                 f"uploads, {r.get('searches_used', 0)} searches)",
               "catalog-query": f"query-only through the catalog's uploads "
                                f"({r.get('uploads_used', 0)} uploads, "
                                f"{r.get('searches_used', 0)} searches in all)"
               }.get(r["view"], r["view"])
        out.append(f"Deployed, the strongest attack is {r['attack']} at eps = "
                   f"{_eps_text(r['eps'])}, {how}: the mean rank goes from "
                   f"{r['rank_before']:.1f}% to {r['rank_after']:.1f}% of the collection.")
    if t:
        after = "after the upload pipeline, " if t["view"] == "index-pipeline" else ""
        out.append(f"Through the {worst.get('index')} index, {after}{t['attack']} at eps = "
                   f"{_eps_text(t['eps'])} puts its targets in the top {worst.get('depth')} "
                   f"results {t['in_topk_after']:.0f}% of the time ({t['in_topk_before']:.0f}% "
                   "before the attack).")
    return out
