"""The execution policy: sizes, precision choices, the prepared-gallery cache, model memory and
the out-of-memory splitter."""

import pytest
import torch

from advrank.core.distances import CosineDistance, EuclideanDistance
from advrank.core.execution import (
    PREPARED,
    BatchSplitter,
    ExecutionPolicy,
    is_out_of_memory,
    matmul_fp32,
    model_bytes_per_item,
    parse_bytes,
    prepared_gallery,
)
from advrank.errors import AdvrankError
from advrank.models import create_model


def test_parse_bytes_units_and_refusals():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes("2e9") == 2_000_000_000
    assert parse_bytes(" 3 gb ") == 3_000_000_000
    for bad in ("lots", "4 parsecs", "-1GiB", "", "1KiB"):
        with pytest.raises(AdvrankError):
            parse_bytes(bad)


def test_policy_validates_and_describes():
    assert ExecutionPolicy().reference and not ExecutionPolicy("bf16").reference
    assert ExecutionPolicy("bf16").product_dtype(torch.float32) == torch.bfloat16
    assert ExecutionPolicy("tf32").product_dtype(torch.float32) == torch.float32
    assert ExecutionPolicy("bf16").product_dtype(torch.float64) == torch.float64  # tests' dtype
    with pytest.raises(AdvrankError, match="precision"):
        ExecutionPolicy("fp16")
    with pytest.raises(AdvrankError, match="memory budget"):
        ExecutionPolicy(memory_budget=10)
    assert ExecutionPolicy(memory_budget=2**30).budget(torch.device("cpu")) == 2**30
    assert ExecutionPolicy().budget(torch.device("cpu")) >= 2**20  # from the host
    with pytest.raises(AdvrankError, match="exceeds"):
        ExecutionPolicy(memory_budget=2**60).budget(torch.device("cpu"))
    assert ExecutionPolicy("tf32", 2**30).describe() == {
        "precision": "tf32", "memory_budget": 2**30, "compile": False}


def test_matmul_fp32_returns_fp32_for_bf16_inputs():
    a, b = torch.randn(5, 8), torch.randn(8, 3)
    out = matmul_fp32(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, a @ b, atol=0.2)
    assert torch.equal(matmul_fp32(a, b), a @ b)


def test_prepared_gallery_is_cached_per_gallery_and_dtype():
    PREPARED.clear()
    g = torch.randn(20, 4)
    cos = CosineDistance()
    first = prepared_gallery(cos, g)
    assert prepared_gallery(cos, g) is first  # normalised once
    low = prepared_gallery(cos, g, torch.bfloat16)
    assert low.dtype == torch.bfloat16 and prepared_gallery(cos, g) is first
    g.mul_(2)  # an in-place change is a new gallery
    assert prepared_gallery(cos, g) is not first
    assert prepared_gallery(EuclideanDistance(), g) is g  # nothing prepared: not held
    other = torch.randn(20, 4)
    assert torch.allclose(prepared_gallery(cos, other), cos.prepare(other))


def test_model_bytes_grow_with_the_image_and_cancel_the_weights():
    model = create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38])
    small = model_bytes_per_item(model, (1, 8, 8), torch.device("cpu"), ExecutionPolicy())
    big = model_bytes_per_item(create_model("c2f1", (1, 28, 28), 16), (1, 28, 28),
                               torch.device("cpu"), ExecutionPolicy())
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert 0 < small < big
    assert small < weights  # weights are not per item


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                         "tried to allocate 10 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_splitter_halves_on_out_of_memory_and_keeps_order():
    calls, lines = [], []

    def work(s, e):
        calls.append((s, e))
        if e - s > 3:
            raise torch.OutOfMemoryError("simulated")
        return list(range(s, e))

    splitter = BatchSplitter(10, "attacks", log=lines.append)
    out = splitter.run(work, 0, 10)
    assert [i for part in out for i in part] == list(range(10))
    assert splitter.size == 2 and splitter.splits == 2
    assert len(lines) == 2 and "out of memory on 10 attacks" in lines[0]
    assert calls[0] == (0, 10) and max(e - s for s, e in calls[2:]) <= 2  # stays split


def test_splitter_refuses_a_single_item_that_does_not_fit_and_passes_other_errors():
    def never(s, e):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(AdvrankError, match="single item"):
        BatchSplitter(4, log=lambda m: None).run(never, 0, 4)

    def broken(s, e):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        BatchSplitter(4).run(broken, 0, 4)
