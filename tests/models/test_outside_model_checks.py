"""An outside model that the attacks cannot use is one error line before any work: it is
probed forward and backward on a batch of two and on the real batch size (finite
embeddings, one floating-point row per image, a finite gradient with respect to the input);
every later forward checks dtype and rows again."""

from __future__ import annotations

import textwrap

import pytest
import torch

from advrank.experiments.target import TargetSpec, load_target

TEMPLATE = '''
import torch
from torch import nn

class Broken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward here")

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 16 * 16, 6)

    def forward(self, x):
        z = self.lin(x.flatten(1))
{body}

def build():
    net = Net()
    net.data_config = {config}
    return net
'''
CONFIG = '{"input_size": (3, 16, 16), "crop_pct": 1.0}'

BAD = {
    "integer": ("return (z * 100).long()", "torch.int64 values"),
    "complex": ("return torch.complex(z, z)", "torch.complex64 values"),
    "zero width": ("return z[:, :0]", "one non-empty row per image"),
    "drops rows": ("return z[:1]", "one non-empty row per image"),
    "detached": ("return z.detach()", "without a gradient"),
    "no_grad": ("with torch.no_grad():\n    return self.lin(x.flatten(1))",
                "without a gradient"),
    "non-finite": ("return z / 0", "non-finite embeddings"),
    "NaN gradient": ("return z + (z - z).abs().sqrt()", "NaN or infinite gradient"),
    "larger batches": ("if x.shape[0] > 4:\n    raise RuntimeError('kernel failed')\nreturn z",
                       "fails on a [64, 3, 16, 16] input: RuntimeError: kernel failed"),
    "a tuple": ("return z, z", "returns tuple, not a tensor"),
    "backward raises": ("return Broken.apply(z)", "fails computing the gradient for a batch of 2"),
}


def _factory(tmp_path, body: str, config: str = CONFIG) -> str:
    path = tmp_path / "net.py"
    path.write_text(textwrap.dedent(TEMPLATE).format(body=textwrap.indent(body, " " * 8),
                                                     config=config))
    return f"python:{path}:build"


@pytest.mark.parametrize("case", list(BAD))
def test_a_model_the_attacks_cannot_use_is_one_error_line(case, tmp_path, image_folder, cli,
                                                          one_error_line):
    body, message = BAD[case]
    out = tmp_path / "out"
    status, stdout, stderr = cli(["audit", "--model", _factory(tmp_path, body), "--data",
                                  f"imagefolder:{image_folder}", "--out", out, "--device",
                                  "cpu", "--quiet", "--num-attacks", "2"])
    one_error_line(status, stdout, stderr, message)
    assert not (out / "report.json").exists() and not (out / "cache").exists()


@pytest.mark.parametrize("config, message", [
    ('{"input_size": "big"}', "data config cannot be used"),
    ('{"input_size": (3, 16, 16), "mean": 5}', "data config cannot be used"),
    ('[("input_size", 16)]', "data_config must be a dict"),
])
def test_a_data_config_of_the_wrong_type_is_one_error_line(config, message, tmp_path,
                                                           image_folder, cli, one_error_line):
    status, stdout, stderr = cli(["audit", "--model", _factory(tmp_path, "return z", config),
                                  "--data", f"imagefolder:{image_folder}", "--out",
                                  tmp_path / "out", "--device", "cpu", "--quiet"])
    one_error_line(status, stdout, stderr, message)


def test_float64_embeddings_are_used_as_float32(tmp_path, image_folder):
    spec = TargetSpec(model=_factory(tmp_path, "return z.double()"),
                      data=f"imagefolder:{image_folder}", batch_size=16)
    target = load_target(spec, "cpu", progress=False)
    assert target.gallery.embeddings.dtype == torch.float32
    assert target.gallery.embeddings.shape == (60, 6)
