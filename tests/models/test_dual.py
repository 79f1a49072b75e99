"""Dual encoders: a model with a text tower (clip-tiny, open_clip:ARCH, a python factory's
pair) is an image model everywhere and embeds texts into the same space; checkpoints hold both
towers and load without running code; a single-tower model refuses texts in one line."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from torch import nn

from advrank.errors import AdvrankError
from advrank.models import DualEncoder, create_model
from advrank.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from advrank.models.dual import has_text_tower, text_encoder
from advrank.models.sources import SourceOptions, load_source_model

QUIET = {"log": lambda msg: None}
needs_open_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                     reason="open_clip_torch is not installed")
#: the smallest open_clip architecture (text width 256, 10 layers), at 32 px: one patch
SMALL_CLIP = "ViT-S-32-alt"


def _clip_tiny(embed_dim: int = 16) -> DualEncoder:
    torch.manual_seed(0)
    return create_model("clip-tiny", (1, 8, 8), embed_dim, [0.3], [0.38]).eval()


@needs_open_clip
def test_clip_tiny_is_an_image_model_with_a_text_tower():
    model = _clip_tiny()
    assert isinstance(model, DualEncoder) and has_text_tower(model)
    assert model.image_shape == (1, 8, 8) and model.embed_dim == 16
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), model.image(x))  # forward is the image tower
    with torch.no_grad():
        text = model.encode_text(["a photo of a 3", "a photo of a 7", "a photo of a 3"])
    assert text.shape == (3, 16) and text.dtype == torch.float32
    assert torch.allclose(text[0], text[2]) and not torch.allclose(text[0], text[1])


@needs_open_clip
def test_text_tower_sees_only_the_tokens_up_to_the_end_of_text():
    # padding after the end-of-text token is masked, so a text's embedding does not depend
    # on the context length it was padded to
    model = _clip_tiny()
    tokens = model.text.tokenizer()(["a photo of a 3"], context_length=16)
    with torch.no_grad():
        long = model.text.encode(tokens)
        short = model.text.encode(tokens[:, :8])
    assert torch.allclose(long, short, atol=1e-5)


@needs_open_clip
def test_a_clip_tiny_checkpoint_holds_both_towers_and_loads_with_weights_only(tmp_path):
    model = _clip_tiny()
    meta = {"dataset": "digits", "arch": "clip-tiny", "metric": "cosine", "embed_dim": 16,
            "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]}
    save_checkpoint(tmp_path / "dual.pt", model, meta)
    payload = load_checkpoint(tmp_path / "dual.pt")
    assert any(k.startswith("text.") for k in payload["model"])
    loaded, _ = model_from_checkpoint(tmp_path / "dual.pt")
    texts = ["a photo of a 1", "a 9"]
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(texts), model.encode_text(texts))
        x = torch.rand(2, 1, 8, 8)
        assert torch.equal(loaded(x), model(x))
    # a damaged normalisation buffer of the image tower is still caught
    payload["model"]["image.normalize.std"] = torch.tensor([0.5]).view(1, 1, 1, 1)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(AdvrankError, match="normalize.std"):
        model_from_checkpoint(tmp_path / "bad.pt")


def test_a_single_tower_model_refuses_texts_in_one_line():
    model = create_model("c2f1", (1, 8, 8), 16)
    assert not has_text_tower(model)
    with pytest.raises(AdvrankError, match="has no text tower"):
        text_encoder(model)


@needs_open_clip
def test_bad_texts_and_bad_text_towers_are_one_error():
    model = _clip_tiny()
    for bad in ([], "a photo", ["ok", ""], ["ok", 3]):
        with pytest.raises(AdvrankError):
            model.encode_text(bad)

    class Wide(nn.Module):
        def forward(self, texts):
            return torch.zeros(len(texts), 5)

    class Broken(nn.Module):
        def forward(self, texts):
            return torch.full((len(texts), 16), float("nan"))

    for tower, what in ((Wide(), "share one space"), (Broken(), "non-finite")):
        with pytest.raises(AdvrankError, match=what):
            DualEncoder(model.image, tower).encode_text(["a photo"])


@needs_open_clip
def test_open_clip_gives_both_towers_of_a_clip_checkpoint(tmp_path):
    import open_clip

    logging.getLogger().setLevel(logging.ERROR)
    clip = open_clip.create_model(SMALL_CLIP, pretrained=None, force_image_size=32).eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model, info = load_source_model(f"open_clip:{SMALL_CLIP}", SourceOptions(
        input_size=32, weights=str(tmp_path / "clip.pt")), **QUIET)
    assert isinstance(model, DualEncoder) and info["text_tower"] == "loaded"
    texts = ["a photo of a boot", "a sandal"]
    tokens = open_clip.get_tokenizer(SMALL_CLIP)(texts)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(texts), clip.encode_text(tokens), atol=1e-5)
    # the image tower's own file: the text tower stays random, and says so
    visual = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    torch.save(visual, tmp_path / "visual.pt")
    notes = []
    model, info = load_source_model(f"open_clip:{SMALL_CLIP}", SourceOptions(
        input_size=32, weights=str(tmp_path / "visual.pt")), log=notes.append)
    assert info["text_tower"] == "random" and any("hold 0 of the text tower" in n
                                                  for n in notes)
    # a head on the image tower leaves the text tower's space: a single-tower model
    model, info = load_source_model(f"open_clip:{SMALL_CLIP}", SourceOptions(
        input_size=32, embed_dim=8), **QUIET)
    assert not has_text_tower(model) and "text_tower" not in info


@needs_open_clip
def test_text_weights_that_do_not_fit_are_refused(tmp_path):
    import open_clip

    logging.getLogger().setLevel(logging.ERROR)
    clip = open_clip.create_model(SMALL_CLIP, pretrained=None, force_image_size=32)
    state = clip.state_dict()
    state["token_embedding.weight"] = state["token_embedding.weight"][:, :8]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(AdvrankError, match="text weights do not fit.*token_embedding"):
        load_source_model(f"open_clip:{SMALL_CLIP}", SourceOptions(
            input_size=32, weights=str(tmp_path / "bad.pt")), **QUIET)
    state = clip.state_dict()
    state["text_head.weight"] = torch.zeros(2)  # a tensor the tower does not have
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(AdvrankError, match="1 it does not have"):
        load_source_model(f"open_clip:{SMALL_CLIP}", SourceOptions(
            input_size=32, weights=str(tmp_path / "extra.pt")), **QUIET)


def test_a_python_factory_may_return_an_image_and_a_text_encoder(tmp_path):
    (tmp_path / "pair.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Text(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.table = nn.Embedding(256, 8)\n"
        "    def forward(self, texts):\n"
        "        ids = [torch.tensor(list(t.encode()[:16])) for t in texts]\n"
        "        return torch.stack([self.table(i).mean(0) for i in ids])\n\n"
        "def build():\n"
        "    image = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))\n"
        "    image.data_config = {'input_size': (3, 16, 16)}\n"
        "    return image, Text()\n")
    model, info = load_source_model(f"python:{tmp_path / 'pair.py'}:build", **QUIET)
    assert isinstance(model, DualEncoder) and info["text_tower"] == "random"
    assert model.encode_text(["boots", "a sandal"]).shape == (2, 8)
    assert str(tmp_path / "pair.py") in info["code_files"]
