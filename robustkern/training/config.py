"""``TrainConfig``: every option of ``fit`` in one frozen dataclass, checked when it is built.
Its fields are the single source of the options: ``fit`` takes a config and/or keyword
overrides, and a checkpoint's compatibility key is every field that changes the run's numbers
(all of them, except the few marked ``RUN_ONLY``), so a new option cannot be forgotten there."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustkern.attacks import NORMS
from robustkern.checks import check_choice
from robustkern.training.loss import CERTIFIED, CERTIFIED_NORMS, FINAL_KAPPA, METHODS
from robustkern.training.schedules import lr_factor, ramp

OPTIMIZERS = ("sgd", "adam", "adamw")
AMP_MODES = ("bf16", "fp16")
RUN_ONLY = {"resume_key": False}  # a field that does not change the numbers a run produces


@dataclass(frozen=True)
class TrainConfig:
    """The options of ``fit`` (see its docstring for what each does).

    method: "standard", "pgd", "fgsm-rs", "trades", "gaussian", "ibp" or "crown-ibp"; eps:
    the training radius in the inputs' units (> 0 for adversarial and certified methods; for
    "gaussian" the noise's sigma); norm: "linf", "l2" or "l1" (certified: "linf" or "l2");
    steps, alpha, beta: the attack's steps, step size (None: the method's default) and
    TRADES' weight; eps_warmup: epochs over which eps ramps up from 0 (not for the certified
    methods, which ramp as ``certified_ramps`` says); kappa: the certified methods' final
    weight of the natural loss (None: 0.5 for "ibp", 0 for "crown-ibp"); ramp_start,
    ramp_length: their epochs of natural training before the ramps (None: 1, or a tenth of
    the run if shorter) and of the ramps (None: half the epochs left after ramp_start),
    fractions allowed; epochs, batch_size; optimizer ("sgd", "adam", "adamw"); lr (None: 0.1
    for SGD, 1e-3 otherwise; ``learning_rate`` resolves it); momentum; lr_schedule (see
    ``lr_factor``); weight_decay (a number or a (start, end) pair); amp ("bf16", "fp16" or
    None); channels_last; bounds (lo, hi) of valid inputs; val_steps (PGD steps of the
    robust validation; the certified methods are validated by IBP-verified accuracy at eps
    instead); train_eval (training images scored each epoch); patience (epochs without a
    better validation score before stopping); restore_best; track (image indices whose
    probabilities are recorded); track_every (steps); seed. Run-only, not part of a
    checkpoint's key: checkpoint (a file), checkpoint_every (steps), resume, device,
    num_workers, progress."""

    method: str = "standard"
    eps: float = 0.0
    norm: str = "linf"
    steps: int = 10
    alpha: float | None = None
    beta: float = 6.0
    eps_warmup: int = 0
    kappa: float | None = None
    ramp_start: float | None = None
    ramp_length: float | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    lr_schedule: str = "constant"
    weight_decay: float | tuple[float, float] = 0.0
    amp: str | None = None
    channels_last: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)
    val_steps: int = 10
    train_eval: int = 1000
    patience: int | None = None
    restore_best: bool = True
    track: tuple[int, ...] = ()
    track_every: int | None = None
    seed: int = 0
    checkpoint: Path | None = field(default=None, metadata=RUN_ONLY)
    checkpoint_every: int | None = field(default=None, metadata=RUN_ONLY)
    resume: bool = field(default=True, metadata=RUN_ONLY)
    device: torch.device | None = field(default=None, metadata=RUN_ONLY)
    num_workers: int = field(default=0, metadata=RUN_ONLY)
    progress: bool = field(default=True, metadata=RUN_ONLY)

    def __post_init__(self) -> None:
        self._check_names()
        self._check_counts()
        self._normalise()

    @property
    def learning_rate(self) -> float:
        """``lr``, or its default for the optimizer: 0.1 for SGD, 1e-3 otherwise."""
        return self.lr if self.lr is not None else 0.1 if self.optimizer == "sgd" else 1e-3

    def ramps(self) -> tuple[float, float]:
        """(ramp_start, ramp_length) in epochs, the defaults resolved for this run's length."""
        start = self.ramp_start if self.ramp_start is not None else min(1.0, self.epochs / 10)
        length = self.ramp_length if self.ramp_length is not None else (self.epochs - start) / 2
        return float(start), float(length)

    def certified_ramps(self, epoch: float) -> tuple[float, float, float]:
        """(eps, kappa, crown_weight) of the certified methods at training time ``epoch`` (in
        epochs; the trainer's step s trains at (s + 1) / steps per epoch): natural training
        (eps 0, kappa 1, crown_weight 1) until ``ramp_start``, then, linearly over
        ``ramp_length`` epochs (Gowal et al., Zhang et al.), eps rises to ``eps``, kappa falls
        to its final value and the CROWN-IBP weight of "crown-ibp"'s margins to 0."""
        if self.method not in CERTIFIED:
            raise ValueError(f"certified_ramps: method {self.method!r} is not one of {CERTIFIED}")
        r = ramp(epoch, *self.ramps())
        final = FINAL_KAPPA[self.method] if self.kappa is None else self.kappa
        return self.eps * r, 1.0 - r * (1.0 - final), 1.0 - r

    def replace(self, **overrides) -> TrainConfig:
        """A copy with ``overrides``; unknown names are an error that lists the known ones."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown training option(s) {unknown}; the options are: {known}")
        return dataclasses.replace(self, **overrides)

    def resume_key(self) -> dict:
        """Every field that changes the run's numbers (all but the run-only ones), as plain
        values, with the learning rate resolved: what a checkpoint must match to be resumed."""
        key = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("resume_key", True)
        }
        return key | {"lr": self.learning_rate}

    def _check_names(self) -> None:
        check_choice(self.method, METHODS, "method")
        check_choice(self.norm, NORMS, "norm")
        check_choice(self.optimizer, OPTIMIZERS, "optimizer")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {self.eps}")
        if self.method != "standard" and self.eps == 0:
            raise ValueError(f"method {self.method!r} needs eps > 0")
        if self.method in CERTIFIED and self.norm not in CERTIFIED_NORMS:
            raise ValueError(f"method {self.method!r} bounds L-inf or L2 balls, not {self.norm!r}")
        if self.method in CERTIFIED and self.eps_warmup:
            raise ValueError(f"method {self.method!r} ramps eps over ramp_length epochs after "
                             "ramp_start: set those, not eps_warmup")  # fmt: skip
        lr_factor(self.lr_schedule, 1.0)  # names a bad schedule
        if self.amp is not None and self.amp not in AMP_MODES:
            raise ValueError(f"amp must be None or one of {AMP_MODES}, got {self.amp!r}")

    def _check_counts(self) -> None:
        for name in ("epochs", "batch_size", "steps", "val_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.eps_warmup <= self.epochs:
            raise ValueError(f"eps_warmup must be in [0, epochs], got {self.eps_warmup}")
        if self.kappa is not None and not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa must be None or in [0, 1], got {self.kappa}")
        for name in ("ramp_start", "ramp_length"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be None or a number of epochs >= 0, got {value}")
        if sum(self.ramps()) > self.epochs:
            raise ValueError(f"ramp_start + ramp_length must be <= epochs ({self.epochs}), got "
                             f"{' + '.join(format(r, 'g') for r in self.ramps())}")  # fmt: skip
        for name in ("patience", "checkpoint_every", "track_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {getattr(self, name)}")
        wd = self.weight_decay
        if isinstance(wd, (tuple, list)) and len(wd) != 2:
            raise ValueError(f"weight_decay must be a number or a (start, end) pair, got {wd}")
        if any(w < 0 for w in (wd if isinstance(wd, (tuple, list)) else (wd,))):
            raise ValueError(f"weight_decay must be >= 0, got {wd}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def _normalise(self) -> None:
        """Defaults that depend on other fields, and canonical types (frozen: set directly)."""
        wd = self.weight_decay
        values = {
            "weight_decay": (float(wd[0]), float(wd[1])) if isinstance(wd, (tuple, list)) else wd,
            "track": tuple(int(i) for i in self.track),
            "bounds": tuple(float(b) for b in self.bounds),
            "checkpoint": Path(self.checkpoint) if self.checkpoint else None,
            "device": torch.device(self.device) if self.device is not None else None,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)


def _plain(value):
    """Tuples as lists, paths and devices as strings: the form a checkpoint stores."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (Path, torch.device)):
        return str(value)
    return value


def config_from(config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """``config`` (default: the defaults) with ``overrides`` applied: ``fit``'s one entry."""
    return (config or TrainConfig()).replace(**overrides) if overrides else config or TrainConfig()
