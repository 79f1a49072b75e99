"""Pictures through the model so that a picture's embedding never depends on what shares its
batch, at the cost of the real requests only.

A row computed inside a batch of n may differ in its last bits from the same row computed in
a batch of m (a matrix kernel picks its path by shape: on CPUs, one row goes through a
matrix-vector product that sums in another order), and answers then drift. When the service
starts, :class:`Forward` measures this on its own model and machine: a probe batch goes
through at the sizes 1, 2, 4, ... up to ``max_batch``; if every size gives every row the
same bits, batches go through as they come (padded up to the next probed size, so only
measured shapes ever run); if not, each picture goes through on its own (one shape, the
same bits by construction). Either way a lone request costs one picture's forward, never a
padded batch's.
"""

from __future__ import annotations

import torch

SEED = 0


def use_threads(threads: int | None) -> None:
    """``threads`` threads for the model and the FAISS index in the calling thread's searches
    (None: leave torch's and FAISS's defaults). Called on every search thread: OpenMP keeps
    the setting per thread. Why: on a CPU, a search worker whose model and index each spread
    over every core waits on threads that the other workers, the event loop and the clients
    hold (a small model's forward and a one-row search took 2x longer so, measured)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:  # no FAISS: the exact index (torch) is the only one there is
        return
    faiss.omp_set_num_threads(threads)


def probe_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, and ``max_batch`` itself."""
    sizes, s = [], 1
    while s < max_batch:
        sizes.append(s)
        s *= 2
    return [*sizes, max_batch]


class Forward:
    """``model`` on ``device`` for pictures ``[C, H, W]`` (``shape``), at most ``max_batch``
    at a time; ``batched`` says which way (see the module docstring)."""

    def __init__(self, model, device, shape: tuple[int, ...], max_batch: int):
        self.model, self.device = model, device
        self.sizes = probe_sizes(max_batch)
        self.batched = self._invariant(tuple(shape))

    @torch.no_grad()
    def _invariant(self, shape: tuple[int, ...]) -> bool:
        """Whether every probed batch size gives every row the bits it gets alone."""
        gen = torch.Generator().manual_seed(SEED)
        x = torch.rand(self.sizes[-1], *shape, generator=gen).to(self.device)
        alone = torch.cat([self.model(x[i : i + 1]) for i in range(x.shape[0])])
        return all(torch.equal(self.model(x[:s]), alone[:s]) for s in self.sizes[1:])

    def describe(self) -> str:
        if self.batched:
            return f"batched (sizes {', '.join(map(str, self.sizes))}: same bits as alone)"
        return "one picture at a time (batched rows differ in their last bits here)"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[n, D]`` (float32, on the CPU) of ``images [n, C, H, W]``."""
        images = images.to(self.device)
        n = images.shape[0]
        if not self.batched:
            rows = [self.model(images[i : i + 1]) for i in range(n)]
            return torch.cat(rows).float().cpu()
        out, start = [], 0
        while start < n:
            size = next((s for s in self.sizes if s >= n - start), self.sizes[-1])
            part = images[start : start + size]
            pad = size - part.shape[0]
            if pad:
                part = torch.cat([part, part.new_zeros(pad, *part.shape[1:])])
            out.append(self.model(part)[: size - pad])
            start += size - pad
        return torch.cat(out).float().cpu()
