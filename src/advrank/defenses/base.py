"""What a defense is: a hook on the training loss, plus a description of itself.

``training_loss(model, images, labels, criterion) -> (loss, embeddings)`` replaces the plain
``criterion(model(images), labels)`` of a training step, so a defense may change the inputs
(adversarial training, EST and Madry here) or the loss itself (TRADES-style, robrank's ACT).
``describe()`` is the one record of its settings: the trainer writes it into the checkpoint.
A new defense is one file that subclasses :class:`Defense` and registers itself in
:data:`advrank.registry.DEFENSES`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from advrank.attacks.threat import LinfThreatModel
from advrank.core.checks import check_images, check_name, check_number
from advrank.core.distances import Distance, get_distance
from advrank.errors import AdvrankError
from advrank.registry import DATASETS, DEFENSES


class Defense:
    """Base class of all defenses (see the module docstring)."""

    name: ClassVar[str] = "defense"

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      criterion) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one training batch (``images [B, C, H, W]`` in [0, 1], ``labels [B]``)
        and the embeddings it was computed on ``[B, D]`` (for logging)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings recorded in the checkpoint metadata (``defense_config``)."""
        return {"defense": self.name}

    def bind(self, metric: str) -> None:
        """Called by the trainer with the run's metric, before the first step (a defense
        created without a metric attacks with the distance the model is trained for)."""

    @property
    def eps(self) -> float | None:
        return None


class PGDDefense(Defense):
    """A defense that trains on PGD examples within an L-inf budget: the threat model, the
    distance the examples are made with, and the generator of their random choices.

    ``steps``/``step_size`` default to the paper's eta/alpha for ``eps`` (30 steps of 0.01 at
    eps = 0.3). ``generator`` seeds the random start (and any other draw); ``None`` uses
    torch's global generator, which the trainer reseeds every epoch, so resumed runs stay
    repeatable. ``random_start``: whether PGD starts at a random point of the ball.
    """

    random_start: ClassVar[bool] = True

    def __init__(self, eps: float, steps: int | None = None, step_size: float | None = None,
                 metric: Distance | str | None = None,
                 generator: torch.Generator | None = None):
        check_number(eps, "defense eps (pixel units)", low=0.0, low_open=True, high=1.0)
        self.threat = LinfThreatModel(float(eps), step_size, steps,
                                      random_start=self.random_start)
        # no metric: the trained model's (the trainer binds it), cosine when used on its own
        self.distance = get_distance(metric or "cosine")
        self._metric_given = metric is not None
        self.generator = generator

    def bind(self, metric: str) -> None:
        if not self._metric_given:
            self.distance = get_distance(metric)

    @property
    def eps(self) -> float:
        return self.threat.eps

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name, "metric": self.distance.name, **self.threat.describe()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat}, metric={self.distance.name})"


class AdversarialTrainingDefense(PGDDefense):
    """Adversarial training as Madry et al. do it: every training image is *replaced* by an
    adversarial example made against the current (frozen) model, from a random start in the
    L-inf ball; the loss is the unchanged metric-learning loss on the adversarial batch."""

    def perturb(self, model: nn.Module, images: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """images ``[B, C, H, W]`` in [0, 1], labels ``[B]`` -> adversarial images, same shape,
        within ``eps`` of ``images`` (L-inf) and inside [0, 1]. Parameters get no gradients."""
        raise NotImplementedError

    def __call__(self, model, images, labels=None) -> torch.Tensor:
        return self.perturb(model, images, labels)

    def training_loss(self, model, images, labels, criterion):
        check_images(images)
        adv = self.perturb(model, images, labels)
        model.train()
        emb = model(adv)
        return criterion(emb, labels), emb


def defense_names() -> list[str]:
    return DEFENSES.names()


def default_defense_eps(dataset: str) -> float:
    """The customary L-inf budget of a dataset (its ``default_eps``; 0.3 for MNIST-like, 0.06
    for SOP): the paper trains with its strongest attack's eps (§4)."""
    eps = DATASETS.entry(check_name(dataset, "dataset").partition(":")[0]).info.get(
        "default_eps")
    if eps is None:
        raise AdvrankError(f"dataset {dataset!r} has no default eps; give --defense-eps")
    return float(eps)


def make_defense(name: str, *, eps: float | None = None, dataset: str | None = None,
                 metric: Distance | str | None = None, **options: Any) -> Defense:
    """The registered defense ``name``; ``eps`` defaults to the dataset's default budget and
    ``metric`` to the trained model's (set by the trainer). ``options`` (e.g. ``steps``,
    ``step_size``) go to its constructor."""
    cls = DEFENSES.get(name)
    if eps is None:
        if dataset is None:
            raise AdvrankError(f"defense {name!r} needs eps (or the dataset to take it from)")
        eps = default_defense_eps(dataset)
    return cls(eps, metric=metric, **{k: v for k, v in options.items() if v is not None})
