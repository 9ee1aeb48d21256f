"""Training: ``adversarial_loss`` for any loop (PGD-AT, FGSM-RS, TRADES, Gaussian noise, certified
training by IBP and CROWN-IBP), the trainer ``fit``
(its options in ``TrainConfig``: schedules, AMP, robust early stopping, checkpoints with resume,
DDP under torchrun) and the eps trade-off sweep ``tradeoff``."""

from robustkern.training.checkpoint import load_checkpoint
from robustkern.training.config import OPTIMIZERS, TrainConfig
from robustkern.training.history import History, plot_histories
from robustkern.training.loss import METHODS, adversarial_loss
from robustkern.training.schedules import LR_SCHEDULES, lr_factor, weight_decay_at
from robustkern.training.tradeoff import Tradeoff, compare, tradeoff
from robustkern.training.trainer import fit

__all__ = [
    "LR_SCHEDULES",
    "METHODS",
    "OPTIMIZERS",
    "History",
    "Tradeoff",
    "TrainConfig",
    "adversarial_loss",
    "compare",
    "fit",
    "load_checkpoint",
    "lr_factor",
    "plot_histories",
    "tradeoff",
    "weight_decay_at",
]
