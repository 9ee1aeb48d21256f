"""Evaluation: clean and robust accuracy under an attack or a cascade (``evaluate``),
gradient-masking indicators (``indicators``) and transfer tables (``transfer_matrix``)."""

from robustkern.evaluation.core import (
    ATTACKS,
    CERTIFY_METHODS,
    FUNCTIONS,
    PRESETS,
    Cascade,
    Evaluation,
    RandomizedModelWarning,
    evaluate,
    is_randomized,
    outcome_fn,
)
from robustkern.evaluation.masking import Indicator, indicators
from robustkern.evaluation.optimality import optimality
from robustkern.evaluation.transfer import TransferTable, transfer_matrix

__all__ = [
    "ATTACKS",
    "CERTIFY_METHODS",
    "FUNCTIONS",
    "PRESETS",
    "Cascade",
    "Evaluation",
    "Indicator",
    "RandomizedModelWarning",
    "TransferTable",
    "evaluate",
    "indicators",
    "is_randomized",
    "optimality",
    "outcome_fn",
    "transfer_matrix",
]
