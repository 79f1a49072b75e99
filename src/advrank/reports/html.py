"""The audit's ``report.html``: one self-contained page (every image inlined as a ``data:``
PNG, the style inline, no script, and a Content-Security-Policy that forbids any network
access), readable offline and safe to mail around.

Sections: what was audited, retrieval quality, the attack table, the plots, the deployed
view (when the audit measured one: ranks after the upload pipeline, exact search vs the index,
query-only attacks and their rank vs queries), Fig. 1-style example panels (query, amplified
perturbation, adversarial image, top results before and after with their ranks and labels)
and provenance.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

from advrank.reports.markup import arrow as _arrow
from advrank.reports.markup import eps_text, esc
from advrank.reports.markup import table as _table
from advrank.reports.style import CSP, STYLE
from advrank.reports.tables import deployed_sentences, id_ranges, view_name
from advrank.reports.text import text_section


def png_data(image: torch.Tensor) -> str:
    """``[C, H, W]`` in [0, 1] -> a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    x = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    array = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: torch.Tensor, alt: str, caption: str, hit: bool = False) -> str:
    pix = ' class="pix"' if image.shape[-1] < 96 else ""
    return (f'<figure{" class=hit" if hit else ""}><img{pix} src="{png_data(image)}" '
            f'alt="{esc(alt)}" title="{esc(alt)}"><figcaption>{caption}</figcaption></figure>')


def _label(text: Any) -> str:
    """One caption line that never breaks inside a word (cut with an ellipsis, in full on
    hover)."""
    return f'<span title="{esc(text)}">{esc(text)}</span>'


def _caption(rank: int, label: Any) -> str:
    """A result's caption: its 1-based rank in the list and its class, each on a line named
    by what it is, so "#1" and a label "7" never read as "#17"."""
    return _label(f"rank {rank:,}") + _label(f"class {label}")


def model_name(cfg: dict) -> str:
    """What the page calls the model: the outside model's spec, else the checkpoint's file
    name (not its full local path) and architecture."""
    from pathlib import PurePath

    if cfg.get("model"):
        return str(cfg["model"])
    if cfg.get("checkpoint"):
        arch = f" ({cfg['arch']})" if cfg.get("arch") else ""
        return PurePath(str(cfg["checkpoint"])).name + arch
    return str(cfg.get("arch", "model"))


def _header(report: dict) -> str:
    cfg, s = report["config"], report["summary"]
    model = model_name(cfg)
    data = cfg.get("data") or cfg.get("dataset")
    warn = ""
    if cfg.get("defense"):
        eps = cfg.get("defense_eps")
        warn = (f"<p>Defended model: {esc(cfg['defense'])} adversarial training"
                + (f" at ε = {esc(eps_text(eps))}" if eps is not None else "") + ".</p>")
    if cfg.get("random_weights"):
        warn = ('<p class="warn">This model has random weights (no --weights was given): the '
                'figures test the tooling, not a real model.</p>')
    bad = s.get("unreadable_images", 0)
    kpis = [("Recall@1", f"{s['recall@1']:.1f}%"), ("mAP", f"{s['map']:.1f}%"),
            ("gallery |X|", f"{s['gallery_size']:,}"), ("unreadable images skipped", f"{bad}")]
    kpi = "".join(f"<div>{esc(k)}<b>{esc(v)}</b></div>" for k, v in kpis)
    return (f"<h1>advrank audit: {esc(model)}</h1><p class=sub>on <code>{esc(data)}</code>, "
            f"{esc(cfg.get('metric'))} distance, {esc(cfg.get('date', ''))}</p>{warn}"
            f'<div class="kpi">{kpi}</div>')


def _where(rank: float, n: int) -> str:
    """A normalized rank (% of |X|) in words a reader can picture."""
    position = max(1, round(rank / 100 * n) + 1)
    return f"rank {rank:.1f}% (#{position:,} of {n:,})"


def _partial(report: dict) -> str:
    """The banner of a report written when the audit was interrupted."""
    p = report["summary"].get("partial")
    if not p:
        return ""
    return (f'<p class="warn" id="partial">Partial report: the audit was interrupted after '
            f"{p['cells_done']} of {p['cells']} attack cells; the tables show those alone and "
            "there are no example panels. Rerun the same command to finish it.</p>")


def _verdict(report: dict) -> str:
    """The plain-language verdict at the top of the page (from ``summary.verdict``)."""
    v = report["summary"].get("verdict")
    if not v:
        return ""
    lines = []
    strong, small = v.get("strongest_at_largest"), v.get("strongest_at_smallest")
    if v["vulnerable"]:
        lines.append(f'<p class=big>Vulnerable: from ε = {esc(eps_text(v["first_eps"]))} an '
                     f"attack moves the average attacked picture by at least "
                     f"{v['threshold']:.0f} points of the ranking list.</p>")
    else:
        lines.append(f'<p class=big>No attack moved the average rank by {v["threshold"]:.0f} '
                     "points or more at the budgets tested.</p>")
    worst, n = v.get("worst_example"), report["summary"]["gallery_size"]
    if worst:
        where = (f"from #{worst['position_before']:,} to #{worst['position_after']:,} of {n:,}"
                 if worst.get("position_before") else
                 f"from {worst['rank_before']:.1f}% to {worst['rank_after']:.1f}%")
        lines.append(f"<p>Worst case seen: at ε = {esc(eps_text(worst['eps']))}, "
                     f"<b>{esc(worst['attack'])}</b> moves one picture "
                     f"(<code>{esc(worst['anchor'])}</code> in the collection) {where}.</p>")
    if strong:
        lines.append(f"<p>Hurts most at ε = {esc(eps_text(strong['eps']))}: "
                     f"<b>{esc(strong['attack'])}</b> {_arrow(strong['direction'])}, mean "
                     f"{_where(strong['rank_before'], n)} → {strong['rank_after']:.1f}%.")
        if small and small["eps"] != strong["eps"]:
            lines[-1] += (f" At the smallest budget, ε = {esc(eps_text(small['eps']))}: "
                          f"<b>{esc(small['attack'])}</b>, {small['rank_before']:.1f}% → "
                          f"{small['rank_after']:.1f}%.")
        lines[-1] += "</p>"
    lines += [f"<p>{esc(text)}</p>" for text in deployed_sentences(v.get("deployed"))]
    ers = v.get("ers")
    lines.append(f"<p>ERS (robrank's robustness score): {ers:.1f}.</p>" if ers is not None else
                 "<p class=note>ERS (robrank's one-number robustness score) is not part of an "
                 "audit: <code>advrank robustness</code> measures it.</p>")
    cls = "verdict" if v["vulnerable"] else "verdict ok"
    return f'<h2>Verdict</h2><div class="{cls}" id="verdict">{"".join(lines)}</div>'


def _settings(report: dict) -> str:
    """What was run, and how long it took."""
    cfg, v = report["config"], report["summary"].get("verdict") or {}
    a = cfg.get("audit", {})
    rows_in = report["summary"]["attacks"]
    t = rows_in[0]["num_attacks"] if rows_in else a.get("num_attacks")
    steps = a.get("steps") if a.get("steps") is not None else "the paper's η for each ε"
    alpha = a.get("step_size")
    alpha = eps_text(alpha) if alpha is not None else "the paper's α for each ε"
    eps = ", ".join(eps_text(e) for e in a.get("eps_values", []))
    rows = [["attacks", esc(", ".join(a.get("attacks", [])))],
            ["ε (model-input pixels)", esc(eps)],
            ["attacks per cell T", esc(t)], ["w / m", esc(a.get("k"))],
            ["PGD steps", esc(steps)], ["step size", esc(alpha)],
            ["seed", esc(a.get("seed"))], ["batch size", esc(a.get("batch_size"))],
            ["attack time", f"{v.get('seconds', 0) / 60:.1f} min"]]
    timing = report["summary"].get("estimate")
    if timing:  # this run's estimate (printed before the attacks) against its time
        rows.append(["estimated / actual time", esc(
            f"{timing['estimated_seconds'] / 60:.1f} min / {timing['actual_seconds'] / 60:.1f} "
            f"min" + (f" (actual = {timing['ratio']:.2f} x estimated)" if timing.get("ratio")
                      else ""))])
    d = report["summary"].get("deployed") or {}
    q = d.get("query")
    extra = [["upload pipeline", d.get("pipeline")], ["index", d.get("index")],
             ["query-only", q and f"{q['budget']} queries per attack, {q['feedback']} feedback, "
                                  f"{q['optimizer']}, {q['oracle']} oracle"],
             ["transfer source", d.get("transfer") and d["transfer"]["source"]],
             ["catalog", d.get("catalog") and f"{d['catalog']['service']}, query-only: "
                                              f"{d['catalog']['upload_budget']} uploads and "
                                              f"{d['catalog']['search_budget']} searches per "
                                              "attack"]]
    rows += [[name, f"<code>{esc(value)}</code>"] for name, value in extra if value]
    return "<h2>Settings</h2>" + _table(["setting", "value"], rows, left=2)


def _retrieval(report: dict) -> str:
    r = report["summary"]["retrieval"]
    ks = [k for k in r if k.startswith("recall@")]
    rows = [[esc(r["query_mode"]), f"{r['queries']:,}", f"{r['classes']:,}"]
            + [f"{r[k]:.2f}" for k in ks] + [f"{r['map']:.2f}"]]
    return ("<h2>Retrieval quality</h2>" + _table(
        ["queries", "#queries", "classes", *[k.replace("recall", "R") + " (%)" for k in ks],
         "mAP (%)"], rows))


def _attacks(report: dict, descriptions: dict[str, str]) -> str:
    rows_in = report["summary"]["attacks"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows_in))
    eps_values = sorted({r["eps"] for r in rows_in})
    rows = []
    for a in attacks:
        cells = {r["eps"]: r for r in rows_in if r["attack"] == a}
        first = next(iter(cells.values()))
        row = [f"<span class=nw><b>{esc(a)}</b> {_arrow(_direction(rows_in, a))}</span>",
               f"{first['rank_before']:.1f}"]
        for e in eps_values:
            c = cells.get(e)  # (none in a partial report)
            row.append("–" if c is None else
                       f"{c['rank_after']:.1f} ± {c.get('rank_after_se', 0):.1f}"
                       + (f"<br><span class=note>R@1 {c['recall@1_after']:.0f}%</span>"
                          if "recall@1_after" in c else ""))
        rows.append(row)
    t = rows_in[0]["num_attacks"] if rows_in else 0
    legend = "".join(f"<li><b>{esc(a)}</b>: {esc(descriptions.get(a, ''))} "
                     f"({_arrow(_direction(rows_in, a))} "
                     f"{'lower' if _direction(rows_in, a) == 'down' else 'higher'} rank = "
                     "attack succeeds)</li>" for a in attacks)
    return ("<h2>Attacks</h2><p>Mean normalized rank (% of |X|, ± standard error) of the "
            f"attacked items over T = {t} attacks per cell, before and after an L∞ attack of "
            "budget ε in model-input pixels; under each, Recall@1 of the attacked ranking "
            "lists.</p>" + _table(["attack", "before", *[f"ε = {esc(eps_text(e))}"
                                                         for e in eps_values]], rows)
            + f"<ul class=note>{legend}</ul>")


def _direction(rows: list[dict], attack: str) -> str:
    return next((r.get("direction", "down") for r in rows if r["attack"] == attack), "down")


def _panel(panel: dict) -> str:
    f, im = panel["figures"], panel["images"]
    eps, n = f["eps"], f["gallery_size"]
    thumbs, replaced = im["thumbs"], im["replaced"]
    hits = {t["index"] for t in f["targets"]}
    amp = 0.5 / eps if eps > 0 else 1.0
    perturbation = ((im["adversarial"] - im["clean"]) * amp + 0.5).clamp(0, 1)
    anchor = f["anchor"]
    top = []
    if f.get("query_text") is not None:  # a text query (the audit's text section)
        top.append(f'<figure><div class="qtext">“{esc(f["query_text"])}”</div><figcaption>'
                   f'{_label("text query")}</figcaption></figure>')
    if f["query"] is not None:
        q = f["query"]
        top.append(_img(thumbs[q["index"]], q["name"], _label("query q")
                        + _label(f"class {q['label']}")))
    top += [_img(im["clean"], anchor["name"], _label("original")
                 + _label(f"class {anchor['label']}")),
            _img(perturbation, "perturbation", _label(f"perturbation ×{amp:.0f}")
                 + _label(f"L∞ {f['linf'] * 255:.1f}/255")),
            _img(im["adversarial"], "adversarial", _label("adversarial") + _label("(attacked)"))]
    lists = []
    for when in ("before", "after"):
        figs = []
        for entry in f[f"top_{when}"]:
            i = entry["index"]
            image = im["adversarial"] if (when == "after" and i == replaced) else thumbs[i]
            figs.append(_img(image, entry["name"], _caption(entry["rank"] + 1, entry["label"]),
                             hit=i in hits))
        shown = {entry["index"] for entry in f[f"top_{when}"]}
        for t in [t for t in f["targets"] if t["index"] not in shown][:3]:  # where they are
            i = t["index"]
            image = im["adversarial"] if (when == "after" and i == replaced) else thumbs[i]
            figs.append('<span class="gap">…</span>' + _img(
                image, t["name"], _caption(t[f"rank_{when}"] + 1, t["label"]), hit=True))
        lists.append(f'<div class="row"><span class="rowlabel">{when}</span>{"".join(figs)}</div>')
    targets = "; ".join(
        f"{esc(t['name'])} (class {esc(t['label'])}): rank {t['rank_before'] + 1:,} → "
        f"{t['rank_after'] + 1:,}"
        for t in f["targets"][:10])
    mb, ma = f["measure_before"], f["measure_after"]
    return (f'<div class="panel"><h3>{esc(f["attack"])} at ε = {esc(eps_text(eps))}: rank '
            f"{mb['rank']:.1f}% → {ma['rank']:.1f}% of |X| = {n:,}</h3>"
            f'<div class=note>{esc(f["description"])}; attacked image '
            f"<code>{esc(anchor['name'])}</code>. Targets (red): {targets}</div>"
            f'<div class="row">{"".join(top)}</div>{"".join(lists)}</div>')


def _view_table(deployed: dict, views: tuple[str, ...], cell) -> str:
    """One row per (attack, view) among ``views``, one column per eps; ``cell(row)`` is the
    text of a measured cell ("–" where none, e.g. query-only at ε = 0)."""
    rows_in = [r for r in deployed["rows"] if r["view"] in views]
    eps_values = sorted({r["eps"] for r in deployed["rows"]})
    keys = list(dict.fromkeys((r["attack"], r["view"]) for r in rows_in))
    rows = []
    for attack, view in keys:
        cells = {r["eps"]: r for r in rows_in if r["attack"] == attack and r["view"] == view}
        first = next(iter(cells.values()))
        rows.append([f"<span class=nw><b>{esc(attack)}</b> {_arrow(first['direction'])}</span>",
                     esc(view_name(view, deployed)), cell(first, "before")]
                    + [cell(cells[e], "after") if e in cells else "–" for e in eps_values])
    return _table(["attack", "view", "before", *[f"ε = {esc(eps_text(e))}"
                                                 for e in eps_values]], rows, left=2)


def _rank_cell(row: dict, when: str) -> str:
    if when == "before":
        return f"{row['rank_before']:.1f}"
    text = f"{row['rank_after']:.1f} ± {row.get('rank_after_se', 0):.1f}"
    if row["view"] == "query-only":
        text += f"<br><span class=note>{row['queries_used']:.0f} queries</span>"
    if row["view"] in ("catalog-upload", "catalog-query"):
        text += (f"<br><span class=note>{row['uploads_used']} uploads, "
                 f"{row['searches_used']} searches</span>")
    return text


def _catalog(d: dict) -> str:
    """The catalog rows: the sentence that explains them, their table and the ids uploaded
    (and deleted)."""
    c = d["catalog"]
    ids = id_ranges(c["uploaded_ids"])
    return (f"<h3>Through the catalog <code>{esc(c['service'])}</code></h3><p>"
            f"{esc(c['note'])}</p>"
            + _view_table(d, ("catalog-lab", "catalog-upload", "catalog-query"), _rank_cell)
            + f"<p class=note>Uploaded and deleted afterwards: ids {esc(ids)}.</p>")


def _topk_cell(depth: int | None):
    def cell(row: dict, when: str) -> str:
        return (f"{row[f'in_topk_{when}']:.0f}% in top {depth}<br><span class=note>position "
                f"{row[f'rank_topk_{when}']:.1f}</span>")

    return cell


def _deployed(report: dict, plot: bytes | None) -> str:
    """The deployed view: the white-box ranks beside the ranks after the upload pipeline and
    the query-only attacks (same eps, same attacked items), exact search beside the index, and
    the rank-vs-queries plot."""
    d = report["summary"].get("deployed")
    if not d:
        return ""
    words = "".join(f"<p class=big>{esc(t)}</p>" for t in deployed_sentences(
        (report["summary"].get("verdict") or {}).get("deployed")))
    out = ["<h2>Deployed view</h2>" + words + "<p>What a deployed search would show, at the "
           "same ε and "
           "on the same attacked items as the attack table: mean normalized rank (% of |X|, ± "
           "standard error) before and after the attack, for the white-box attack on float "
           "pixels" + (f", the same adversarial images after the upload pipeline "
                       f"<code>{esc(d['pipeline'])}</code>" if d.get("pipeline") else "")
           + (", and query-only attacks that see only the search's answers (" + (
               "the local oracle: the audited model and gallery, exact search"
               if d["query"].get("oracle", "local") == "local" else
               f"the endpoint <code>{esc(d['query']['oracle'])}</code>, calibrated against the "
               "audited model first") + "), every figure read from its answers"
              if d.get("query") else "") + ".</p>"]
    if d.get("transfer"):
        out.append("<p>Transfer: the white-box attacks made on the source model "
                   f"<code>{esc(model_name({'checkpoint': d['transfer']['source']}))}"
                   "</code> (same items, same ε), "
                   "ranked by the audited model.</p>")
    out.append(_view_table(d, ("white-box", "pipeline", "transfer", "query-only"), _rank_cell))
    if d.get("catalog"):
        out.append(_catalog(d))
    if any(r["view"] in ("index", "index-pipeline") for r in d["rows"]):
        depth = d.get("index_depth")
        out.append(f"<h3>Exact search vs the <code>{esc(d['index'])}</code> index: top "
                   f"{depth}</h3><p>Of the attack's targets, the share the search shows in its "
                   f"first {depth} results (% in top {depth}), and their mean position there "
                   f"({depth}: beyond them). A candidate attack's image is inserted into the "
                   "index as a catalog inserts an upload, then each query searches it.</p>"
                   + _view_table(d, ("exact", "index", "exact-pipeline", "index-pipeline"),
                                 _topk_cell(depth)))
    if plot is not None:
        out.append("<h3>Rank vs queries</h3><p class=note>The best candidate queried so far, "
                   f"measured at {esc(', '.join(map(str, d['query']['marks'])))} queries per "
                   "attack; dashed: the white-box rank at the same ε.</p>"
                   f'<img class="plot" src="{png_data_bytes(plot)}" alt="rank vs queries">')
    if not d.get("transfer"):
        out.append("<p class=note>No transfer rows: the audit was given no source model "
                   "(<code>--transfer-from</code>) whose adversarial images it would rank.</p>")
    return "".join(out)


def _provenance(report: dict) -> str:
    cfg = report["config"]
    keys = ("command", "seed", "commit", "hardware", "date", "model", "weights", "weights_sha",
            "checkpoint", "checkpoint_file_sha", "model_sha", "data", "dataset", "data_sha",
            "fingerprint", "geometry", "mean", "std", "layer", "projection", "library")
    rows = [[esc(k), f"<code>{esc(cfg[k])}</code>"] for k in keys if cfg.get(k) is not None]
    return "<h2>Provenance</h2>" + _table(["field", "value"], rows, left=2)


def _unreadable(report: dict) -> str:
    s = report["summary"]
    if not s.get("unreadable_images"):
        return ""
    items = "".join(f"<li><code>{esc(u['item'])}</code>: {esc(u['error'])}</li>"
                    for u in s.get("unreadable", [])[:100])
    return (f"<h2>Unreadable images ({s['unreadable_images']})</h2><p>These pictures could not "
            f"be decoded and were left out of X:</p><ul class=note>{items}</ul>")


def audit_html(report: dict, panels: list[dict], query_plot: bytes | None = None,
               text_panels: list[dict] | None = None) -> str:
    """The page for a ``report.json`` content and the example panels of
    :func:`advrank.experiments.audit.example_panels` (``query_plot``: the deployed view's
    rank-vs-queries PNG; ``text_panels``: the text section's panels)."""
    from advrank.registry import ATTACKS
    from advrank.reports.plots import audit_png

    s, cfg = report["summary"], report["config"]
    attacks = list(dict.fromkeys(r["attack"] for r in s["attacks"]))
    descriptions = {a: ATTACKS.get(a).description for a in attacks if a in ATTACKS}
    plot = png_data_bytes(audit_png(s["attacks"], attacks, str(cfg.get("metric"))))
    size = cfg.get("geometry", {}).get("input_size") if isinstance(cfg.get("geometry"), dict) \
        else None
    pixel_note = ("ε is measured in pixels of the image the model receives"
                  + (f" ({'×'.join(map(str, size))}, after resizing and cropping)" if size
                     else "") + ", in [0, 1] units: 8/255 = 8 grey levels.")
    body = (_header(report) + _partial(report) + _verdict(report) + _retrieval(report)
            + _attacks(report, descriptions)
            + text_section(report, "".join(_panel(p) for p in text_panels or []))
            + f'<p class=note>{esc(pixel_note)}</p><h2>Rank vs ε</h2><img class="plot" '
            f'src="{plot}" alt="rank vs eps plots">' + _deployed(report, query_plot)
            + "<h2>Examples</h2><p class=note>For each attack, the attack that moved its rank "
            "furthest among the first attacks of its selection at the largest ε. Each panel: the "
            "attacked image, its perturbation (amplified to the full grey range) and the "
            "adversarial image; then the top results before and after the attack (rank in the "
            "list, class; the attack's targets framed red).</p>"
            + "".join(_panel(p) for p in panels) + _unreadable(report) + _settings(report)
            + _provenance(report))
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>advrank audit</title><style>{STYLE}</style></head><body>{body}"
            "<p class=note>Made by advrank; the numbers are in report.json.</p></body></html>\n")


def png_data_bytes(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
