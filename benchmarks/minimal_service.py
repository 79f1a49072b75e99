"""A minimal FastAPI + FAISS image search service: what a person would write in an afternoon,
the yardstick of ``scripts/serve_throughput.py`` for ``advrank serve``.

One request, one picture: the raw body read, decoded with PIL (the model's channels, resized
to its input), one forward of that picture alone, one FAISS search (``IndexFlatIP`` over
L2-normalised embeddings for cosine, ``IndexFlatL2`` for euclidean), ``{"ids": [...]}``. The
work runs in FastAPI's thread pool (torch and FAISS release the GIL: concurrent requests use
every core), nothing else: no batching, no limits, no validation beyond what PIL refuses, no
metrics, no logs. The model and the gallery's embeddings come from advrank's own loader (set-up,
not the request path), so both services rank the same vectors.

    python benchmarks/minimal_service.py --checkpoint runs/mnist-c2f1.pt --port 0

prints ``serving on http://127.0.0.1:PORT`` when ready (as ``advrank serve`` does).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time

import argparse
import io
import socket
import sys

import numpy as np
import torch


def build(checkpoint: str, device: str = "cpu"):
    """The FastAPI app over ``checkpoint``'s gallery."""
    import faiss
    from fastapi import FastAPI, Request
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    from advrank.experiments.target import load_target

    target = load_target(checkpoint, device, progress=False)
    model, (channels, height, width) = target.model.eval(), target.meta.image_shape
    cosine = target.meta.metric == "cosine"
    emb = target.gallery.embeddings.float().cpu()
    if cosine:
        emb = torch.nn.functional.normalize(emb, dim=1)
    index = (faiss.IndexFlatIP if cosine else faiss.IndexFlatL2)(emb.shape[1])
    index.add(emb.numpy())

    @torch.no_grad()
    def search(data: bytes, k: int) -> list[int]:
        img = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = x[None, None] if channels == 1 else x.permute(2, 0, 1)[None]
        q = model(x.to(device)).float().cpu()
        if cosine:
            q = torch.nn.functional.normalize(q, dim=1)
        _, ids = index.search(q.numpy(), k)
        return ids[0].tolist()

    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/search")
    async def search_endpoint(request: Request, k: int = 10):
        data = await request.body()
        return {"ids": await run_in_threadpool(search, data, k), "scores": None}

    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import uvicorn

    app = build(args.checkpoint, args.device)
    # IPPROTO_TCP named: asyncio then sets TCP_NODELAY on each connection (without it, Nagle
    # and delayed ACKs add about 40 ms to every answer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    print(f"serving on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False)).run(
        sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
