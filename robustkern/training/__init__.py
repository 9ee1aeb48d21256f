"""Training: ``adversarial_loss`` for any loop (PGD-AT, FGSM-RS, TRADES), the trainer ``fit``
(schedules, AMP, robust early stopping, checkpoints with resume, DDP under torchrun) and the
eps trade-off sweep ``tradeoff``."""

from robustkern.training.loss import METHODS, adversarial_loss
from robustkern.training.tradeoff import Tradeoff, tradeoff
from robustkern.training.trainer import (
    LR_SCHEDULES,
    OPTIMIZERS,
    History,
    fit,
    load_checkpoint,
    lr_factor,
    plot_histories,
    weight_decay_at,
)

__all__ = [
    "LR_SCHEDULES",
    "METHODS",
    "OPTIMIZERS",
    "History",
    "Tradeoff",
    "adversarial_loss",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "plot_histories",
    "tradeoff",
    "weight_decay_at",
]
