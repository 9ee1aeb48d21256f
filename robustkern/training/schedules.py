"""The learning-rate and weight-decay schedules of the literature, as functions of training
progress t in (0, 1], and the certified methods' ramp, a function of training time in epochs."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "piecewise", "cyclic", "cosine")


def lr_factor(schedule: str, t: float) -> float:
    """The learning-rate multiplier at training progress t in (0, 1]. piecewise: /10 at 50 % and
    again at 75 % (Madry et al., Rice et al.); cyclic: 0 -> 1 at 40 % -> 0 (Wong et al.);
    cosine: 1 -> 0."""
    if schedule == "constant":
        return 1.0
    if schedule == "piecewise":
        return 1.0 if t <= 0.5 else 0.1 if t <= 0.75 else 0.01
    if schedule == "cyclic":
        return t / 0.4 if t < 0.4 else (1.0 - t) / 0.6
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def weight_decay_at(weight_decay: float | tuple[float, float], t: float) -> float:
    """A constant, or (start, end) annealed from start to end along a half cosine: the
    checklist's "start with a very high L2 weight decay and turn it down"."""
    if isinstance(weight_decay, (int, float)):
        return float(weight_decay)
    start, end = weight_decay
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def ramp(epoch: float, start: float, length: float) -> float:
    """0 until training time ``epoch`` passes ``start``, then linear to 1 at ``start + length``
    (a step at ``start`` when length is 0), then 1: the certified methods' eps, kappa and
    CROWN-weight ramps (all in epochs)."""
    if epoch <= start:
        return 0.0
    return 1.0 if epoch >= start + length else (epoch - start) / length
