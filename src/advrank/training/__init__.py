"""Training: the registered metric-learning losses and the (resumable) trainer."""

from advrank.training.losses import default_margin, loss_names, make_loss
from advrank.training.trainer import TrainConfig, TrainResult, evaluate_model, train

__all__ = ["TrainConfig", "TrainResult", "default_margin", "evaluate_model", "loss_names",
           "make_loss", "train"]
