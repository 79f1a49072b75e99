"""Upload pipelines: the PNG round trip is the 8-bit rounding, the JPEG one is PIL's codec
(deterministic, within its expected error), the differentiable JPEG stays close to PIL's with a
finite gradient, and bad specs are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from advrank.attacks import LinfThreatModel
from advrank.core.pipeline import (
    JpegPipeline,
    differentiable_jpeg,
    get_pipeline,
    quantisation_table,
)
from advrank.data import load_dataset
from advrank.errors import AdvrankError


@pytest.fixture(scope="module")
def grey():
    """64 digits, upsampled to 24 x 28 (not a multiple of 16: libjpeg's edge blocks)."""
    x = load_dataset("digits", "test").images[:32]
    return F.interpolate(x, size=(24, 28), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def rgb():
    """Smooth random colour pictures [8, 3, 30, 36] (a natural picture's spectrum, roughly)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 3, 6, 6, generator=g)
    fine = 0.1 * torch.rand(8, 3, 30, 36, generator=g)
    return (F.interpolate(coarse, size=(30, 36), mode="bilinear") + fine).clamp(0, 1)


def test_png_round_trip_is_the_8bit_rounding_and_a_real_png(grey, rgb):
    png = get_pipeline("png")
    for x in (grey, rgb):
        out = png(x)
        assert torch.equal(out, torch.round(x * 255) / 255)
        assert out.shape == x.shape and not torch.equal(out, x)  # the inputs are off the grid
        # a PNG file stores exactly these levels
        levels = (out[0] * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        buf = io.BytesIO()
        Image.fromarray(levels).save(buf, "PNG")
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        assert np.array_equal(back, levels)
    assert torch.equal(png(png(grey)), png(grey))  # idempotent


@pytest.mark.parametrize("picture", ["grey", "rgb"])
def test_jpeg_round_trip_is_deterministic_and_within_its_expected_error(picture, request):
    x = request.getfixturevalue(picture)
    errors = {}
    for q in (25, 75, 95):
        out = get_pipeline(f"jpeg:{q}")(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.equal(out, get_pipeline(f"jpeg:{q}")(x))  # deterministic
        assert torch.equal(out * 255, (out * 255).round())  # decoded 8-bit levels
        errors[q] = (out - x).abs().mean().item()
    # lossy, less so at higher quality, and never a different picture
    assert errors[25] > errors[75] > errors[95] > 0.2 / 255
    assert errors[25] < 25 / 255


@pytest.mark.parametrize("picture", ["grey", "rgb"])
def test_differentiable_jpeg_is_close_to_pil_with_a_finite_gradient(picture, request):
    x = request.getfixturevalue(picture)
    for q in (50, 75, 90):
        real = JpegPipeline(q)(x)
        approx = differentiable_jpeg(x, q)
        codec_error = (real - x).abs().mean()
        gap = (approx - real).abs().mean()
        assert gap < 0.25 * codec_error and gap < 3 / 255, (q, gap, codec_error)
        assert torch.equal(approx * 255, (approx * 255).round())
    xr = x.clone().requires_grad_(True)
    y = differentiable_jpeg(xr, 75)
    (grad,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), xr)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.9


def test_the_gradient_reaches_black_and_white_pixels():
    """An MNIST background (exactly 0) must still move when attacked through a pipeline."""
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 4:8, 4:8] = 1.0
    for spec in ("png", "jpeg:75"):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(get_pipeline(spec).differentiable(xr).sum(), xr)
        assert (grad != 0).all(), spec


def test_quantisation_tables_follow_libjpeg():
    assert quantisation_table((16,) * 64, 50)[0, 0] == 16
    assert quantisation_table((16,) * 64, 75)[0, 0] == 8  # 16 * 50 / 100
    assert quantisation_table((16,) * 64, 10)[0, 0] == 80  # 16 * 500 / 100
    assert quantisation_table((99,) * 64, 1).max() == 255  # baseline: clipped
    assert quantisation_table((16,) * 64, 100).min() == 1


def test_specs_are_parsed_and_bad_ones_refused():
    assert get_pipeline("jpeg:75").spec == "jpeg:75"
    assert get_pipeline(" JPEG ").spec == "jpeg:75"  # PIL's default quality
    assert get_pipeline("png").spec == "png" and get_pipeline(None).spec == "none"
    for bad, words in (("jpeg:0", "1..100"), ("jpeg:101", "1..100"), ("jpeg:x", "1..100"),
                       ("jpeg:", "1..100"), ("gif", "unknown pipeline"),
                       ("png:3", "takes no argument"), ("", "unknown pipeline")):
        with pytest.raises(AdvrankError, match=words):
            get_pipeline(bad)
    with pytest.raises(AdvrankError, match="grey or RGB"):
        get_pipeline("jpeg:75")(torch.rand(1, 2, 8, 8))


def test_threat_model_holds_the_pipeline():
    plain = LinfThreatModel(0.1)
    assert plain.pipeline is None and "pipeline" not in plain.describe()
    assert LinfThreatModel(0.1, pipeline="none") == plain  # "none" is the paper's setting
    t = LinfThreatModel(0.1, pipeline="jpeg:50", through_pipeline=True)
    assert t.describe()["pipeline"] == "jpeg:50" and t.describe()["through_pipeline"]
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(t.attacked_input(x), differentiable_jpeg(x, 50))
    assert torch.equal(LinfThreatModel(0.1, pipeline="png").attacked_input(x), x)
    with pytest.raises(AdvrankError, match="needs a pipeline"):
        LinfThreatModel(0.1, through_pipeline=True)
