"""Several processes, one result: ``torchrun --nproc-per-node N -m advrank ...``.

torchrun starts N copies of the command and tells each its place (world size, rank, local
rank, rendezvous address). advrank reads none of that itself: PyTorch's own API says whether
torchrun launched this process (``torch.distributed.is_torchelastic_launched``) and which GPU
is this process's (``torch.distributed.get_node_local_rank``), and ``init_process_group``
joins the group (gloo on CPU, nccl on CUDA) and knows its size. In one process every function
here is a no-op returning the one-process answer, so the library runs unchanged without
torchrun.

How work is split so that N processes give the numbers of one: a list of batches is cut into
N contiguous runs of *whole* batches (:func:`shard_batches`), so every batch is the same batch
a single process would run (same members, same shapes); the per-item results are then gathered
in rank order (:func:`gather_lists`, :func:`all_gather_rows`) and every rank holds all of them.
Rank 0 alone writes files.
"""

from __future__ import annotations

from typing import Any

import torch

from advrank.errors import AdvrankError

_STATE: dict[str, Any] = {"local_rank": 0, "owned": False, "rank": None}


def available() -> bool:
    return torch.distributed.is_available()


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def local_rank() -> int:
    return _STATE["local_rank"] if active() else 0


def is_main() -> bool:
    return rank() == 0


def last_rank() -> int:
    """Which process this is, for saying an error once: the rank in the group it joined last
    (kept after :func:`shutdown`); before joining, under torchrun, the node-local rank
    PyTorch reports; 0 in one process."""
    if active():
        return rank()
    if _STATE["rank"] is not None:
        return _STATE["rank"]
    return torch.distributed.get_node_local_rank(fallback_rank=0) if launched() else 0


def launched() -> bool:
    """True when torchrun started this process (PyTorch's own test of its launcher)."""
    return available() and torch.distributed.is_torchelastic_launched()


def init_from_env(device: str = "auto") -> bool:
    """Join torchrun's process group when torchrun started this process; True if the group
    has several processes.

    ``device``: the command's ``--device``; CUDA (or auto on a CUDA machine) uses nccl and one
    GPU per process (``cuda:`` the node-local rank), CPU uses gloo.
    """
    if not launched() or active():
        return active()
    if not available():
        raise AdvrankError("this torch build has no torch.distributed; run one process")
    use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
    if str(device).startswith("cuda:"):
        raise AdvrankError("under torchrun give --device cuda (each process takes the GPU of "
                           "its LOCAL_RANK), not a numbered device")
    _STATE["local_rank"] = torch.distributed.get_node_local_rank(fallback_rank=0)
    if use_cuda:
        if _STATE["local_rank"] >= torch.cuda.device_count():
            raise AdvrankError(f"process {_STATE['local_rank']} has no GPU: this machine has "
                               f"{torch.cuda.device_count()}; lower --nproc-per-node")
        torch.cuda.set_device(_STATE["local_rank"])
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    _STATE["owned"] = True
    _STATE["rank"] = torch.distributed.get_rank()
    return active()


def shutdown() -> None:
    """Leave the process group this module joined (end of a command)."""
    if _STATE["owned"] and available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _STATE["owned"] = False


def _device() -> torch.device:
    """Where collective tensors live: the rank's GPU for nccl, the CPU for gloo."""
    if active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def shard_batches(num_batches: int, r: int | None = None, w: int | None = None
                  ) -> tuple[int, int]:
    """The batches ``[first, last)`` of rank ``r`` among ``w``: contiguous, sizes differ by at
    most one, in rank order."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return r * num_batches // w, (r + 1) * num_batches // w


def shard_range(total: int, batch_size: int) -> tuple[int, int]:
    """This rank's items ``[start, end)`` of ``total`` items run in batches of ``batch_size``
    (whole batches, see :func:`shard_batches`)."""
    num_batches = -(-total // batch_size)
    first, last = shard_batches(num_batches)
    return min(total, first * batch_size), min(total, last * batch_size)


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_lists(values: list) -> list:
    """The concatenation, in rank order, of every rank's list."""
    return [item for part in gather_objects(values) for item in part]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``[n_r, ...]`` tensor along dim 0, in rank order (the n_r may
    differ); returned on the tensor's device."""
    if not active():
        return tensor
    dev = _device()
    shapes = [tuple(s) for s in gather_objects(tuple(tensor.shape))]
    sizes = [s[0] for s in shapes]
    tail = next((s[1:] for s in shapes if s[0] > 0), tensor.shape[1:])  # an empty rank's
    padded = torch.zeros((max(sizes), *tail), dtype=tensor.dtype, device=dev)  # may be [0, 0]
    if tensor.shape[0]:
        padded[: tensor.shape[0]] = tensor.to(dev)
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(tensor.device)


def min_int(value: int) -> int:
    """The smallest of every rank's ``value`` (e.g. a memory budget all ranks can afford)."""
    if not active():
        return int(value)
    return min(int(v) for v in gather_objects(int(value)))


def barrier() -> None:
    if active():
        torch.distributed.barrier()


class GatherRows(torch.autograd.Function):
    """Differentiable :func:`all_gather_rows` for equal-sized shards (training): forward
    concatenates every rank's rows; backward hands each rank its own slice of the gradient,
    times the world size, because every rank computes the same loss on the gathered batch
    and DistributedDataParallel then *averages* the parameter gradients over the ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.n, ctx.r, ctx.w = tensor.shape[0], rank(), world_size()
        parts = [torch.empty_like(tensor) for _ in range(ctx.w)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.r * ctx.n : (ctx.r + 1) * ctx.n] * ctx.w


def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's equal-sized ``[n, ...]`` rows, in rank order, differentiably (training)."""
    return GatherRows.apply(tensor) if active() else tensor
