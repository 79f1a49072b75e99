"""Training a dual encoder (clip-tiny) on captions from class names with open_clip's
contrastive loss: both towers learn, the checkpoint records text-to-image Recall@1, a resumed
run equals an uninterrupted one, and losses that do not fit the model are one error."""

from __future__ import annotations

import pytest
import torch

from advrank.errors import AdvrankError
from advrank.models.checkpoint import load_checkpoint, model_from_checkpoint
from advrank.models.dual import has_text_tower
from advrank.training import TrainConfig, train
from advrank.training.captions import CAPTION_TEMPLATES, captions

pytest.importorskip("open_clip")


def _config(**kw):
    base = dict(dataset="digits", arch="clip-tiny", embed_dim=16, device="cpu", seed=0,
                epochs=1)
    return TrainConfig(**{**base, **kw})


def test_clip_tiny_trains_both_towers_on_captions(tmp_path):
    result = train(_config(epochs=2), tmp_path / "dual.pt", progress=False)
    meta = result.meta
    assert meta.loss == "clip" and meta.extra["captions"] == list(CAPTION_TEMPLATES)
    history = result.history
    assert [set(row) for row in history] == [
        {"epoch", "loss", "recall@1", "text_recall@1", "seconds"}] * 2
    # after 16 steps the captions find their class well above chance (10%)
    assert meta.extra["text_recall@1"] > 25 and meta.recall_at_1 > 80
    assert history[1]["loss"] < history[0]["loss"]
    model, _ = model_from_checkpoint(tmp_path / "dual.pt")
    assert has_text_tower(model)
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(["a photo of a 3",
                                                                 "a photo of a 7"]), dim=1)
    assert text[0] @ text[1] < 0.99  # the text tower learned to tell the classes apart


def test_a_resumed_dual_run_equals_an_uninterrupted_one(tmp_path):
    train(_config(epochs=2), tmp_path / "full.pt", progress=False)
    train(_config(epochs=1), tmp_path / "half.pt", progress=False)
    payload = load_checkpoint(tmp_path / "half.pt")
    payload["meta"]["epochs"] = 2  # as a run of 2 epochs interrupted after the first
    torch.save(payload, tmp_path / "half.pt")
    train(_config(epochs=2), tmp_path / "half.pt", progress=False)
    a, b = load_checkpoint(tmp_path / "full.pt")["model"], load_checkpoint(tmp_path /
                                                                          "half.pt")["model"]
    assert a.keys() == b.keys() and any(k.startswith("text.") for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("kw, fragment", [
    ({"loss": "triplet"}, "trains with --loss clip"),
    ({"arch": "c2f1", "loss": "clip"}, "needs a model with a text tower"),
    ({"metric": "euclidean"}, "cosine"),
])
def test_losses_that_do_not_fit_the_model_are_one_error(tmp_path, kw, fragment):
    with pytest.raises(AdvrankError, match=fragment):
        train(_config(**kw), tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_a_defense_does_not_go_with_the_caption_loss(tmp_path):
    from advrank.defenses import make_defense

    with pytest.raises(AdvrankError, match="no --defense"):
        train(_config(), tmp_path / "x.pt", defense=make_defense("est", eps=0.1),
              progress=False)


def test_captions_name_each_image_class_in_a_drawn_template():
    torch.manual_seed(0)
    texts = captions(torch.tensor([0, 2, 2]), ["boot", "bag", "coat"])
    assert [t.endswith(("boot", "coat")) for t in texts] == [True] * 3
    assert all(any(t == tpl.replace("{}", name) for tpl in CAPTION_TEMPLATES)
               for t, name in zip(texts, ["boot", "coat", "coat"], strict=True))
