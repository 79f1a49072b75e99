"""How an attack computes: the precision of its products and the memory it may use.

An :class:`ExecutionPolicy` is passed down explicitly (CLI ``--precision`` and
``--memory-budget``); nothing here reads the environment.

* ``precision="fp32"`` (default) is the reference arithmetic that reproduces the paper's
  tables: every product and hinge sum in the embeddings' own dtype, exactly as before.
* ``"tf32"``: the attack's matrix products on TF32 tensor cores where the device has them
  (CUDA; on a CPU they stay fp32), and the hinge derivatives from exact comparison counts.
* ``"bf16"``: the gallery copy the attack multiplies with is bf16 (half the memory), products
  accumulate in fp32 (and return fp32 on CUDA; a CPU rounds the product to bf16), the model
  runs under bf16 autocast; comparisons, counts and gradients stay fp32. This covers the
  distances with a dot-product form (cosine, the paper's); others multiply in fp32 (TF32 on
  CUDA).

Whatever the precision, the *measurement* of ranks after the attack is fp32 and exact: it uses
the fp32 gallery embeddings and the model without autocast.

The memory budget (bytes) bounds the attack's working set: CA's distance tables and QA's
gallery chunks are sized from it and a batch that would not fit is run in sub-batches. An
out-of-memory error that still happens splits the batch in two and retries
(:class:`BatchSplitter`), with one line on stderr.
"""

from __future__ import annotations

import contextlib
import re
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advrank.core.checks import check_choice
from advrank.errors import AdvrankError

PRECISIONS = ("fp32", "tf32", "bf16")
MIN_BUDGET = 1 << 20  # 1 MiB: anything smaller is a typo
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"4GiB"``, ``"512MiB"``, ``"1.5G"``, ``"2000000000"`` -> bytes (int)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise AdvrankError(f"expected a size such as 4GiB, 512MiB or 2e9 (bytes), got {text!r}")
    value = float(match.group(1)) * _UNITS[unit]
    if value < MIN_BUDGET:
        raise AdvrankError(f"a memory budget must be at least 1 MiB, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _meminfo(field: str) -> int | None:
    """A field of /proc/meminfo (Linux) in bytes, e.g. ``MemTotal``; None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _available_ram() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the free physical pages."""
    available = _meminfo("MemAvailable")
    if available is not None:
        return available
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def device_total(device: torch.device) -> int | None:
    """All the memory of a CUDA device, or the host's RAM (MemTotal); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return _meminfo("MemTotal")


def device_budget(device: torch.device) -> int:
    """The default budget: 80% of the free memory of a CUDA device, half the available RAM
    of a CPU host (measured now: what the process already holds is not counted)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(MIN_BUDGET, int(0.8 * free))
    return max(MIN_BUDGET, _available_ram() // 2)


@dataclass(frozen=True)
class ExecutionPolicy:
    """Precision and memory of an attack (see the module docstring).

    ``memory_budget``: bytes, or None for :func:`device_budget` at run time. ``compile``: fuse
    the per-step hinge/count arithmetic with ``torch.compile`` (CUDA; worth it at large
    |X|, costs a compilation per shape).
    """

    precision: str = "fp32"
    memory_budget: int | None = None
    compile: bool = False

    def __post_init__(self):
        check_choice(self.precision, "precision", PRECISIONS)
        if self.memory_budget is not None and (
                isinstance(self.memory_budget, bool) or not isinstance(self.memory_budget, int)
                or self.memory_budget < MIN_BUDGET):
            raise AdvrankError(f"memory budget must be a number of bytes >= 1 MiB, got "
                               f"{self.memory_budget!r}")

    @property
    def reference(self) -> bool:
        """The fp32 reference arithmetic (bit for bit what earlier versions computed)."""
        return self.precision == "fp32"

    def product_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the attack stores its gallery copy in and multiplies with."""
        return torch.bfloat16 if self.precision == "bf16" and dtype == torch.float32 else dtype

    def budget(self, device: torch.device) -> int:
        """The budget in bytes on ``device``; one larger than the device is refused."""
        if self.memory_budget is None:
            return device_budget(device)
        total = device_total(device)
        if total is not None and self.memory_budget > total:
            raise AdvrankError(f"memory budget {format_bytes(self.memory_budget)} exceeds the "
                               f"{format_bytes(total)} of {device}; give at most that")
        return self.memory_budget

    @contextlib.contextmanager
    def products(self, device: torch.device) -> Iterator[None]:
        """TF32 matrix products on CUDA while the attack runs (tf32 and bf16: the products that
        bf16 does not cover, e.g. other distances); restores the previous setting."""
        if self.precision == "fp32" or device.type != "cuda":
            yield
            return
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)

    def model_context(self, device: torch.device):
        """bf16 autocast of the model's forward (and so its backward) under ``bf16``."""
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "memory_budget": self.memory_budget,
                "compile": self.compile}


DEFAULT_POLICY = ExecutionPolicy()


def get_policy(policy: ExecutionPolicy | None) -> ExecutionPolicy:
    if policy is None:
        return DEFAULT_POLICY
    if not isinstance(policy, ExecutionPolicy):
        raise AdvrankError(f"policy must be an ExecutionPolicy, got {type(policy).__name__}")
    return policy


# ----------------------------------------------------------------------------- products

_MM_DTYPE_OK: dict[str, bool] = {}


def matmul_fp32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``a [M, K] @ b [K, N]`` returned in fp32 whatever the (equal) input dtypes: bf16 inputs
    use cuBLAS with fp32 accumulation *and* fp32 output on CUDA; elsewhere the product is
    computed in the input dtype (fp32 accumulation inside) and converted. ``out``: an fp32
    ``[M, N]`` tensor to write into (and return)."""
    if a.dtype in (torch.float32, torch.float64):
        return torch.mm(a, b, out=out) if out is not None else a @ b
    if a.is_cuda and _MM_DTYPE_OK.get("cuda", True):
        try:
            if out is not None:
                return torch.mm(a, b, out_dtype=torch.float32, out=out)
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as exc:  # an older torch or cuBLAS: say so, go on
            _MM_DTYPE_OK["cuda"] = False
            print(f"advrank: bf16 products with fp32 output unavailable ({exc}); "
                  "rounding them to bf16", file=sys.stderr)
    product = (a @ b).float()
    return out.copy_(product) if out is not None else product


class _PreparedCache:
    """The galleries prepared for the attack's products (``distance.prepare`` in a dtype), kept
    while their gallery tensor lives: one normalisation per run, not one per batch. Holds the
    two most recent (e.g. a bf16 copy and the fp32 one), so a long run keeps no stale copy."""

    size = 2

    def __init__(self):
        self.entries: list[tuple[tuple, weakref.ref, torch.Tensor]] = []

    def get(self, distance, gallery: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (type(distance), distance.name, gallery.data_ptr(), tuple(gallery.shape),
               gallery.dtype, gallery.device, gallery._version, dtype)
        self.entries = [x for x in self.entries if x[1]() is not None]  # drop dead galleries
        for i, (k, ref, value) in enumerate(self.entries):
            if k == key and ref() is gallery:
                self.entries.append(self.entries.pop(i))
                return value
        if len(self.entries) >= self.size:
            self.entries.pop(0)  # free the oldest copy before making the new one
        with torch.no_grad():
            value = distance.prepare(gallery)
            value = value.to(dtype).contiguous() if value.dtype != dtype else value
        if value is gallery:  # nothing prepared (e.g. Euclidean): never hold the gallery
            return value
        self.entries.append((key, weakref.ref(gallery), value))
        return value

    def clear(self) -> None:
        self.entries = []


PREPARED = _PreparedCache()


def prepared_gallery(distance, gallery: torch.Tensor, dtype: torch.dtype | None = None
                     ) -> torch.Tensor:
    """``distance.prepare(gallery)`` in ``dtype`` (default: the gallery's), cached."""
    return PREPARED.get(distance, gallery, dtype or gallery.dtype)


class Workspace:
    """Named buffers reused from one gallery chunk (and one PGD step) to the next. The CPU
    allocator hands large blocks back to the system, so a fresh ``[B, n]`` tensor per chunk
    costs its page faults every time (as long as the arithmetic on it); CUDA's caching
    allocator makes reuse free there too."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        """A contiguous tensor of ``shape`` (uninitialised) backed by buffer ``name``."""
        numel = 1
        for size in shape:
            numel *= int(size)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            self.buffers.pop(name, None)
            buf = self.buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


# ------------------------------------------------------------------------ model memory

_MODEL_BYTES: dict[tuple, int] = {}


def model_bytes_per_item(model: nn.Module, image_shape: tuple[int, ...], device: torch.device,
                         policy: ExecutionPolicy) -> int:
    """Memory one more image costs in a PGD step: the tensors autograd saves for the input
    gradient (counted on batches of 1 and 2, so the weights cancel out), times 2 for the
    backward's own buffers. Cached per (model, shape, precision)."""
    key = (id(model), tuple(image_shape), str(device), policy.precision)
    if key in _MODEL_BYTES:
        return _MODEL_BYTES[key]
    sizes = []
    for b in (1, 2):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        x = torch.rand(b, *image_shape, device=device, requires_grad=True)
        was = model.training
        model.eval()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    policy.model_context(device):
                emb = model(x)
            total[0] += emb.numel() * emb.element_size()
        finally:
            model.train(was)
        sizes.append(total[0])
    per_item = max(1, 2 * (sizes[1] - sizes[0]) + 2 * x[0].numel() * 4 * 4)
    _MODEL_BYTES[key] = per_item
    return per_item


# ------------------------------------------------------------------------ out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def release_cached(device: torch.device | None = None) -> None:
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()


class BatchSplitter:
    """Runs work on ``[start, end)`` ranges of at most ``size`` items; on out-of-memory the
    range is halved and retried (and ``size`` stays halved for the rest of the run), with one
    line on stderr. Only a single item that does not fit is an error."""

    def __init__(self, size: int, what: str = "attacks", log: Callable[[str], None] | None = None,
                 device: torch.device | None = None):
        self.size, self.what, self.device = max(1, int(size)), what, device
        self.log = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
        self.splits = 0

    def run(self, fn: Callable[[int, int], Any], start: int, end: int) -> list:
        """``[fn(s, e) for each range]`` in order, covering ``[start, end)``."""
        out = []
        s = start
        while s < end:
            e = min(end, s + self.size)
            try:
                out.append(fn(s, e))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                del exc
                release_cached(self.device)
                if e - s <= 1:
                    raise AdvrankError(f"out of memory with a single item ({self.what}); lower "
                                       "--memory-budget's use (smaller w/m, --precision bf16) "
                                       "or use a larger device") from None
                self.size = max(1, (e - s) // 2)
                self.splits += 1
                self.log(f"advrank: out of memory on {e - s} {self.what}; splitting into "
                         f"batches of {self.size} and retrying")
                continue
            s = e
        return out
