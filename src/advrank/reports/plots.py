"""Plots with matplotlib's object API (an Agg canvas per figure: no pyplot state, no global
backend switch), returned as PNG bytes for the store to write atomically."""

from __future__ import annotations

import io

import torch


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def curves_png(models: list[dict], points: list[dict], attacks: list[str], k: int,
               size_names: dict[str, str], metric_names: set[str]) -> bytes:
    """Fig. 2: one panel per attack (rank after attack vs eps) and one for the max embedding
    shift; one line per model, vanilla dashed."""
    fig = _figure(4.4 * (len(attacks) + 1), 4.2)
    axes = fig.subplots(1, len(attacks) + 1)
    panels = [(f"{a}_after", f"{a} ({size_names[a]}={k})", "mean normalized rank (%)")
              for a in attacks]
    panels.append(("shift_mean", "max embedding shift",
                   f"{'/'.join(sorted(metric_names))} distance"))
    for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
        for m in models:
            pts = sorted((p for p in points if p["label"] == m["label"]), key=lambda p: p["eps"])
            style = "--" if not m.get("defense") else "-"
            ax.plot([p["eps"] for p in pts], [p[key] for p in pts], style, marker="o",
                    label=f"{m['label']}, R@1 {m['recall@1']:.1f}%")
        ax.set_title(title)
        ax.set_xlabel("eps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return _png(fig)


def _as_image(x: torch.Tensor):
    """``[C, H, W]`` in [0, 1] -> what imshow takes (2-D for grey, H x W x C for colour)."""
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def universal_png(result: dict, r: torch.Tensor, clean: torch.Tensor) -> bytes:
    """The universal perturbation r ``[1, C, H, W]`` (diverging colours, scaled to
    [-eps, eps]; colour images show its channel mean) next to one clean ``[C, H, W]`` member
    and that member plus r."""
    eps = float(result["eps"]) or 1.0
    r = r[0].float().cpu()
    clean = clean.float().cpu()
    perturbed = (clean + r).clamp(0.0, 1.0)
    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 3)
    im = axes[0].imshow(r.mean(0).numpy(), cmap="RdBu_r", vmin=-eps, vmax=eps)
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04)
    axes[0].set_title(f"universal r ({result['attack']}, ε={result['eps']})"
                      + (", channel mean" if r.shape[0] > 1 else ""), fontsize=9)
    axes[1].imshow(_as_image(clean), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"clean (X[{result['example_index']}])", fontsize=9)
    axes[2].imshow(_as_image(perturbed), cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("clean + r", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.get('mode', 'own')} Q/C, mean rank "
                 f"{result['rank_before']:.1f}→{result['rank_after']:.1f}% (seen), "
                 f"{result['rank_before_unseen']:.1f}→{result['rank_after_unseen']:.1f}% "
                 f"(unseen)", fontsize=10)
    return _png(fig, dpi=120)


def audit_png(rows: list[dict], attacks: list[str], metric: str) -> bytes:
    """The audit's curves, each starting at ε = 0 (the clean figure): mean normalized rank
    after attack vs eps (one line per attack, its clean rank dotted; the legend's arrow says
    which way is success), Recall@1 of the attacked lists vs eps (axis from 0) and the
    embedding shift. One legend under the panels, so it covers no line."""
    fig = _figure(13.5, 4.3)
    axes = fig.subplots(1, 3)
    # grey levels when every eps is a whole number of them (8/255), else [0, 1] units (0.3)
    levels = all(abs(r["eps"] * 255 - round(r["eps"] * 255)) < 1e-6 for r in rows)
    scale, xlabel = (255, "ε (grey levels of 255, model-input pixels)") if levels else \
        (1, "ε (model-input pixels, [0, 1] range)")
    for attack in attacks:
        pts = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["eps"])
        eps = [0.0] + [r["eps"] * scale for r in pts]
        arrow = "↓" if pts[0].get("direction", "down") == "down" else "↑"
        line = axes[0].plot(eps, [pts[0]["rank_before"]] + [r["rank_after"] for r in pts],
                            marker="o", label=f"{attack} (success {arrow})")[0]
        axes[0].plot(eps, [r["rank_before"] for r in pts[:1] + pts], ":",
                     color=line.get_color())
        if "recall@1_after" in pts[0]:
            axes[1].plot(eps, [pts[0]["recall@1_before"]] + [r["recall@1_after"] for r in pts],
                         marker="o", color=line.get_color())
        if "shift_after" in pts[0]:
            axes[2].plot(eps, [0.0] + [r["shift_after"] for r in pts], marker="o",
                         color=line.get_color())
    titles = ("mean normalized rank (%)\n(ε = 0 and dotted: before the attack)",
              "Recall@1 of the attacked lists (%)", f"embedding shift d(f(x~), f(x)), {metric}")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 100)
    axes[1].set_ylim(0, 102)
    axes[2].set_ylim(bottom=0)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 8),
                   fontsize="small")
    return _png(fig)


def rank_queries_png(rows: list[dict]) -> bytes:
    """The deployed view's rank-vs-queries curves: one panel per attack with query-only rows,
    one line per eps (the mean normalized rank of the best candidate queried so far at each
    checkpoint of the budget, starting from the clean rank at 0 queries) and, dashed in the
    same colour, the white-box rank at that eps: how close the search's answers alone get."""
    query = [r for r in rows if r["view"] == "query-only"]
    attacks = list(dict.fromkeys(r["attack"] for r in query))
    fig = _figure(max(4.8, 4.4 * len(attacks)), 4.2)
    axes = fig.subplots(1, max(1, len(attacks)), squeeze=False)[0]
    for ax, attack in zip(axes, attacks, strict=False):
        mine = sorted((r for r in query if r["attack"] == attack), key=lambda r: r["eps"])
        for r in mine:
            points = r["checkpoints"]
            line = ax.plot([0] + [p["queries"] for p in points],
                           [r["rank_before"]] + [p["rank_after"] for p in points], marker="o",
                           label=f"ε = {r['eps']:.4g}")[0]
            white = next((w for w in rows if w["view"] == "white-box" and
                          w["attack"] == attack and w["eps"] == r["eps"]), None)
            if white is not None:
                ax.axhline(white["rank_after"], linestyle="--", color=line.get_color(),
                           linewidth=1)
        arrow = "↓" if mine[0].get("direction", "down") == "down" else "↑"
        ax.set_title(f"{attack} query-only (success {arrow}); dashed: white-box", fontsize=10)
        ax.set_xlabel("queries per attack")
        ax.set_ylabel("mean normalized rank (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)
