"""Training a dual encoder on a labelled picture collection: captions from the class names,
open_clip's contrastive loss (``--loss clip``, the default of a model with a text tower).

Each image of a batch gets a caption: one of :data:`CAPTION_TEMPLATES` (drawn at random, from
the seeded generator of the epoch) with its class name; open_clip's ``ClipLoss`` (the
symmetric InfoNCE of CLIP) then pulls each image towards its caption and away from the other
captions of the batch, on cosine similarities scaled by the model's learnable temperature
(``logit_scale`` of the text tower, capped at 100 as CLIP does). Two images of one class in a
batch get captions that may coincide: ClipLoss still counts the other as a negative, the
usual price of CLIP-style training on class labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from advrank.core.distances import Distance
from advrank.errors import AdvrankError
from advrank.models.dual import text_encoder
from advrank.registry import LOSSES

#: the caption templates of training (each image of a step gets one at random)
CAPTION_TEMPLATES = ("a photo of a {}", "a picture of a {}", "a product photo of a {}",
                     "an image of a {}", "a {}", "a photo of the {}", "a close-up photo of a {}",
                     "a black and white photo of a {}")
MAX_LOGIT_SCALE = 100.0


def captions(labels: torch.Tensor, class_names: Sequence[str],
             templates: Sequence[str] = CAPTION_TEMPLATES) -> list[str]:
    """One caption per label ``[B]``: a template drawn from torch's global generator (seeded
    per epoch by the trainer, so a resumed run draws what an uninterrupted one does)."""
    pick = torch.randint(len(templates), (labels.numel(),)).tolist()
    return [templates[t].replace("{}", class_names[int(y)])
            for t, y in zip(pick, labels.tolist(), strict=True)]


class CaptionContrastiveLoss(nn.Module):
    """open_clip's ``ClipLoss`` between a batch of images and captions of their classes.

    A model-level loss: :meth:`training_loss` takes the model (a dual encoder), the images
    ``[B, C, H, W]`` and labels ``[B]``, and returns the loss and the image embeddings
    ``[B, D]``. ``bind`` gives it the class names (data, known once the training set is
    read)."""

    def __init__(self, distance: Distance, templates: Sequence[str] = CAPTION_TEMPLATES):
        super().__init__()
        if distance.name != "cosine":
            raise AdvrankError(f"the contrastive caption loss compares cosine similarities; "
                               f"use --metric cosine, not {distance.name}")
        from open_clip.loss import ClipLoss

        self.clip_loss, self.templates = ClipLoss(), tuple(templates)
        self.class_names: list[str] | None = None

    def bind(self, class_names: Sequence[str]) -> CaptionContrastiveLoss:
        self.class_names = [str(n) for n in class_names]
        return self

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise AdvrankError("the clip loss needs the model's text tower: it trains models "
                           "with one (--arch clip-tiny)")

    def training_loss(self, model: nn.Module, images: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.class_names is None:
            raise AdvrankError("the clip loss was not given the class names (bind)")
        dual = text_encoder(model, "the model being trained")
        emb = dual(images)
        text = dual.encode_text(captions(labels, self.class_names, self.templates))
        scale = getattr(dual.text, "logit_scale", None)
        scale = (scale.exp().clamp(max=MAX_LOGIT_SCALE) if scale is not None
                 else torch.tensor(1 / 0.07, device=emb.device))
        loss = self.clip_loss(nn.functional.normalize(emb, dim=-1),
                              nn.functional.normalize(text, dim=-1), scale)
        return loss, emb


@LOSSES.register("clip", text_tower=True)
def clip(distance: Distance, margin: float) -> nn.Module:
    """CLIP's contrastive loss between images and captions of their class names (models
    with a text tower; ``margin`` unused)."""
    del margin
    return CaptionContrastiveLoss(distance)


def class_names_of(dataset) -> list[str]:
    """The names of a training set's labels 0..K-1 (``label_name``: Fashion-MNIST's names,
    folder names, the digit itself)."""
    top = int(dataset.labels.max()) + 1
    return [dataset.label_name(i) for i in range(top)]


@torch.no_grad()
def text_recall_at_1(model: nn.Module, dataset, gallery_emb: torch.Tensor,
                     distance: Distance) -> float:
    """Text-to-image Recall@1 (%) of the captions of every class of ``dataset`` (each of
    :data:`CAPTION_TEMPLATES` with each class name: 80 queries for 10 classes) against its
    images' embeddings ``gallery_emb [N, D]``."""
    from advrank.core.metrics import query_metrics

    labels = dataset.labels.to(gallery_emb.device)
    present = sorted(set(labels.tolist()))
    pairs = [(t.replace("{}", dataset.label_name(y)), y) for t in CAPTION_TEMPLATES
             for y in present]
    text = text_encoder(model).encode_text([p for p, _ in pairs]).to(gallery_emb.device)
    query_labels = torch.tensor([y for _, y in pairs], device=gallery_emb.device)
    figures = query_metrics(text, query_labels, gallery_emb, labels, distance, (1,))
    value = figures["recall@1"]
    if not math.isfinite(value):
        raise AdvrankError("text-to-image Recall@1 is not finite")
    return value


def bind_loss(loss_fn: nn.Module, train_set, defense, processes: int) -> None:
    """Give a caption loss the training set's class names; refuse what it cannot go with
    (a defense, which hooks the metric-learning loss; several processes, whose DDP wrapper
    would not see the text tower's forward)."""
    if not isinstance(loss_fn, CaptionContrastiveLoss):
        return
    if defense is not None:
        raise AdvrankError("defenses hook the metric-learning losses; a dual encoder trains "
                           "with --loss clip and no --defense")
    if processes > 1:
        raise AdvrankError("--loss clip trains in one process (not under torchrun)")
    loss_fn.bind(class_names_of(train_set))


def epoch_figures(model: nn.Module, test_set, distance: Distance,
                  device: torch.device) -> dict[str, float]:
    """What the trainer records after each epoch: the test set's image-to-image Recall@1, and
    for a dual encoder the text-to-image Recall@1 of the captions (%)."""
    from advrank.core.gallery import embed_dataset
    from advrank.core.metrics import recall_at_k
    from advrank.models.dual import has_text_tower

    emb = embed_dataset(model, test_set, device)
    out = {"recall@1": recall_at_k(emb, test_set.labels.to(emb.device), distance, (1,))[1]}
    if has_text_tower(model):
        out["text_recall@1"] = text_recall_at_1(model, test_set, emb, distance)
    return out
