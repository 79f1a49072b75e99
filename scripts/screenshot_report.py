#!/usr/bin/env python
"""Render an audit's report.html in headless Chromium: check that it loads without errors
and shows every image, then save a screenshot (PNG, colours reduced to keep it small).

    python scripts/screenshot_report.py audit/report.html docs/audit-report-800.png --width 800

The browser test (tests/reports/test_report_browser.py) renders with the same code
(advrank.reports.browser).
"""

from __future__ import annotations

import argparse
import sys

from advrank.errors import AdvrankError
from advrank.reports.browser import check_page, find_chromium, screenshot


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="the report.html to render")
    p.add_argument("png", help="where to write the screenshot")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1700)
    args = p.parse_args()
    if find_chromium() is None:
        print("screenshot_report: no Chromium on PATH (apt-get install chromium)",
              file=sys.stderr)
        return 2
    try:
        shown = check_page(args.report)
        if shown["errors"] or shown["broken"] or shown["loaded"] != shown["images"]:
            print(f"screenshot_report: the page does not render cleanly: {shown}",
                  file=sys.stderr)
            return 1
        path = screenshot(args.report, args.png, args.width, args.height)
    except AdvrankError as exc:
        print(f"screenshot_report: {exc}", file=sys.stderr)
        return 2
    print(f"{args.report}: {shown['images']} images, {shown['tables']} tables, "
          f"{shown['panels']} example panels, no errors; wrote {path} "
          f"({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
