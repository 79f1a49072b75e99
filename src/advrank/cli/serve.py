"""``advrank serve``: a target's gallery behind an HTTP search API (advrank/serve/app.py)."""

from __future__ import annotations

import socket
import sys

from advrank.cli.declare import load_target_from_args
from advrank.cli.groups import add_index, add_target_options
from advrank.cli.parsing import Command, log
from advrank.cli.values import integer
from advrank.errors import AdvrankError


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), refused in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
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

    config = uvicorn.Config(app, log_level="error" if quiet else "warning", access_log=False,
                            lifespan="off")
    return Server(config)


def cmd_serve(args) -> None:
    from advrank.core.index import build_index
    from advrank.serve.app import Limits, create_app

    limits = Limits(args.max_body_bytes, args.max_pixels, args.max_concurrency, args.max_k,
                    min(args.k, args.max_k), max_batch=args.max_batch,
                    batch_wait=args.batch_wait_ms / 1000)
    sock = _bind(args.host, args.port)  # a busy port is refused before the model loads
    target = load_target_from_args(args)
    say = log(args)
    index = build_index(target.gallery.embeddings, target.meta.metric, args.index,
                        args.cache_dir, target.fingerprint, say)
    server = _server(create_app(target, index, args.scores, limits), args.quiet)
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
    /info. Every bad upload gets one 4xx {"error": ...}. Stops on Ctrl-C or SIGTERM."""
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
    p.add_argument("--max-concurrency", type=integer(1, 100_000), default=4,
                   help="searches in flight at once; more get 503 with Retry-After")
    p.add_argument("--max-batch", type=integer(1, 4096), default=32,
                   help="concurrent searches run through the model as one batch of this "
                        "many rows (zeros pad it: an answer never depends on its batch)")
    p.add_argument("--batch-wait-ms", type=integer(0, 10_000), default=2,
                   help="how long a batch waits for more searches once its first is in")


COMMANDS = (
    Command("serve", cmd_serve, _serve_options),
)
