"""The trainer: ``fit(model, train_data, val_data, *, method, eps, epochs, ...) -> History``.

Standard and adversarial training (PGD-AT, FGSM-RS, TRADES through ``adversarial_loss``) with
the schedules the literature uses, AMP, channels_last, robust validation with early stopping,
probability trajectories of chosen images, atomic checkpoints with exact resume after a kill,
and DistributedDataParallel when torch.distributed is initialised (e.g. under ``torchrun``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from robustkern._env import derived_seed, world
from robustkern._io import atomic_torch_save, pyplot, save_figure
from robustkern._progress import progress_bar
from robustkern.attacks import NORMS
from robustkern.evaluation import eval_mode, evaluate, model_device
from robustkern.training.loss import METHODS, adversarial_loss

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "piecewise", "cyclic", "cosine")
AMP_MODES = ("bf16", "fp16")
CHECKPOINT_FORMAT = 1
TrainData = tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader


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


@dataclass
class History:
    """What ``fit`` measured. ``epochs``: one dict per finished epoch with ``epoch``, ``step``,
    ``lr``, ``weight_decay``, ``train_loss`` and ``train_acc`` (on the batches trained on:
    adversarial ones for adversarial methods), ``train_clean_acc``/``train_robust_acc`` (the
    first ``train_eval`` training images, eval mode), ``val_clean_acc``/``val_robust_acc``,
    ``seconds`` (training) and ``eval_seconds``; accuracies are None where not measured.
    ``tracked``: probability trajectories of the chosen images: ``index``, ``label``,
    ``epoch`` (fractional, one per snapshot) and ``probs`` (snapshots x images x classes).
    ``best_epoch``: the epoch with the best validation score (robust if eps > 0, else clean)."""

    epochs: list[dict] = field(default_factory=list)
    tracked: dict = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list:
        """One column, e.g. ``history["val_robust_acc"]``."""
        return [row[key] for row in self.epochs]

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "tracked": self.tracked,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(d["epochs"], d["tracked"], d["best_epoch"], d["stopped_early"])

    def table(self) -> str:
        """A plain-text table, one line per epoch."""
        cols = [("epoch", "epoch", "{:5d}"), ("lr", "lr", "{:9.3g}"),
                ("train_loss", "loss", "{:7.4f}"), ("train_acc", "train", "{:7.2%}"),
                ("val_clean_acc", "val", "{:7.2%}"), ("val_robust_acc", "val rob", "{:7.2%}"),
                ("seconds", "seconds", "{:7.1f}")]  # fmt: skip
        widths = [len(f.format(0)) for _, _, f in cols]
        lines = [" ".join(h.rjust(w) for (_, h, _), w in zip(cols, widths, strict=True))]
        for row in self.epochs:
            cells = [
                f.format(row[k]) if row[k] is not None else "-".rjust(w)
                for (k, _, f), w in zip(cols, widths, strict=True)
            ]
            lines.append(" ".join(cells))
        return "\n".join(lines)


def plot_histories(histories: dict[str, History], path: str | Path) -> Path:
    """Per run and epoch: the training loss, and clean (dashed) and robust accuracy (solid;
    on the validation data where given, else on the first training images), as a PNG."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4.2))
    colours = plt.get_cmap("tab10").colors
    for k, (label, h) in enumerate(histories.items()):
        colour, where = colours[k % 10], "val" if h["val_clean_acc"][0] is not None else "train"
        ax_loss.plot(h["epoch"], h["train_loss"], color=colour, label=label)
        clean, robust = h[f"{where}_clean_acc"], h[f"{where}_robust_acc"]
        ax_acc.plot(h["epoch"], [100 * a for a in clean], "--", color=colour)
        if robust[0] is not None:
            ax_acc.plot(
                h["epoch"], [100 * a for a in robust], color=colour, label=f"{label} ({where})"
            )
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=8)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("dashed: clean; solid: robust at the training eps", fontsize=9)
    ax_acc.set_ylim(0, 100)
    for a in (ax_loss, ax_acc):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_figure(fig, path)


def fit(
    model: torch.nn.Module,
    train_data: TrainData,
    val_data: TrainData | None = None,
    *,
    method: str = "standard",
    eps: float = 0.0,
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    beta: float = 6.0,
    eps_warmup: int = 0,
    epochs: int = 10,
    batch_size: int = 128,
    optimizer: str = "adam",
    lr: float | None = None,
    momentum: float = 0.9,
    lr_schedule: str = "constant",
    weight_decay: float | tuple[float, float] = 0.0,
    amp: str | None = None,
    channels_last: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    val_steps: int = 10,
    train_eval: int = 1000,
    patience: int | None = None,
    restore_best: bool = True,
    track: Sequence[int] = (),
    track_every: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> History:
    """Train ``model`` with ``method`` ("standard", "pgd", "fgsm-rs", "trades"; see
    ``adversarial_loss`` for each method's attack, ``steps``, ``alpha`` and ``beta``) at radius
    ``eps`` in ``norm``, and return the History. The model ends in eval mode.

    Data: an ``(x, y)`` pair of tensors, a map-style Dataset, or a DataLoader. For the first two
    the trainer draws the order itself (a permutation per epoch from ``seed``), so runs are
    reproducible, a resumed epoch replays the same batches, and under torch.distributed each
    rank takes its slice of every global batch of ``batch_size``. A DataLoader is iterated as
    given (shuffling seeded per epoch; under DDP it must shard, e.g. with a DistributedSampler).

    ``eps_warmup``: the training eps grows linearly from 0 to ``eps`` over that many epochs
    (large radii, e.g. MNIST's 0.3, otherwise can leave PGD-AT stuck at chance).

    Optimisation: ``optimizer`` "sgd" (``momentum``), "adam" or "adamw"; ``lr`` defaults to 0.1
    for SGD and 1e-3 otherwise, scaled per step by ``lr_schedule`` (see ``lr_factor``);
    ``weight_decay`` a number or (start, end) annealed (see ``weight_decay_at``). The defaults
    (Adam, constant, no decay) train the built-in models on the embedded data; the published
    PGD-AT recipe is ``optimizer="sgd", lr=0.1, lr_schedule="piecewise", weight_decay=5e-4``
    and Wong et al.'s FGSM-RS uses ``lr_schedule="cyclic", lr=0.2``.
    ``amp``: "bf16" (autocast, CPU or CUDA) or "fp16" (autocast with a GradScaler);
    ``channels_last`` converts the model and every batch.

    Validation at each epoch end (eval mode, float32): clean accuracy and, when eps > 0, PGD
    accuracy (``val_steps`` steps, random start) on ``val_data`` and on the first
    ``train_eval`` training images. ``patience``: stop after that many epochs without a better
    validation score (robust overfitting, Rice et al.); ``restore_best`` loads the best epoch's
    weights at the end. ``track``: indices of validation (else training) images whose class
    probabilities are recorded at the start, each epoch end and every ``track_every`` steps.

    ``checkpoint``: a file written atomically at each epoch end (and every ``checkpoint_every``
    steps) with model, optimiser, scheduler, scaler, RNG states, position and history; if it
    exists and ``resume``, training continues from it (a finished run returns at once) and
    gives the same history as an uninterrupted run. Under DDP only rank 0 writes it.
    """
    spec = _Spec.check(locals())
    if patience is not None and val_data is None:
        raise ValueError("patience needs val_data: early stopping watches the validation score")
    trainer = _Trainer(model, train_data, val_data, spec)
    return trainer.run()


@dataclass
class _Spec:
    """fit's settings, checked; ``config`` is what must match to resume a checkpoint."""

    method: str
    eps: float
    norm: str
    steps: int
    alpha: float | None
    beta: float
    eps_warmup: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    lr_schedule: str
    weight_decay: float | tuple[float, float]
    amp: str | None
    channels_last: bool
    bounds: tuple[float, float]
    val_steps: int
    train_eval: int
    patience: int | None
    restore_best: bool
    track: tuple[int, ...]
    track_every: int | None
    checkpoint: Path | None
    checkpoint_every: int | None
    resume: bool
    seed: int
    device: torch.device | None
    num_workers: int
    progress: bool

    @classmethod
    def check(cls, args: dict) -> _Spec:
        args = {k: v for k, v in args.items() if k in cls.__dataclass_fields__}
        if args["method"] not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {args['method']!r}")
        if args["norm"] not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {args['norm']!r}")
        if not (math.isfinite(args["eps"]) and args["eps"] >= 0):
            raise ValueError(f"eps must be finite and >= 0, got {args['eps']}")
        if args["method"] != "standard" and args["eps"] == 0:
            raise ValueError(f"method {args['method']!r} needs eps > 0")
        if args["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {args['optimizer']!r}")
        lr_factor(args["lr_schedule"], 1.0)  # names a bad schedule
        if args["amp"] is not None and args["amp"] not in AMP_MODES:
            raise ValueError(f"amp must be None or one of {AMP_MODES}, got {args['amp']!r}")
        for name in ("epochs", "batch_size", "steps", "val_steps"):
            if args[name] < 1:
                raise ValueError(f"{name} must be >= 1, got {args[name]}")
        if not 0 <= args["eps_warmup"] <= args["epochs"]:
            raise ValueError(f"eps_warmup must be in [0, epochs], got {args['eps_warmup']}")
        for name in ("patience", "checkpoint_every", "track_every"):
            if args[name] is not None and args[name] < 1:
                raise ValueError(f"{name} must be None or >= 1, got {args[name]}")
        wd = args["weight_decay"]
        if isinstance(wd, (tuple, list)) and len(wd) != 2:
            raise ValueError(f"weight_decay must be a number or a (start, end) pair, got {wd}")
        if any(w < 0 for w in (wd if isinstance(wd, (tuple, list)) else (wd,))):
            raise ValueError(f"weight_decay must be >= 0, got {wd}")
        if isinstance(wd, (tuple, list)):
            args["weight_decay"] = (float(wd[0]), float(wd[1]))
        if args["lr"] is None:
            args["lr"] = 0.1 if args["optimizer"] == "sgd" else 1e-3
        if args["lr"] <= 0:
            raise ValueError(f"lr must be > 0, got {args['lr']}")
        args["track"] = tuple(int(i) for i in args["track"])
        args["bounds"] = tuple(float(b) for b in args["bounds"])
        args["checkpoint"] = Path(args["checkpoint"]) if args["checkpoint"] else None
        args["device"] = torch.device(args["device"]) if args["device"] is not None else None
        return cls(**args)

    def config(self, n_train: int, world: int) -> dict:
        """The settings that determine the run's numbers (a resumed run must match them)."""
        keys = ("method", "eps", "norm", "steps", "alpha", "beta", "eps_warmup", "epochs",
                "batch_size",
                "optimizer", "lr", "momentum", "lr_schedule", "weight_decay", "amp",
                "channels_last", "bounds", "val_steps", "train_eval", "patience", "track",
                "track_every", "seed")  # fmt: skip
        return {k: getattr(self, k) for k in keys} | {"n_train": n_train, "world_size": world}


class _Batches:
    """Training batches in the trainer's own order (tensors, Dataset) or the user's (DataLoader).
    ``epoch(e, start)`` yields (x, y, shard, scale) for batches ``start..`` of epoch e: shard =
    (offset, global size) of this rank's rows (None for a DataLoader), scale = the factor that
    makes DDP's mean over ranks of the per-rank mean loss the global batch's mean loss."""

    def __init__(self, data: TrainData, batch_size: int, seed: int, num_workers: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.num_workers = num_workers
        self.rank, self.world = world()
        if isinstance(data, DataLoader):
            self.n = len(data.dataset) if hasattr(data.dataset, "__len__") else None
            self.per_epoch = len(data)
        else:
            self.n = _length(data)
            last = self.n % batch_size
            # under DDP a last global batch with fewer rows than ranks is dropped
            dropped = 0 < last < self.world
            self.per_epoch = self.n // batch_size + (last > 0 and not dropped)
        if self.per_epoch == 0:
            raise ValueError(f"the training data gives no batch ({self.n} examples)")

    def epoch(self, e: int, start: int) -> Iterator[tuple]:
        """The iterator is made (and a DataLoader's first ``start`` batches skipped) before it is
        returned, so whatever that draws from the global RNG is drawn before the caller
        restores a checkpoint's RNG state."""
        if isinstance(self.data, DataLoader):
            sampler = getattr(self.data, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(e)
            batches = iter(self.data)
            for _ in range(start):
                next(batches)
            return ((b[0], b[1], None, 1.0) for b in batches)
        order = torch.randperm(
            self.n, generator=torch.Generator().manual_seed(derived_seed(self.seed, e))
        )
        mine, shards = [], []
        for batch in order.split(self.batch_size)[start : self.per_epoch]:
            parts = torch.tensor_split(batch, self.world)
            mine.append(parts[self.rank])
            shards.append((sum(len(p) for p in parts[: self.rank]), len(batch)))
        rows = self._fetch(mine)
        return (
            (x, y, shard, len(x) * self.world / shard[1])
            for (x, y), shard in zip(rows, shards, strict=True)
        )

    def _fetch(self, index_lists: list[torch.Tensor]) -> Iterator[tuple]:
        if isinstance(self.data, Dataset):
            loader = DataLoader(
                self.data, batch_sampler=[i.tolist() for i in index_lists],
                num_workers=self.num_workers,
            )  # fmt: skip
            return ((b[0], b[1]) for b in iter(loader))
        x, y = self.data
        return ((x[i], y[i]) for i in index_lists)


def _length(data) -> int:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        return len(x)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)
    raise ValueError(
        "data must be an (x, y) pair of tensors, a map-style Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


def _rows(data: TrainData, index: Sequence[int] | range) -> TrainData:
    """The rows ``index`` of tensors or a (DataLoader's) map-style Dataset."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset):
        return Subset(data, list(index))
    x, y = data
    index = torch.as_tensor(list(index), dtype=torch.long)
    return x[index], y[index]


def _stack(data: TrainData, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``index`` as one batch (for the tracked probabilities)."""
    n = _length(data.dataset if isinstance(data, DataLoader) else data)
    if any(not 0 <= i < n for i in index):
        raise ValueError(f"track: indices must lie in [0, {n}), got {list(index)}")
    rows = _rows(data, index)
    if isinstance(rows, Subset):
        items = [rows[i] for i in range(len(rows))]
        return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor(
            [int(b) for _, b in items]
        )
    return rows


class _Trainer:
    def __init__(self, model, train_data, val_data, spec: _Spec):
        self.spec, self.model = spec, model
        self.rank, self.world = world()
        self.device = spec.device or model_device(model)
        model.to(self.device)
        if spec.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.batches = _Batches(train_data, spec.batch_size, spec.seed, spec.num_workers)
        self.total_steps = spec.epochs * self.batches.per_epoch
        self.val_data, self.train_data = val_data, train_data
        self.opt = _optimizer(model, spec)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(spec.lr_schedule, min(1.0, (s + 1) / self.total_steps))
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if spec.amp == "fp16" else None
        self.config = spec.config(self.batches.n or -1, self.world)
        self.history = History()
        self.epoch, self.batch, self.step = 0, 0, 0
        self.partial = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.best: dict = {"score": None, "epoch": None, "model": None}
        self.bad_epochs = 0
        self.finished = False
        self.tracked_x = self.tracked_y = None
        if spec.track:
            source = val_data if val_data is not None else train_data
            self.tracked_x, self.tracked_y = _stack(source, spec.track)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> History:
        if self.spec.checkpoint is not None and self.spec.resume and self.spec.checkpoint.exists():
            self._load()
        if self.finished:
            return self._finish()
        if self.tracked_x is not None and not self.history.tracked:
            self._snapshot()  # before the first step
        bar = progress_bar(
            total=self.total_steps, initial=self.step, desc=f"train ({self.spec.method})",
            unit="step", disable=not self.spec.progress or self.rank != 0,
        )  # fmt: skip
        with bar:
            while self.epoch < self.spec.epochs and not self.history.stopped_early:
                self._train_epoch(bar)
                self._end_epoch()
                bar.set_postfix_str(self._postfix())
        self.finished = True
        self._save()
        return self._finish()

    def _train_epoch(self, bar) -> None:
        spec, start = self.spec, self.batch
        if start == 0:
            torch.manual_seed(derived_seed(spec.seed, "epoch", self.epoch, self.rank))
            self.partial = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        rng_at_checkpoint = torch.get_rng_state() if start else None
        batches = self.batches.epoch(self.epoch, start)
        if rng_at_checkpoint is not None:
            torch.set_rng_state(rng_at_checkpoint)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen, began = 0, time.perf_counter()
        generator = torch.Generator(self.device)
        self.net.train()
        for x, y, shard, scale in batches:
            x, y = self._to_device(x, y)
            who = 0 if shard is not None else self.rank  # a shard draws the global batch's noise
            generator.manual_seed(derived_seed(spec.seed, "step", self.step, who))
            loss, logits = self._loss(x, y, shard, generator)
            self._update(loss * scale if scale != 1.0 else loss)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            self.step, self.batch = self.step + 1, self.batch + 1
            bar.update(1)
            if spec.track_every and self.step % spec.track_every == 0:
                self._snapshot()
            mid_epoch = self.batch < self.batches.per_epoch  # the epoch's end saves anyway
            if spec.checkpoint_every and self.step % spec.checkpoint_every == 0 and mid_epoch:
                self._accumulate(loss_sum, correct, seen, began)
                loss_sum.zero_(), correct.zero_()
                seen, began = 0, time.perf_counter()
                self._save()
        self._accumulate(loss_sum, correct, seen, began)

    def _loss(self, x, y, shard, generator):
        spec = self.spec
        amp = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16 if spec.amp == "bf16" else torch.float16,
            enabled=spec.amp is not None,
        )
        with amp:
            return adversarial_loss(
                self.net, x, y, method=spec.method, eps=self._eps_now(), norm=spec.norm,
                steps=spec.steps, alpha=spec.alpha, beta=spec.beta, bounds=spec.bounds,
                generator=generator, shard=shard, return_logits=True,
            )  # fmt: skip

    def _eps_now(self) -> float:
        """The training eps at this step: ramped linearly from 0 over ``eps_warmup`` epochs."""
        ramp = self.spec.eps_warmup * self.batches.per_epoch
        return self.spec.eps * min(1.0, (self.step + 1) / ramp) if ramp else self.spec.eps

    def _update(self, loss: torch.Tensor) -> None:
        t = min(1.0, (self.step + 1) / self.total_steps)
        for group in self.opt.param_groups:
            group["weight_decay"] = weight_decay_at(self.spec.weight_decay, t)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.lr_used = self.opt.param_groups[0]["lr"]
        self.sched.step()

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.spec.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _accumulate(self, loss_sum, correct, seen, began) -> None:
        """Adds this stretch of batches to the epoch's running totals, summed over ranks."""
        totals = torch.stack([loss_sum, correct.double(), torch.tensor(seen, device=self.device,
                              dtype=torch.float64)])  # fmt: skip
        if self.world > 1:
            dist.all_reduce(totals)
        loss, right, n = totals.tolist()
        self.partial["loss"] += loss
        self.partial["correct"] += int(right)
        self.partial["seen"] += int(n)
        self.partial["seconds"] += time.perf_counter() - began

    def _end_epoch(self) -> None:
        spec, p = self.spec, self.partial
        train_loss = p["loss"] / max(p["seen"], 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss is {train_loss} in epoch {self.epoch + 1}: lower lr, check "
                "the data and model (the last good checkpoint is kept)"
            )
        began = time.perf_counter()
        val_clean, val_robust = self._measure(self.val_data, "val")
        limit = min(spec.train_eval, self.batches.n or 0)
        train_clean, train_robust = (
            self._measure(_rows(self.train_data, range(limit)), "train") if limit else (None, None)
        )
        self.epoch, self.batch = self.epoch + 1, 0
        if self.tracked_x is not None:
            self._snapshot()
        self.history.epochs.append({
            "epoch": self.epoch, "step": self.step, "lr": self.lr_used,
            "weight_decay": self.opt.param_groups[0]["weight_decay"], "train_loss": train_loss,
            "train_acc": p["correct"] / max(p["seen"], 1), "train_clean_acc": train_clean,
            "train_robust_acc": train_robust, "val_clean_acc": val_clean,
            "val_robust_acc": val_robust, "seconds": p["seconds"],
            "eval_seconds": time.perf_counter() - began,
        })  # fmt: skip
        self._early_stopping(val_robust if spec.eps > 0 else val_clean)
        self._save()

    def _early_stopping(self, score: float | None) -> None:
        if score is None:
            return
        if self.best["score"] is None or score > self.best["score"]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = {"score": score, "epoch": self.epoch, "model": state}
            self.history.best_epoch, self.bad_epochs = self.epoch, 0
        else:
            self.bad_epochs += 1
            if self.spec.patience is not None and self.bad_epochs >= self.spec.patience:
                self.history.stopped_early = True

    def _measure(self, data, what: str) -> tuple[float | None, float | None]:
        """(clean, robust) accuracy on this rank's share of data, summed over ranks."""
        if data is None:
            return None, None
        spec = self.spec
        if self.world > 1 and not isinstance(data, DataLoader):
            data = _rows(data, range(self.rank, _length(data), self.world))
        g = torch.Generator(self.device).manual_seed(
            derived_seed(spec.seed, what, self.epoch, self.rank)
        )
        attack = "pgd" if spec.eps > 0 else "none"
        kwargs = dict(eps=spec.eps, norm=spec.norm, steps=spec.val_steps, generator=g,
                      bounds=spec.bounds)  # fmt: skip
        result = evaluate(
            self.model, data, attack, device=self.device, progress=False,
            **(kwargs if attack == "pgd" else {}),
        )  # fmt: skip
        counts = torch.tensor(
            [result.clean_correct.sum(), result.robust_correct.sum(), result.n],
            dtype=torch.float64, device=self.device,
        )  # fmt: skip
        if self.world > 1:
            dist.all_reduce(counts)
        clean, robust, n = counts.tolist()
        n = max(n, 1)
        return clean / n, (robust / n if spec.eps > 0 else None)

    def _snapshot(self) -> None:
        """Class probabilities of the tracked images now (eval mode), once per step."""
        t, now = self.history.tracked, self.step / self.batches.per_epoch
        if t and t["epoch"][-1] == now:
            return
        with eval_mode(self.model), torch.no_grad():
            x = self.tracked_x.to(self.device)
            probs = F.softmax(self.model(x).float(), dim=1).cpu().tolist()
        if not t:
            t.update(index=list(self.spec.track), label=self.tracked_y.tolist(), epoch=[], probs=[])
        t["epoch"].append(now)
        t["probs"].append(probs)

    def _postfix(self) -> str:
        row = self.history.epochs[-1]
        text = f"loss {row['train_loss']:.3f}"
        for key in ("val_clean_acc", "val_robust_acc"):
            if row[key] is not None:
                text += f" {key[4:]} {100 * row[key]:.1f}%"
        return text

    def _finish(self) -> History:
        if self.spec.restore_best and self.best["model"] is not None:
            self.model.load_state_dict(self.best["model"])
        self.model.eval()
        return self.history

    # --- checkpoints ------------------------------------------------------------------------

    def _save(self) -> None:
        if self.spec.checkpoint is None:
            return
        rng = [torch.get_rng_state()]
        if self.world > 1:  # every rank's RNG (dropout masks), so a resumed epoch is exact
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.rank != 0:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "config": self.config, "finished": self.finished,
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng, "partial": self.partial, "history": self.history.to_dict(),
            "best": self.best, "bad_epochs": self.bad_epochs,
        }  # fmt: skip
        atomic_torch_save(state, self.spec.checkpoint)

    def _load(self) -> None:
        path = self.spec.checkpoint
        for stale in path.parent.glob(f".{path.name}.tmp*"):
            stale.unlink(missing_ok=True)  # a killed writer's leftover, never the checkpoint
        state = load_checkpoint(path)
        if state["config"] != self.config:
            diff = sorted(
                k for k in set(state["config"]) | set(self.config)
                if state["config"].get(k) != self.config.get(k)
            )  # fmt: skip
            raise ValueError(
                f"checkpoint {path} is from a run with other settings ({', '.join(diff)}): "
                "pass resume=False to start afresh, or another checkpoint path"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"][self.rank])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.partial = dict(state["partial"])  # totals so far, already summed over ranks
        self.history = History.from_dict(state["history"])
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.finished = state["finished"]


def load_checkpoint(path: str | Path) -> dict:
    """A trainer checkpoint, read with ``weights_only=True``; a clear error if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path} cannot be read: it is truncated, corrupt, or not a robustkern "
            f"training checkpoint ({type(e).__name__}: {str(e)[:200]})"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a robustkern training checkpoint (format 1)")
    return state


def _optimizer(model: torch.nn.Module, spec: _Spec) -> torch.optim.Optimizer:
    params = model.parameters()
    wd = weight_decay_at(spec.weight_decay, 0.0)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=wd)
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, weight_decay=wd)
