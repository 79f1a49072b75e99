"""What identifies a result covers everything that determines it: the model's code as well as
its weights (a python: factory or TorchScript export whose forward changed), each picture's
content (an edit that keeps size and mtime), the plugin set; the embedding cache is verified
against a checksum of its content on load."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch

from advrank import registry
from advrank.errors import AdvrankError
from advrank.experiments.target import TargetSpec, load_target

FACTORY = '''
import torch
from torch import nn

SCALE = {scale}

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 16 * 16, 6)

    def forward(self, x):
        return self.lin(x.flatten(1)) * SCALE

def build():
    net = Net()
    net.data_config = {{"input_size": (3, 16, 16), "crop_pct": 1.0}}
    return net
'''


@pytest.fixture
def setup(tmp_path, image_folder):
    """A python: factory file, a folder of 3 x 4 BMP pictures (fixed-size files, so an edit
    keeps the size) and a cache folder."""
    from PIL import Image

    folder = tmp_path / "photos"
    for cls in ("circles", "squares", "stripes"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((image_folder / cls).iterdir())[:4]:
            with Image.open(f) as img:
                img.resize((16, 16)).save(folder / cls / f"{f.stem}.bmp")
    model = tmp_path / "net.py"
    model.write_text(textwrap.dedent(FACTORY.format(scale=1.0)))
    return model, folder, tmp_path / "cache"


def _load(model, folder, cache):
    spec = TargetSpec(model=f"python:{model}:build", data=f"imagefolder:{folder}",
                      cache_dir=str(cache), batch_size=5)
    return load_target(spec, "cpu", progress=False)


def test_a_changed_forward_with_the_same_weights_is_a_cache_miss(setup):
    model, folder, cache = setup
    first = _load(model, folder, cache)
    again = _load(model, folder, cache)
    assert again.info["cache"]["reused"] and again.fingerprint == first.fingerprint
    model.write_text(textwrap.dedent(FACTORY.format(scale=2.0)))  # same weights, new code
    changed = _load(model, folder, cache)
    assert changed.info["model_sha"] == first.info["model_sha"]  # the weights are the same
    assert not changed.info["cache"]["reused"]
    assert changed.fingerprint != first.fingerprint  # so an audit or grid does not resume
    assert torch.allclose(changed.gallery.embeddings, 2 * first.gallery.embeddings, atol=1e-5)


def test_torchscript_code_is_part_of_the_identity(tmp_path, setup):
    _, folder, cache = setup
    torch.manual_seed(0)
    lin = torch.nn.Linear(3 * 16 * 16, 6)
    sha = {}
    for name, scale in (("one", 1.0), ("two", 3.0)):
        class Net(torch.nn.Module):
            def __init__(self, s: float):
                super().__init__()
                self.lin, self.s = lin, s

            def forward(self, x):
                return self.lin(x.flatten(1)) * self.s

        path = tmp_path / "model.ts"
        torch.jit.save(torch.jit.script(Net(scale)), str(path))
        spec = TargetSpec(model=f"torchscript:{path}", data=f"imagefolder:{folder}",
                          cache_dir=str(cache), input_size=16, batch_size=4)
        target = load_target(spec, "cpu", progress=False)
        sha[name] = (target.info["code_sha"], target.fingerprint, target.info["cache"])
    assert sha["one"][0] != sha["two"][0] and sha["one"][1] != sha["two"][1]
    assert not sha["two"][2]["reused"]


def test_an_edit_that_keeps_size_and_mtime_is_seen(setup):
    model, folder, cache = setup
    first = _load(model, folder, cache)
    victim = folder / "circles" / "000.bmp"
    st = os.stat(victim)
    data = bytearray(victim.read_bytes())
    data[-200:] = bytes(255 - b for b in data[-200:])  # pixels, not the header
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(victim).st_size == st.st_size
    edited = _load(model, folder, cache)
    assert not edited.info["cache"]["reused"]
    assert edited.info["content_sha"] != first.info["content_sha"]
    assert edited.fingerprint != first.fingerprint


def test_an_overwritten_cache_is_refused(setup):
    model, folder, cache = setup
    _load(model, folder, cache)
    (file,) = cache.glob("gallery-*.safetensors")
    data = bytearray(file.read_bytes())
    data[-20] ^= 0x55  # inside the last tensor's bytes; metadata and sizes untouched
    file.write_bytes(bytes(data))
    with pytest.raises(AdvrankError, match="damaged .*checksum"):
        _load(model, folder, cache)


def test_a_plugin_that_replaces_a_built_in_is_recorded(setup, monkeypatch):
    model, folder, cache = setup
    plain = _load(model, folder, cache)
    assert "plugins" not in plain.describe() or not plain.describe()["plugins"]
    monkeypatch.setattr(registry, "REPLACED", {})
    monkeypatch.setattr(registry, "PLUGIN_FILES", {"my_plugin.py": "0" * 64})
    reg = registry.Registry("attack")
    reg.register("CA+", object)
    reg.register("CA+", dict, replace=True)
    assert registry.REPLACED == {"attack:CA+": "builtins"}
    plugged = _load(model, folder, cache)
    assert plugged.describe()["plugins"] == {"plugins": {"my_plugin.py": "0" * 64},
                                             "replaced": {"attack:CA+": "builtins"}}
    assert plugged.fingerprint != plain.fingerprint and not plugged.info["cache"]["reused"]

