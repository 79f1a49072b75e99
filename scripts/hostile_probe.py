"""A held-out probe of issue 30's surfaces: other instances of the classes its tests cover.

* The HTTP oracle (mock transports, as tests/oracles/test_http.py builds them) against
  answers with float ids, boolean scores, a top-level list, 100,000-deep nesting, bytes that
  are not UTF-8, huge, negative and repeated ids, NaN and Infinity, Retry-After values that
  are garbage or negative, an HTML 500, an empty 200, a 307, and /info fields out of range:
  each must end in one error line (an AdvrankError), never a traceback nor a score.
* ``advrank serve --writable`` (started here on a free loopback port) against uploads that
  trickle a byte a second on /items, as a text search, as multipart and chunked (a 408 at
  the deadline while /health and a search answer within a second), slow headers, hang-ups
  on /items, and bad parameters (one JSON 4xx each); the answer for a fixed picture is the
  same at the end and the service's log holds no traceback.

    python scripts/hostile_probe.py --checkpoint digits.pt

Prints one line per case; the lead reads them (a case is clean when it says so above).
"""

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "oracles"))
from test_http import INFO, oracle_with, reply  # noqa: E402

from advrank.errors import AdvrankError  # noqa: E402

ITEMS = b"POST /items HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer probe-secret-1234\r\n"
SEARCH = b"POST /search?k=5 HTTP/1.1\r\nHost: x\r\n"


def probe_client() -> None:
    x = torch.rand(2, 1, 4, 4)
    cases = {
        "ids as floats": lambda r: reply({"ids": [1.0, 2.0], "scores": None}),
        "bool score": lambda r: reply({"ids": [1, 2], "scores": [True, 0.2]}),
        "top-level list": lambda r: reply([1, 2, 3]),
        "deep nesting": lambda r: reply("[" * 100000 + "]" * 100000),
        "non-utf8": lambda r: reply(b"\xff\xfe\xfa"),
        "huge int id": lambda r: reply({"ids": [10**30], "scores": None}),
        "negative id": lambda r: reply({"ids": [-3], "scores": None}),
        "duplicate ids": lambda r: reply({"ids": [1, 1, 1], "scores": None}),
        "NaN literal": lambda r: reply('{"ids": [1], "scores": [NaN]}'),
        "Infinity": lambda r: reply('{"ids": [1], "scores": [Infinity]}'),
        "retry-after garbage 503": lambda r: reply(
            {"error": "busy"}, 503, {"Retry-After": "soon!"}
        ),
        "retry-after negative 429": lambda r: reply({"error": "busy"}, 429, {"Retry-After": "-5"}),
        "500 html": lambda r: reply("<html>oops</html>", 500),
        "empty 200": lambda r: reply(b""),
        "307": lambda r: reply(b"", 307, {"Location": "http://evil/"}),
    }
    for name, h in cases.items():
        try:
            o = (
                oracle_with(h, "topk-scores:3", INFO, retries=1)
                if False
                else oracle_with(h, "topk-scores:3", INFO)
            )
            try:
                a = o.answer(x)
                print(f"{name}: ANSWERED ids={a.ids.tolist()} lost={a.lost.tolist()}")
            finally:
                o.close()
        except AdvrankError as e:
            print(f"{name}: one line: {str(e)[:150]!r}", "MULTILINE" if "\n" in str(e) else "")
        except BaseException as e:
            print(f"{name}: TRACEBACK {type(e).__name__}: {str(e)[:150]}")
    info_cases = {
        "gallery_size -1": {**INFO, "gallery_size": -1},
        "max_k 0": {**INFO, "max_k": 0},
        "input_size str": {**INFO, "input_size": "1x4x4"},
        "id_bound < size": {**INFO, "id_bound": 5},
        "api 99": {**INFO, "api": 99},
        "extra huge field": {**INFO, "blob": "x" * 10},
    }
    for name, info in info_cases.items():
        try:
            o = oracle_with(lambda r: reply({"ids": [1], "scores": [0.1]}), "topk-scores:3", info)
            o.close()
            print(f"info {name}: accepted")
        except AdvrankError as e:
            print(f"info {name}: one line: {str(e)[:150]!r}")
        except BaseException as e:
            print(f"info {name}: TRACEBACK {type(e).__name__}: {str(e)[:150]}")


def probe_server(BASE: str, PORT: int) -> None:
    def png():
        b = io.BytesIO()
        Image.fromarray(
            np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8), "L"
        ).save(b, "PNG")
        return b.getvalue()

    P = png()
    first = httpx.post(
        f"{BASE}/search?k=5", content=P, headers={"content-type": "image/png"}
    ).json()

    def trickle_raw(head, seconds, out):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=20)
        s.sendall(head)
        s.settimeout(1.0)
        t = time.time()
        got = b""
        while time.time() - t < seconds:
            try:
                s.sendall(b"\x89")
                c = s.recv(4096)
                if not c:
                    break
                got += c
                if b"\r\n\r\n" in got:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        out.append((round(time.time() - t, 1), got[:60]))
        s.close()

    out = []
    heads = [
        ITEMS + b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n",
        SEARCH + b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n",
        SEARCH + b"Content-Type: multipart/form-data; boundary=zz\r\n"
        b"Content-Length: 5000\r\n\r\n",
        SEARCH + b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    ths = [threading.Thread(target=trickle_raw, args=(h, 12, out)) for h in heads]
    [t.start() for t in ths]
    time.sleep(0.5)
    t0 = time.time()
    h = httpx.get(f"{BASE}/health", timeout=10).status_code
    hs = time.time() - t0
    t0 = time.time()
    again = httpx.post(
        f"{BASE}/search?k=5", content=P, headers={"content-type": "image/png"}, timeout=10
    ).json()
    ss = time.time() - t0
    print(
        "during trickles: health",
        h,
        round(hs, 3),
        "s; search same:",
        again == first,
        round(ss, 3),
        "s",
    )
    [t.join(20) for t in ths]
    for o in out:
        print("trickler:", o)

    # slow headers (slowloris)
    def slow_headers(out):
        s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        s.settimeout(1.0)
        t = time.time()
        got = b""
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.5)
            try:
                c = s.recv(100)
                if not c:
                    break
                got += c
            except TimeoutError:
                pass
            except OSError:
                break
        out.append(("slow headers", round(time.time() - t, 1), got[:60]))
        s.close()

    so = []
    st = threading.Thread(target=slow_headers, args=(so,))
    st.start()
    time.sleep(1)
    t0 = time.time()
    print(
        "health during slow headers",
        httpx.get(f"{BASE}/health", timeout=10).status_code,
        round(time.time() - t0, 3),
    )
    st.join(90)
    print(so)
    # hang up on /items mid upload
    for sent in (10, 100):
        s = socket.create_connection(("127.0.0.1", PORT))
        s.sendall(
            ITEMS + b"Content-Type: image/png\r\nContent-Length: 2000\r\n\r\n"
            + b"\x89PNG"
            + b"\0" * (sent - 4)
        )
        time.sleep(0.05)
        s.close()
    # other bodies
    cases = [
        (
            "rank_of huge list",
            dict(
                url=f"{BASE}/search?k=5&rank_of=" + ",".join(["1"] * 5000),
                content=P,
                headers={"content-type": "image/png"},
            ),
        ),
        (
            "k=10^30",
            dict(
                url=f"{BASE}/search?k=1000000000000000000000000000000",
                content=P,
                headers={"content-type": "image/png"},
            ),
        ),
        ("k=-1", dict(url=f"{BASE}/search?k=-1", content=P, headers={"content-type": "image/png"})),
        (
            "items wrong token",
            dict(
                url=f"{BASE}/items",
                content=P,
                headers={"content-type": "image/png", "authorization": "Bearer nope"},
            ),
        ),
        (
            "items basic auth",
            dict(
                url=f"{BASE}/items",
                content=P,
                headers={"content-type": "image/png", "authorization": "Basic Zm9vOmJhcg=="},
            ),
        ),
        ("text on single tower", dict(url=f"{BASE}/search?k=3", json={"text": "x"})),
        (
            "gif",
            dict(
                url=f"{BASE}/search?k=3",
                content=b"GIF89a" + b"\0" * 50,
                headers={"content-type": "image/gif"},
            ),
        ),
        (
            "png header only",
            dict(url=f"{BASE}/search?k=3", content=P[:40], headers={"content-type": "image/png"}),
        ),
    ]
    for name, kw in cases:
        r = httpx.post(**kw, timeout=20)
        try:
            body = r.json()
        except Exception:
            body = r.text[:80]
        print(name, r.status_code, str(body)[:120])
    for path in [
        "/items/0",
        "/items/999999",
        "/items/-1",
        "/items/abc",
        "/info",
        "/items/0/thumbnail",
    ]:
        r = httpx.get(f"{BASE}{path}", timeout=10)
        print(
            "GET",
            path,
            r.status_code,
            r.text[:150] if "thumbnail" not in path else r.headers.get("content-type"),
        )
    again = httpx.post(
        f"{BASE}/search?k=5", content=P, headers={"content-type": "image/png"}
    ).json()
    print("fixed picture unchanged at the end:", again == first)


def main() -> int:
    checkpoint = sys.argv[sys.argv.index("--checkpoint") + 1]
    probe_client()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "advrank",
            "serve",
            "--checkpoint",
            checkpoint,
            "--port",
            str(port),
            "--writable",
            "--token",
            "probe-secret-1234",
            "--request-timeout",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        print(proc.stdout.readline().strip())
        probe_server(f"http://127.0.0.1:{port}", port)
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[1]
    print("tracebacks in the service's log:", log.count("Traceback"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
