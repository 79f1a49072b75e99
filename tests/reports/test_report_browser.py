"""The audit's report.html opened in a real browser (headless Chromium): it loads without
errors and shows its tables and every example image. Skipped, saying so, without Chromium."""

from __future__ import annotations

import pytest

from advrank.reports.browser import check_page, find_chromium, screenshot

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium is absent (Debian: apt-get install chromium; .ci/run installs it): the "
           "HTML report is not rendered in a browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory, image_folder):
    """An audit of a small python: model on the generated colour pictures."""
    import textwrap

    from advrank.cli import main

    root = tmp_path_factory.mktemp("browser")
    (root / "nets.py").write_text(textwrap.dedent('''
        from torch import nn
        def build():
            net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 12))
            net.data_config = {"input_size": (3, 32, 32), "crop_pct": 1.0}
            return net
    '''))
    out = root / "audit"
    assert main(["audit", "--model", f"python:{root / 'nets.py'}:build", "--data",
                 f"imagefolder:{image_folder}", "--out", str(out), "--eps", "4/255,16/255",
                 "--num-attacks", "4", "--steps", "3", "--device", "cpu", "--quiet"]) == 0
    return out / "report.html"


def test_report_loads_without_errors_and_shows_every_image(report, inspect_page):
    expected = len(inspect_page(report.read_text())["images"])
    shown = check_page(report)
    assert shown["errors"] == [] and shown["broken"] == []
    assert shown["images"] == expected > 40
    assert shown["loaded"] == shown["visible"] == expected  # decoded and laid out
    # retrieval, attacks, settings, provenance
    assert shown["tables"] == 4 and shown["table_rows"] > 10
    assert shown["panels"] == 5 and shown["title"] == "advrank audit"


@pytest.mark.parametrize("width", [800, 1400])
def test_verdict_first_and_no_sideways_scrolling(report, width):
    """At a laptop's and a narrow window's width: the verdict is in the first screen, says
    what it found, and nothing makes the page wider than the window."""
    shown = check_page(report, width=width, height=900)
    assert shown["width"] == width
    assert shown["scroll_width"] <= width, shown
    assert 0 <= shown["verdict_top"] < 900
    assert ("Vulnerable" in shown["verdict"]) or ("No attack moved" in shown["verdict"])
    assert "Worst case seen" in shown["verdict"] and "ERS" in shown["verdict"]


def test_a_broken_page_is_caught(report, tmp_path):
    page = report.read_text().replace('src="data:image/png;base64,', 'src="data:image/png;'
                                      'base64,AAAA', 1)
    page = page.replace("</body>", '<img src="https://example.com/x.png" alt="ext"></body>')
    (tmp_path / "broken.html").write_text(page)
    shown = check_page(tmp_path / "broken.html")
    assert len(shown["broken"]) == 2 and "ext" in shown["broken"]
    assert any("https://example.com" in e for e in shown["errors"])  # blocked, never fetched


def test_screenshot_is_a_small_png(report, tmp_path):
    from PIL import Image

    png = screenshot(report, tmp_path / "shot.png", width=1000, height=1200)
    with Image.open(png) as img:
        assert img.size == (1000, 1200) and img.format == "PNG"
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20  # not a blank page
    assert png.stat().st_size < 500_000


@pytest.fixture(scope="module")
def deployed_report(tmp_path_factory):
    """A digits audit with the whole deployed view: after png, a flat FAISS index beside exact
    search, and query-only rows with their rank-vs-queries plot."""
    import torch

    from advrank.core.index import build_index
    from advrank.experiments.audit import AuditConfig, run_audit
    from advrank.experiments.target import load_target
    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("deployed")
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38])
    save_checkpoint(root / "digits.pt", model, {
        "dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 16,
        "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]})
    target = load_target(root / "digits.pt", "cpu")
    config = AuditConfig(eps_values=[2 / 255, 8 / 255, 16 / 255, 0.3], attacks=["CA+", "QA+"],
                         num_attacks=3, steps=2, examples=0, pipeline="png", query_budget=6)
    run_audit(target, root / "audit", config, target.record(0),
              index=build_index(target.gallery.embeddings, "cosine", "flat"))
    return root / "audit" / "report.html"


@pytest.mark.parametrize("width", [800, 1400])
def test_the_deployed_view_fits_the_window(deployed_report, width):
    shown = check_page(deployed_report, width=width, height=900)
    assert shown["errors"] == [] and shown["broken"] == []
    assert shown["images"] == shown["loaded"] == shown["visible"] == 2  # the two plots
    # retrieval, attacks, deployed ranks, exact vs index, settings, provenance
    assert shown["tables"] == 6 and shown["scroll_width"] <= width, shown


@pytest.fixture(scope="module")
def endpoint_report(tmp_path_factory, untrained_digits, image_folder, serve):
    """An audit of ``advrank serve`` alone (no model given) from the generated pictures."""

    from advrank.cli import main

    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    out = tmp_path_factory.mktemp("endpoint") / "audit"
    with serve(untrained_digits, "--max-k", "50") as (url, _):
        assert main(["audit", "--oracle", url, "--data", f"imagefolder:{image_folder}",
                     "--out", str(out), "--eps", "0.1,0.3", "--num-attacks", "3",
                     "--query-budget", "10", "--optimizer", "random,nes", "--quiet"]) == 0
    return out / "report.html"


@pytest.mark.parametrize("width", [800, 1400])
def test_the_endpoint_audit_shows_its_verdict_first_and_fits_the_window(endpoint_report, width):
    """The endpoint-only page: verdict in the first screen, every image shown (the plot, the
    attacked pictures, the endpoint's lists), no sideways scrolling."""
    shown = check_page(endpoint_report, width=width, height=900)
    assert shown["errors"] == [] and shown["broken"] == []
    assert shown["images"] == shown["loaded"] == shown["visible"] > 20
    assert shown["panels"] == 4 and shown["title"] == "advrank endpoint audit"
    assert shown["tables"] == 2 and shown["table_rows"] > 16  # attacks, provenance
    assert shown["scroll_width"] <= width, shown
    assert 0 <= shown["verdict_top"] < 900
    assert "Vulnerable" in shown["verdict"] or "No query-only attack" in shown["verdict"]
    assert "verified first: determinism" in shown["verdict"]
