"""``advrank serve``: a target's gallery behind an HTTP search API (advrank/serve/app.py)."""

from __future__ import annotations

import socket
import sys

from advrank.cli.declare import load_target_from_args
from advrank.cli.groups import add_index, add_target_options
from advrank.cli.parsing import Command, log
from advrank.cli.values import integer, number, pipeline_spec
from advrank.errors import AdvrankError


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), refused in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # a crowd of clients connecting at once is queued, not dropped
    except OSError as exc:
        raise AdvrankError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _server(app, quiet: bool):
    """A uvicorn server whose SIGINT/SIGTERM end ``run`` (graceful shutdown) and the
    command with status 0, instead of being raised again after the shutdown as uvicorn
    does by default."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    # the app writes its own access log (one line per request) and runs its own lifespan
    config = uvicorn.Config(app, log_level="error" if quiet else "warning", access_log=False,
                            lifespan="on")
    return Server(config)


def _check_writes(args) -> None:
    """``--writable`` and ``--token`` come together (a catalog nobody may write to, or a token
    for nothing, is a mistake), before any work."""
    if args.writable and args.token is None:
        raise AdvrankError("--writable needs --token TOKEN (the bearer token writes must carry)")
    if args.token is not None and not args.writable:
        raise AdvrankError("--token is for --writable (the write path); add --writable or drop "
                           "--token")
    token = args.token
    if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
        raise AdvrankError("--token must be at least 8 printable characters, no spaces")


def _on_cpu(device: str) -> bool:
    import torch

    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _default_threads(device: str) -> int | None:
    """Threads per search worker: one on a CPU (workers, not threads, use the cores: see
    results/serve-throughput), the framework's own elsewhere."""
    return 1 if _on_cpu(device) else None


def _default_workers(device: str, threads: int | None) -> int:
    """Batches at once: the cores the workers' threads fill, on a CPU (one elsewhere: an
    accelerator runs one batch at a time anyway)."""
    import os

    import torch

    if not _on_cpu(device):
        return 1
    per = threads or torch.get_num_threads()
    return max(1, min(8, (os.cpu_count() or 1) // max(1, per)))


def cmd_serve(args) -> None:
    from advrank.core.index import build_index
    from advrank.serve.app import Limits, create_app

    _check_writes(args)
    threads = args.threads or _default_threads(args.device)
    limits = Limits(args.max_body_bytes, args.max_pixels, args.max_queue, args.max_k,
                    min(args.k, args.max_k), max_batch=args.max_batch,
                    batch_wait=args.batch_wait_ms / 1000,
                    request_timeout=args.request_timeout,
                    workers=args.search_workers or _default_workers(args.device, threads),
                    threads=threads)
    sock = _bind(args.host, args.port)  # a busy port is refused before the model loads
    target = load_target_from_args(args)
    say = log(args)
    index = build_index(target.gallery.embeddings, target.meta.metric, args.index,
                        args.cache_dir, target.fingerprint, say)
    access = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    app = create_app(target, index, args.scores, limits, access, args.token, args.pipeline)
    server = _server(app, args.quiet)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("advrank: the search service stopped", file=sys.stderr)


def _serve_options(p) -> None:
    """serve a model's gallery behind an HTTP search API

    POST /search?k=K with a PNG or JPEG (raw image/* body or multipart field 'file') returns
    {"ids": [...], "scores": [...] or null}, the top K gallery members nearest first (with
    rank_of=I,J,...: {"ranks": [...]}, where those ids sit in that list); GET /health, GET
    /info, GET /metrics (Prometheus), GET / (a search page), GET /items/ID (what an id is)
    and its /thumbnail, OpenAPI at /docs; with --writable --token TOKEN, POST /items and
    DELETE /items/ID. Every bad upload gets one 4xx
    {"error": ...}; one access-log line per request on stderr (none with --quiet). Stops on
    Ctrl-C or SIGTERM."""
    add_target_options(p)
    add_index(p, default="exact")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 exposes the service to the network)")
    p.add_argument("--port", type=integer(0, 65535), default=8000,
                   help="port to listen on (0: a free one, printed when ready)")
    p.add_argument("--scores", action="store_true",
                   help="include the distances in search answers (default: ids only, what a "
                        "deployed search shows)")
    p.add_argument("--k", type=integer(1, 100_000), default=10,
                   help="results when a search names no k")
    p.add_argument("--max-k", type=integer(1, 100_000), default=100,
                   help="the largest k a search may ask for (at most the gallery size)")
    p.add_argument("--max-body-bytes", type=integer(1, 2**40), default=20 * 2**20,
                   help="largest upload accepted, in bytes")
    p.add_argument("--max-pixels", type=integer(1, 2**40), default=40_000_000,
                   help="largest picture accepted (width x height, read from its header "
                        "before decoding: decompression bombs are refused)")
    p.add_argument("--max-queue", "--max-concurrency", dest="max_queue",
                   type=integer(1, 1_000_000), default=256,
                   help="searches that may wait for the model at once (a search takes its "
                        "place once its upload is in); more get 503 with Retry-After")
    p.add_argument("--request-timeout", type=number(0.001, 86_400, what="seconds"),
                   default=30.0,
                   help="seconds a request may take, its upload included; slower ones get 408")
    p.add_argument("--pipeline", type=pipeline_spec, default=None, metavar="PIPELINE",
                   help="re-encode every upload (searches and inserts) before embedding it, "
                        "as a deployed search does: png (8-bit) or jpeg:Q (a real JPEG at "
                        "quality Q, at the model's input size); /info says which")
    p.add_argument("--writable", action="store_true",
                   help="offer the catalog's write path: POST /items adds a picture (decoded "
                        "and embedded as a search upload is), DELETE /items/ID removes one; "
                        "both need --token")
    p.add_argument("--token", default=None, metavar="TOKEN",
                   help="the bearer token writes must carry (Authorization: Bearer TOKEN); "
                        "never logged nor shown")
    p.add_argument("--max-batch", type=integer(1, 4096), default=32,
                   help="the most searches that go through the model and the index as one "
                        "batch (an answer never depends on what shares its batch)")
    p.add_argument("--search-workers", type=integer(1, 64), default=None,
                   help="batches that go through the model and the index at once, each on a "
                        "thread (default: on a CPU, the cores divided by --threads)")
    p.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="threads each search worker's model and index use (default: 1 on a "
                        "CPU, where the workers use the cores; the framework's own on a GPU)")
    p.add_argument("--batch-wait-ms", type=integer(0, 10_000), default=0,
                   help="how long a batch waits for more searches once its first is in "
                        "(default 0: batches form from what waits while the model works)")


COMMANDS = (
    Command("serve", cmd_serve, _serve_options),
)
