"""The search page of ``advrank serve`` driven in headless Chromium, as a person uses it: a
picture dropped on the page (a real ``drop`` event carrying a File, handled by the page's
own code), the results read back from the page, and screenshots for README.

    python scripts/screenshot_search_page.py --checkpoint digits.pt --item 17

starts the service on a free loopback port, drops gallery item 17's own picture on the page
and writes ``docs/search-page-800.png`` and ``docs/search-page-1400.png``. The browser test
(tests/serve/test_page.py) calls :func:`drop_picture` the same way.

How the page is driven: its HTML is fetched from the service, given a ``<base>`` pointing
back at the service and a probe script (Chromium's own flags then let the local copy reach
the service), and loaded with ``--dump-dom`` or ``--screenshot``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: drops ``window.__picture`` on the page once it has loaded, waits for the results and
#: their thumbnails, and writes what the page shows into ``<pre id="advrank-check">``
PROBE = """<script>window.__errors=[];
addEventListener('error',e=>__errors.push(e.message||'failed to load '+
 ((e.target&&(e.target.src||e.target.href))||'?').slice(0,80)),true);
addEventListener('load',async()=>{
 const wait=ms=>new Promise(r=>setTimeout(r,ms));
 for(let i=0;i<100&&!document.getElementById('about').textContent.includes('items');i++)
  await wait(50);
 const bytes=Uint8Array.from(atob(window.__picture),c=>c.charCodeAt(0));
 const dt=new DataTransfer();dt.items.add(new File([bytes],'query.png',{type:'image/png'}));
 document.getElementById('drop').dispatchEvent(new DragEvent('drop',
  {dataTransfer:dt,bubbles:true,cancelable:true}));
 const hits=()=>[...document.querySelectorAll('.hit')];
 for(let i=0;i<200&&!hits().length;i++)await wait(50);
 const ok=im=>im.complete&&im.naturalWidth>0;
 for(let i=0;i<100&&!hits().every(h=>ok(h.querySelector('img')));i++)await wait(50);
 const out={hits:hits().map(h=>({id:+h.dataset.id,rank:+h.dataset.rank,text:h.innerText,
  thumbnail:ok(h.querySelector('img'))})),status:document.getElementById('status')
  .textContent,about:document.getElementById('about').textContent,errors:__errors,
  width:innerWidth,scroll_width:document.documentElement.scrollWidth};
 const p=document.createElement('pre');p.id='advrank-check';p.hidden=true;
 p.textContent=JSON.stringify(out);document.body.appendChild(p)});
</script>"""


def _page(base: str, picture: bytes) -> str:
    """The service's page, pointed back at the service, with the probe and the picture."""
    import httpx

    page = httpx.get(base + "/", timeout=30).text
    head = (f'<base href="{base}/"><script>window.__picture="'
            f'{base64.b64encode(picture).decode()}"</script>{PROBE}')
    return page.replace("<head>", "<head>" + head, 1)


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    from advrank.reports.browser import FLAGS, find_chromium

    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium found (install Debian's chromium package)")
    with tempfile.TemporaryDirectory(prefix="advrank-chromium-") as profile:
        # the local copy of the page reaches the service: a file:// page has no origin the
        # service's answers could name
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", "--disable-web-security",
               "--allow-file-access-from-files", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)


def _few_colours(path: Path, colours: int = 256) -> None:
    """The screenshot reduced to ``colours`` colours (flat page colours: a small file)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=colours, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def drop_picture(base: str, picture: bytes, width: int = 1400, height: int = 900,
                 screenshot: Path | None = None, timeout: float = 120) -> dict:
    """Drop ``picture`` (PNG bytes) on the search page of the service at ``base`` in a
    ``width`` x ``height`` window; what the page then shows (``hits``: id, rank, text,
    thumbnail loaded; ``status``; ``errors``...), and a screenshot when asked."""
    with tempfile.TemporaryDirectory(prefix="advrank-page-") as tmp:
        page = Path(tmp) / "search.html"
        page.write_text(_page(base, picture), encoding="utf-8")
        common = [f"--window-size={width},{height}", "--virtual-time-budget=20000"]
        done = _chromium(["--dump-dom", *common, page.as_uri()], timeout)
        found = re.search(r'<pre id="advrank-check"[^>]*>(.*?)</pre>', done.stdout, re.S)
        if not found:
            raise RuntimeError(f"the page gave no check (exit {done.returncode}): "
                               f"{done.stderr.strip()[-400:]}")
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            _chromium([f"--screenshot={Path(screenshot).resolve()}", *common,
                       page.as_uri()], timeout)
            _few_colours(Path(screenshot))
    return json.loads(html.unescape(found.group(1)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--item", type=int, default=17, help="the gallery item dropped")
    p.add_argument("--out", default=str(REPO / "docs"))
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import httpx
    from script_results import serving

    with serving(args.checkpoint, args.device, 64, ["--scores"]) as url:
        picture = httpx.get(f"{url}/items/{args.item}/thumbnail", timeout=30).content
        for width in (800, 1400):
            out = Path(args.out) / f"search-page-{width}.png"
            seen = drop_picture(url, picture, width, 900, out)
            print(json.dumps({"width": width, "screenshot": str(out),
                              "top": [h["id"] for h in seen["hits"][:5]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
