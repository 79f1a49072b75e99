"""The audit page's text section: text-to-image retrieval quality of the query set, the
candidate attacks with text queries per eps, and their example panels (rendered by the
page's panel code and given here as HTML)."""

from __future__ import annotations

from advrank.reports.markup import arrow, eps_text, esc, table


def _retrieval(text: dict) -> str:
    r = text["retrieval"]
    ks = [k for k in r if k.startswith("recall@")]
    rows = [[f"<code>{esc(text['text_queries'])}</code>", f"{text['query_texts']:,}",
             f"{text['labelled_texts']:,}"] + [f"{r[k]:.2f}" for k in ks] + [f"{r['map']:.2f}"]]
    return table(["query set", "texts", "with a class",
                  *[k.replace("recall", "R") + " (%)" for k in ks], "mAP (%)"], rows)


def _attacks(text: dict) -> str:
    rows_in = text["attacks"]
    eps_values = sorted({r["eps"] for r in rows_in})
    rows = []
    for attack in dict.fromkeys(r["attack"] for r in rows_in):
        cells = {r["eps"]: r for r in rows_in if r["attack"] == attack}
        first = cells[eps_values[0]]
        row = [f"<span class=nw><b>{esc(attack)}</b> {arrow(first['direction'])}</span>",
               f"{first['rank_before']:.1f}"]
        row += [f"{cells[e]['rank_after']:.1f} ± {cells[e].get('rank_after_se', 0):.1f}"
                for e in eps_values]
        rows.append(row)
    return table(["attack", "before", *[f"ε = {esc(eps_text(e))}" for e in eps_values]], rows)


def text_section(report: dict, panels_html: str) -> str:
    """The section for the ``summary["text"]`` of a report (empty when the audit ran no text
    queries); ``panels_html``: its example panels, already rendered."""
    text = report["summary"].get("text")
    if not text:
        return ""
    t = text["attacks"][0]["num_attacks"] if text["attacks"] else 0
    return ("<h2>Text queries</h2><p>What a shopper types: the texts of the query set, "
            "embedded by the model's text tower, searched in the same gallery. Text-to-image "
            "retrieval quality (a text finds the pictures of its class):</p>"
            + _retrieval(text)
            + "<p>Candidate attacks with text queries: a product photo c is perturbed so that "
            "it rises for w random texts of the set (CA+, ↓ lower rank = attack succeeds), or "
            "leaves the results of w texts whose top 1% holds it, the moderation queries "
            f"(CA-, ↑). Mean normalized rank of c for its texts (% of |X|, ± standard error), "
            f"T = {t} attacks per cell:</p>" + _attacks(text) + panels_html)
