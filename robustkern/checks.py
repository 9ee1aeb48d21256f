"""Mistakes users make that would otherwise give a wrong number without a word: NaN or inf in
the images, an eps in the wrong units, a model that returns probabilities, a model attacked in
train mode. Errors name the problem; warnings say what was probably meant."""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from robustkern.modes import eval_mode, model_device
from robustkern.types import Bounds, PerSample


class TrainModeWarning(UserWarning):
    """An attack ran on a model in train mode (batch statistics, dropout) outside training."""


class ProbabilityOutputWarning(UserWarning):
    """The model's outputs look like probabilities, not logits."""


class EpsUnitsWarning(UserWarning):
    """An eps far larger than the inputs' range allows: probably given in other units."""


def check_finite(x: torch.Tensor, what: str = "x", offset: int = 0) -> None:
    """Raises ValueError naming how many NaN and inf values x (N, ...) holds and in which rows
    (numbered from ``offset``: x is a batch of a larger set). One host sync."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(nonfinite_message(x, what, offset))


def nonfinite_message(x: torch.Tensor, what: str = "x", offset: int = 0) -> str:
    """'x contains 3 NaN and 1 inf values in 2 of 10 images (indices 4, 7)' for a tensor that
    has some; the error path only, so its syncs cost nothing when inputs are fine."""
    nan, inf = int(x.isnan().sum()), int(x.isinf().sum())
    rows = []
    if x.dim():
        rows = (~torch.isfinite(x)).flatten(1).any(1).nonzero().squeeze(1).add(offset).tolist()
    kinds = " and ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "inf")) if n)
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    where = f" in {len(rows)} of {len(x)} images (indices {shown})" if rows else ""
    return (
        f"{what} contains {kinds} value(s){where}: images must be finite; check how they were "
        "loaded or preprocessed"
    )


def check_model_fits(model: nn.Module, x: torch.Tensor, classes: int, what: str = "the model"):
    """One forward on one and on two of the images x (N >= 2, on the model's device) in eval
    mode: a model that fails on the data (wrong channels or size) or does not return
    (N, classes) logits is a ValueError that names the data's shape, before any work starts."""
    with eval_mode(model):
        for n in (1, 2):
            try:
                with torch.no_grad():
                    logits = model(x[:n])
            except Exception as e:  # any failure of the user's model on our data
                raise ValueError(
                    f"{what} fails on the data's images of shape {tuple(x.shape[1:])} (C, H, W): "
                    f"{type(e).__name__}: {e}"
                ) from None
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
                raise ValueError(f"{what} returns {got} for {n} image(s); expected ({n}, classes)")
            if logits.shape[1] < classes:
                raise ValueError(
                    f"{what} has {logits.shape[1]} outputs but the data has {classes} classes"
                )


def out_of_bounds_hint(lo: float, hi: float, bounds: tuple[float, float]) -> str:
    """What inputs with values in [lo, hi] outside ``bounds`` probably are, and what to do."""
    if lo >= 0 and 1 < hi <= 255 and tuple(bounds) == (0.0, 1.0):
        return (
            "these look like 0..255 pixel values: divide the images by 255 (robustkern's "
            "inputs are in [0, 1])"
        )
    if lo < 0:
        return (
            "these look normalised (negative values): pass images in [0, 1] and put the "
            "normalisation inside the model (robustkern.nn.Normalize(mean, std)), or pass the "
            "bounds the normalised inputs live in (bounds=(lo, hi), --bounds LO,HI) with eps in "
            "those units"
        )
    return (
        "clip the images to the bounds, or pass the bounds your inputs live in (bounds=, --bounds)"
    )


def likely_eps(eps: float, norm: str, bounds: tuple[float, float], numel: int) -> float | None:
    """The eps probably meant when ``eps`` (input units) is at least half the bounds' width in
    L-inf (every image can then be moved to the middle grey: nothing is left to classify) or
    larger than the box's diameter in L2 or L1: ``eps / 255`` (8 -> 8/255, a radius given in pixel
    units); None when eps is plausible. (Not a quarter of the width: MNIST's standard 0.3 is
    more than that.)"""
    width = float(bounds[1]) - float(bounds[0])
    if norm == "l0" or not (math.isfinite(width) and width > 0 and math.isfinite(eps)):
        return None  # an L0 budget counts coordinates or pixels, in no unit to mistake
    if norm == "linf":
        return eps * width / 255 if eps >= width / 2 else None
    limit = width * (max(numel, 1) if norm == "l1" else math.sqrt(max(numel, 1)))
    return eps * width / 255 if eps > limit else None


def warn_unusual_eps(eps, norm: str, bounds: tuple[float, float], numel: int) -> None:
    """Warns when a number eps is implausibly large for the inputs (see ``likely_eps``)."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() != 0:
            return  # per-sample radii are an advanced use: no sync for a warning
        eps = float(eps)
    meant = likely_eps(float(eps), norm, bounds, numel)
    if meant is not None:
        what = "half the inputs' range" if norm == "linf" else f"the box's {norm} diameter"
        warnings.warn(
            f"eps {eps:g} ({norm}) is not smaller than {what} {tuple(bounds)}: every input can be "
            f"changed beyond recognition. eps is in the inputs' own units; did you mean "
            f"{eps:g}/255 = {meant:.6g}?",
            EpsUnitsWarning,
            stacklevel=3,
        )


_checked_outputs: weakref.WeakSet = weakref.WeakSet()


def warn_if_probabilities(model: nn.Module, logits: torch.Tensor) -> None:
    """At a model's first forward seen here: warns when every row of its output is a probability
    vector (non-negative, sums to 1). Attacks and the DLR and margin losses need logits; a
    softmax output saturates their gradients. One host sync per model."""
    if model in _checked_outputs or logits.dim() != 2 or logits.shape[1] < 2 or not len(logits):
        return
    _checked_outputs.add(model)
    z = logits.detach().float()
    if bool(((z >= 0).all(1) & ((z.sum(1) - 1).abs() < 1e-3)).all()):
        warnings.warn(
            f"{type(model).__name__} returns probabilities (every output row is non-negative "
            "and sums to 1), not logits: remove the final softmax (attacks and losses need "
            "logits; the gradients of a softmax output vanish and robust accuracy is overstated)",
            ProbabilityOutputWarning,
            stacklevel=3,
        )


_in_training = contextvars.ContextVar("robustkern_in_training", default=False)
_warned_train_mode: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def attacking_for_training() -> Iterator[None]:
    """Attacks inside the block are part of training (``adversarial_loss``, ``fit``): a
    train-mode model is what the caller wants there, so no warning."""
    token = _in_training.set(True)
    try:
        yield
    finally:
        _in_training.reset(token)


def warn_if_train_mode(model: nn.Module) -> None:
    """Warns once per model when it is attacked in train mode outside training and has
    BatchNorm or dropout: the attack then scores batch statistics or random masks, and
    BatchNorm's running statistics change. The mode is still kept, as documented."""
    if not model.training or _in_training.get() or model in _warned_train_mode:
        return
    kinds = sorted({type(m).__name__ for m in model.modules() if _stochastic(m)})
    if not kinds:
        return
    _warned_train_mode.add(model)
    warnings.warn(
        f"{type(model).__name__} is in train mode and has {', '.join(kinds)}: the attack uses "
        "batch statistics / random dropout masks and updates BatchNorm's running statistics. "
        "Call model.eval() before attacking to evaluate (robustkern.evaluate does), or use "
        "robustkern.training.adversarial_loss inside a training loop",
        TrainModeWarning,
        stacklevel=3,
    )


def _stochastic(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.track_running_stats or m.training
    return isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0


# --- arguments: the messages every entry point gives ------------------------------------


def check_choice(value, allowed, name: str) -> None:
    """``value`` must be one of ``allowed``; the error names the argument and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_inputs(
    x: torch.Tensor, y: torch.Tensor, bounds: Bounds, model: torch.nn.Module | None = None
) -> tuple[int, int]:
    """Checks x, y and bounds once, before any step loop; returns (min, max) label (one sync).
    With ``model`` (an attack's entry), also warns when it is attacked in train mode."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x must be a floating tensor (N, ...), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    check_label_tensor(x, y)
    lo, hi = bounds
    if not (lo <= hi):
        raise ValueError(f"bounds=(lo, hi) needs lo <= hi, got {bounds}")
    if x.numel() == 0:
        return (int(y.min()), int(y.max())) if y.numel() else (0, 0)
    # One sync for both: x outside the bounds would be clipped into them by every step, moving
    # it farther than eps (a silent wrong robust accuracy); NaN in x propagates through min/max.
    x_lo, x_hi, y_lo, y_hi = torch.stack([x.min().double(), x.max().double(),
                                          y.min().double(), y.max().double()]).tolist()  # fmt: skip
    if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
        raise ValueError(nonfinite_message(x))
    if not (lo <= x_lo and x_hi <= hi):
        raise ValueError(
            f"x must lie within bounds=({lo}, {hi}), got values in [{x_lo:.6g}, {x_hi:.6g}]: "
            + out_of_bounds_hint(x_lo, x_hi, bounds)
        )
    if model is not None:
        warn_if_train_mode(model)
    return int(y_lo), int(y_hi)


def check_images(x: torch.Tensor) -> None:
    """x: a floating batch of images (N, C, H, W)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating tensor of images (N, C, H, W), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    check_finite(x)


def check_label_tensor(x: torch.Tensor, y: torch.Tensor) -> None:
    """y: int64 labels (what cross_entropy and gather take), one per row of x, on x's device.
    No host sync (the label range is checked by check_inputs and check_labels)."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise ValueError(
            f"y must be an int64 tensor of class labels, got {getattr(y, 'dtype', type(y))}"
            " (y.long() converts integer labels)"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y must be on x's device {x.device}, got {y.device}")


def label_range(y: torch.Tensor) -> tuple[int, int]:
    """(min, max) label, (0, 0) for no labels: one host sync."""
    if y.numel() == 0:
        return 0, 0
    lo, hi = torch.stack([y.min(), y.max()]).tolist()
    return int(lo), int(hi)


def check_model_labels(model, x: torch.Tensor, y: torch.Tensor) -> None:
    """For whole-dataset scores (accuracy under noise, corruptions): y holds int64 labels, one
    per image, that index the model's outputs (one forward of one image, model in eval mode).
    A label the model cannot output would count as an error, silently."""
    check_label_tensor(x, y)
    if len(x):
        with torch.no_grad():
            logits = model(x[:1].to(model_device(model)))
        check_logits(logits, 1, label_range(y))


def check_logits(logits: torch.Tensor, n: int, labels: tuple[int, int]) -> None:
    """Model output must be (N, classes >= 1) and every label must index a class."""
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] == 0:
        raise ValueError(
            f"the model must return logits of shape (N={n}, classes), got {tuple(logits.shape)}"
        )
    check_labels(labels, logits.shape[1])


def check_labels(labels: tuple[int, int], classes: int) -> None:
    """The (min, max) label from check_inputs must index one of ``classes`` outputs."""
    if labels[0] < 0 or labels[1] >= classes:
        raise ValueError(
            f"labels must lie in [0, {classes}) for a model with {classes} outputs, found "
            f"labels in [{labels[0]}, {labels[1]}]"
        )


def check_eps(eps: PerSample, n: int, name: str = "eps", finite: bool = False) -> PerSample:
    """A number >= 0 (inf allowed unless ``finite``) or a 1-D tensor of N such values. One sync
    for tensors."""
    if isinstance(eps, torch.Tensor):
        if eps.dim() == 0:
            eps = float(eps)
        else:
            if eps.shape != (n,):
                raise ValueError(
                    f"per-sample {name} must have shape ({n},), got {tuple(eps.shape)}"
                )
            if bool((eps.isnan() | (eps < 0)).any()):
                raise ValueError(f"every per-sample {name} must be >= 0")
            if finite and not bool(eps.isfinite().all()):
                raise ValueError(f"this attack needs a finite {name}; got inf")
            return eps
    eps = float(eps)
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"{name} must be >= 0, got {eps}")
    if finite and math.isinf(eps):
        raise ValueError(f"this attack needs a finite {name}; got inf")
    return eps
