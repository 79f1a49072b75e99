"""Render a report in a real browser (headless Chromium): a check that the page loads
without errors and shows its tables and every image, and screenshots for the README.

Used by the browser test and by ``scripts/screenshot_report.py``, so both render the same
way. Nothing here is needed to write a report; without Chromium, :func:`find_chromium`
returns None and callers skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from advrank.errors import AdvrankError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: headless, offline, no profile state, no background traffic
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--mute-audio", "--no-default-browser-check")

#: collects errors from the first moment (failed resources fire "error" in capture phase)
_PROBE_HEAD = """<script>window.__errors=[];
addEventListener('error',e=>{__errors.push(e.message||('failed to load '+
 ((e.target&&(e.target.src||e.target.href))||'?').slice(0,80)))},true);
document.addEventListener('securitypolicyviolation',e=>__errors.push('CSP blocked '+e.blockedURI));
</script>"""
#: after load: what the page shows, written into the DOM for --dump-dom
_PROBE_TAIL = """<script>addEventListener('load',()=>{const im=[...document.images];
const shown=i=>{const r=i.getBoundingClientRect();return r.width>0&&r.height>0};
const ok=i=>i.complete&&i.naturalWidth>0;
const out={images:im.length,loaded:im.filter(ok).length,visible:im.filter(shown).length,
broken:im.filter(i=>!ok(i)).map(i=>i.alt),tables:document.querySelectorAll('table').length,
table_rows:document.querySelectorAll('table tr').length,
panels:document.querySelectorAll('.panel').length,title:document.title,errors:__errors,
width:innerWidth,scroll_width:document.documentElement.scrollWidth,
verdict:(document.getElementById('verdict')||{}).textContent||'',
verdict_top:(document.getElementById('verdict')||{getBoundingClientRect:()=>({top:-1})})
.getBoundingClientRect().top};
const p=document.createElement('pre');p.id='advrank-check';p.textContent=JSON.stringify(out);
document.body.appendChild(p)});</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome binary on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise AdvrankError("no Chromium found (install Debian's chromium package)")
    with tempfile.TemporaryDirectory(prefix="advrank-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise AdvrankError(f"Chromium did not finish within {timeout:.0f}s") from None


def check_page(html_path: str | Path, timeout: float = 120, width: int = 1280,
               height: int = 1700) -> dict[str, Any]:
    """Load a copy of the page in a ``width`` x ``height`` window with a probe script (the
    page itself has none and forbids scripts, so the copy's policy admits inline scripts and
    nothing else) and return what it showed: ``images``, ``loaded``, ``visible``, ``broken``,
    ``tables``, ``table_rows``, ``panels``, ``title``, ``errors`` (script errors, failed
    loads, blocked requests), ``width`` and ``scroll_width`` (wider than ``width``: the page
    scrolls sideways), ``verdict`` (its text) and ``verdict_top`` (pixels from the top)."""
    page = Path(html_path).read_text(encoding="utf-8")
    page = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    page = page.replace("<head>", "<head>" + _PROBE_HEAD, 1)
    page = page.replace("</body>", _PROBE_TAIL + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="advrank-page-") as tmp:
        probe = Path(tmp) / "page.html"
        probe.write_text(page, encoding="utf-8")
        done = _run(["--dump-dom", f"--window-size={width},{height}",
                     "--virtual-time-budget=10000", probe.as_uri()], timeout)
    found = re.search(r'<pre id="advrank-check">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise AdvrankError(f"Chromium produced no page check (exit {done.returncode}): "
                           f"{done.stderr.strip()[-300:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280,
               height: int = 1700, timeout: float = 120, max_colors: int | None = 256) -> Path:
    """A PNG of the page's first ``width`` x ``height`` pixels, reduced to ``max_colors``
    colours (a report is mostly flat colour; this keeps the file small for a README)."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    done = _run([f"--screenshot={png_path}", f"--window-size={width},{height}",
                 "--virtual-time-budget=10000", Path(html_path).resolve().as_uri()], timeout)
    if not png_path.is_file():
        raise AdvrankError(f"Chromium wrote no screenshot (exit {done.returncode}): "
                           f"{done.stderr.strip()[-300:]}")
    if max_colors:
        from PIL import Image

        with Image.open(png_path) as img:
            small = img.convert("RGB").quantize(colors=max_colors, dither=Image.Dither.NONE)
        small.save(png_path, optimize=True)
    return png_path
