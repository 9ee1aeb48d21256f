"""Attacks as plain functions: ``attack(model, x, y, *, eps, ...) -> x_adv``.

They drop into any training loop: input gradients only (``torch.autograd.grad``), the model's
train/eval mode and its parameters' ``.grad`` untouched, no host sync inside step loops. Every
attack takes ``return_success``, ``return_norms`` and ``return_queries`` and then returns
``(x_adv, *extras)`` in that order (``robustkern.attacks.results`` says what each holds).
Building blocks for new attacks: ``losses``, ``gradients`` (the input's gradient) and ``steps``
(sharded noise, per-sample broadcasting, the best point over restarts).
"""

from robustkern.attacks.adam import adam_pgd
from robustkern.attacks.apgd import apgd
from robustkern.attacks.cw import cw
from robustkern.attacks.ddn import ddn
from robustkern.attacks.deepfool import deepfool
from robustkern.attacks.fab import fab
from robustkern.attacks.fgsm import fgsm
from robustkern.attacks.hop_skip_jump import hop_skip_jump
from robustkern.attacks.lbfgs import lbfgs
from robustkern.attacks.min_norm import average_distortion, min_norm, robust_accuracy_curve
from robustkern.attacks.pgd import NORMS, GraphedPGD, pgd
from robustkern.attacks.rays import rays
from robustkern.attacks.sparse_rs import sparse_rs
from robustkern.attacks.square import square
from robustkern.attacks.transfer_boost import di_fgsm, mi_fgsm

__all__ = [
    "NORMS",
    "GraphedPGD",
    "adam_pgd",
    "apgd",
    "average_distortion",
    "cw",
    "ddn",
    "deepfool",
    "di_fgsm",
    "fab",
    "fgsm",
    "hop_skip_jump",
    "lbfgs",
    "mi_fgsm",
    "min_norm",
    "pgd",
    "rays",
    "robust_accuracy_curve",
    "sparse_rs",
    "square",
]
