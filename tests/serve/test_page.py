"""The search page in a real browser (headless Chromium; skipped without it): a picture
dropped on the page finds the expected item first among the thumbnails, at a phone-ish and
a desktop width, with no script error and nothing wider than the window."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_search_page.py"


@pytest.fixture(scope="module")
def driver():
    from advrank.reports.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium (install Debian's chromium package)")
    spec = importlib.util.spec_from_file_location("screenshot_search_page", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("width", [800, 1400])
def test_a_dropped_picture_finds_its_item_first(digits_ckpt, serve, driver, width, tmp_path):
    with serve(digits_ckpt, "--scores") as (base, _):
        picture = httpx.get(f"{base}/items/123/thumbnail", timeout=30).content
        shot = tmp_path / "page.png"
        seen = driver.drop_picture(base, picture, width, 900, screenshot=shot)
    hits = seen["hits"]
    assert seen["errors"] == [] and len(hits) == 10, seen
    assert hits[0]["id"] == 123 and hits[0]["rank"] == 1, seen
    assert all(h["thumbnail"] for h in hits) and "label" in hits[0]["text"]
    assert "distance 0.0000" in hits[0]["text"] and "719 items" in seen["about"]
    assert seen["scroll_width"] <= seen["width"] and shot.stat().st_size > 1000
