"""The trainer: ``fit(model, train_data, val_data, config, **overrides) -> History``.

Standard, adversarial (PGD-AT, FGSM-RS, TRADES) and certified (IBP, CROWN-IBP) training through
``adversarial_loss`` with the schedules the literature uses, AMP, channels_last, robust
validation with early stopping, probability trajectories of chosen images, atomic checkpoints
with exact resume after a kill, and DistributedDataParallel when torch.distributed is initialised
(e.g. under ``torchrun``). The options are ``TrainConfig``'s fields; batching is ``batches``,
validation ``validation``, checkpoints ``checkpoint``, the record ``history``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from robustkern._env import derived_seed, world
from robustkern._progress import progress_bar
from robustkern.modes import model_device
from robustkern.training import checkpoint, validation
from robustkern.training.batches import Batches, TrainData, rows, stack
from robustkern.training.config import TrainConfig, config_from
from robustkern.training.history import History
from robustkern.training.loss import CERTIFIED, adversarial_loss
from robustkern.training.schedules import lr_factor, weight_decay_at


def fit(
    model: torch.nn.Module,
    train_data: TrainData,
    val_data: TrainData | None = None,
    config: TrainConfig | None = None,
    **overrides,
) -> History:
    """Trains ``model`` and returns the History; the model ends in eval mode.

    Args:
        model: the network to train, in place (logits out).
        train_data: an ``(x, y)`` pair of tensors (images (N, C, H, W) in ``bounds``, int64
            labels (N,)), a map-style Dataset, or a DataLoader. For the first two the trainer
            draws the order itself (a permutation per epoch from ``seed``), so runs are
            reproducible, a resumed epoch replays the same batches, and under
            torch.distributed each rank takes its slice of every global batch of
            ``batch_size``. A DataLoader is iterated as given (shuffling seeded per epoch;
            under DDP it must shard, e.g. with a DistributedSampler).
        val_data: the same forms, for validation at each epoch end (clean accuracy and, when
            eps > 0, PGD accuracy with ``val_steps`` steps; for the certified methods the
            IBP-verified accuracy at eps), early stopping and the best epoch.
        config: a ``TrainConfig`` (default: its defaults).
        **overrides: ``TrainConfig`` fields replacing the config's, e.g. ``method="pgd",
            eps=0.3, epochs=10``. The main ones: method ("standard", "pgd", "fgsm-rs",
            "trades", "gaussian", "ibp", "crown-ibp"; see ``adversarial_loss``) at radius eps
            (input units) in norm (for "gaussian" eps is the noise's sigma, validated under
            that noise); eps_warmup (epochs to ramp eps from 0: large radii such as MNIST's
            0.3 otherwise leave PGD-AT at chance); for "ibp" and "crown-ibp" (a certifiable
            model such as ``models.cert_cnn``) natural training for ramp_start epochs, then
            eps, kappa and the CROWN-IBP weight ramped over ramp_length epochs to eps, kappa
            and 0 (``TrainConfig.certified_ramps``); optimizer "sgd" / "adam" / "adamw", lr
            (0.1 for SGD, 1e-3 otherwise), lr_schedule (``lr_factor``), weight_decay (a
            number or (start, end) annealed: ``weight_decay_at``) — the published PGD-AT
            recipe is SGD, 0.1, "piecewise", 5e-4, Wong et al.'s FGSM-RS "cyclic" at 0.2; amp
            "bf16" or "fp16" (with a GradScaler), channels_last; patience (stop after that
            many epochs without a better validation score: robust overfitting, Rice et al.)
            and restore_best; track (indices of validation, else training, images whose class
            probabilities are recorded at the start, each epoch end and every track_every
            steps); checkpoint (a file written atomically at each epoch end and every
            checkpoint_every steps: a run that finds it and resume=True continues and gives
            the uninterrupted run's history; one from other settings is refused, naming
            them; under DDP only rank 0 writes it).

    Returns:
        The ``History``: per epoch the loss, learning rate, training and validation
        accuracies, seconds; the tracked probabilities; the best epoch.
    """
    config = config_from(config, overrides)
    if config.patience is not None and val_data is None:
        raise ValueError("patience needs val_data: early stopping watches the validation score")
    return _Trainer(model, train_data, val_data, config).run()


@dataclass
class _Totals:
    """An epoch's running totals, summed over ranks."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclass
class _Best:
    """The best validation score so far, its epoch and (on the CPU) its weights."""

    score: float | None = None
    epoch: int | None = None
    model: dict | None = None


class _Trainer:
    def __init__(self, model, train_data, val_data, config: TrainConfig):
        self.config, self.model = config, model
        self.rank, self.world = world()
        self.device = config.device or model_device(model)
        self.net = self._place(model)
        self.batches = Batches(train_data, config.batch_size, config.seed, config.num_workers)
        self.total_steps = config.epochs * self.batches.per_epoch
        self.val_data, self.train_data = val_data, train_data
        self.opt = _optimizer(model, config)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(
            config.lr_schedule, min(1.0, (s + 1) / self.total_steps)))  # fmt: skip
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        n_train = self.batches.n if self.batches.n is not None else -1
        self.key = config.resume_key() | {"n_train": n_train, "world_size": self.world}
        self.history, self.totals, self.best = History(), _Totals(), _Best()
        self.epoch = self.batch = self.step = self.bad_epochs = 0
        self.finished, self.lr_used = False, config.learning_rate
        self.tracked_x = self.tracked_y = None
        if config.track:
            source = val_data if val_data is not None else train_data
            self.tracked_x, self.tracked_y = stack(source, config.track)

    def _place(self, model) -> torch.nn.Module:
        """The model on its device and layout; wrapped in DDP under torch.distributed."""
        model.to(self.device)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def restore_progress(self, totals: dict, history: dict, best: dict, bad_epochs: int):
        """A checkpoint's running totals (already summed over ranks), history and best epoch."""
        self.totals, self.best = _Totals(**totals), _Best(**best)
        self.history, self.bad_epochs = History.from_dict(history), bad_epochs

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> History:
        config = self.config
        if config.checkpoint is not None and config.resume and config.checkpoint.exists():
            checkpoint.restore(self)
        if self.finished:
            return self._finish()
        if self.tracked_x is not None and not self.history.tracked:
            self._snapshot()  # before the first step
        bar = progress_bar(
            total=self.total_steps, initial=self.step, desc=f"train ({config.method})",
            unit="step", disable=not config.progress or self.rank != 0,
        )  # fmt: skip
        with bar:
            while self.epoch < config.epochs and not self.history.stopped_early:
                self._train_epoch(bar)
                self._end_epoch()
                bar.set_postfix_str(self._postfix())
        self.finished = True
        checkpoint.save(self)
        return self._finish()

    def _train_epoch(self, bar) -> None:
        config, start = self.config, self.batch
        if start == 0:
            torch.manual_seed(derived_seed(config.seed, "epoch", self.epoch, self.rank))
            self.totals = _Totals()
        rng_at_checkpoint = torch.get_rng_state() if start else None
        batches = self.batches.epoch(self.epoch, start)
        if rng_at_checkpoint is not None:
            torch.set_rng_state(rng_at_checkpoint)
        stretch = _Stretch(self.device)
        generator = torch.Generator(self.device)
        self.net.train()
        for x, y, shard, scale in batches:
            x, y = self._to_device(x, y)
            who = 0 if shard is not None else self.rank  # a shard draws the global batch's noise
            generator.manual_seed(derived_seed(config.seed, "step", self.step, who))
            loss, logits = self._loss(x, y, shard, generator)
            self._update(loss * scale if scale != 1.0 else loss)
            stretch.add(loss, logits, y)
            self.step, self.batch = self.step + 1, self.batch + 1
            bar.update(1)
            if config.track_every and self.step % config.track_every == 0:
                self._snapshot()
            mid_epoch = self.batch < self.batches.per_epoch  # the epoch's end saves anyway
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and mid_epoch:
                self._accumulate(stretch)
                stretch = _Stretch(self.device)
                checkpoint.save(self)
        self._accumulate(stretch)

    def _loss(self, x, y, shard, generator):
        config = self.config
        amp = torch.autocast(
            self.device.type,
            dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16,
            enabled=config.amp is not None,
        )
        with amp:
            return adversarial_loss(
                self.net, x, y, method=config.method, norm=config.norm, steps=config.steps,
                alpha=config.alpha, beta=config.beta, bounds=config.bounds,
                generator=generator, shard=shard, return_logits=True, **self._ramped(),
            )  # fmt: skip

    def _ramped(self) -> dict:
        """The training eps at this step: ramped linearly from 0 over ``eps_warmup`` epochs, or
        for the certified methods, with kappa and the CROWN weight, on their ramps."""
        config = self.config
        if config.method in CERTIFIED:
            when = (self.step + 1) / self.batches.per_epoch
            return dict(zip(("eps", "kappa", "crown_weight"), config.certified_ramps(when),
                            strict=True))  # fmt: skip
        ramp = config.eps_warmup * self.batches.per_epoch
        return {"eps": config.eps * min(1.0, (self.step + 1) / ramp) if ramp else config.eps}

    def _update(self, loss: torch.Tensor) -> None:
        t = min(1.0, (self.step + 1) / self.total_steps)
        for group in self.opt.param_groups:
            group["weight_decay"] = weight_decay_at(self.config.weight_decay, t)
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
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _accumulate(self, stretch: _Stretch) -> None:
        """Adds a stretch of batches to the epoch's running totals, summed over ranks."""
        totals = stretch.totals()
        if self.world > 1:
            dist.all_reduce(totals)
        loss, right, n = totals.tolist()
        self.totals.loss += loss
        self.totals.correct += int(right)
        self.totals.seen += int(n)
        self.totals.seconds += time.perf_counter() - stretch.began

    def _end_epoch(self) -> None:
        config, t = self.config, self.totals
        train_loss = t.loss / max(t.seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"the training loss is {train_loss} in epoch {self.epoch + 1}: lower lr, check "
                "the data and model (the last good checkpoint is kept)"
            )
        began = time.perf_counter()
        val_clean, val_robust = self._measure(self.val_data, "val")
        limit = min(config.train_eval, self.batches.n or 0)
        train_clean, train_robust = (
            self._measure(rows(self.train_data, range(limit)), "train") if limit else (None, None)
        )
        self.epoch, self.batch = self.epoch + 1, 0
        if self.tracked_x is not None:
            self._snapshot()
        self.history.epochs.append({
            "epoch": self.epoch, "step": self.step, "lr": self.lr_used,
            "weight_decay": self.opt.param_groups[0]["weight_decay"], "train_loss": train_loss,
            "train_acc": t.correct / max(t.seen, 1), "train_clean_acc": train_clean,
            "train_robust_acc": train_robust, "val_clean_acc": val_clean,
            "val_robust_acc": val_robust, "seconds": t.seconds,
            "eval_seconds": time.perf_counter() - began,
        })  # fmt: skip
        self._early_stopping(val_robust if config.eps > 0 else val_clean)
        checkpoint.save(self)

    def _early_stopping(self, score: float | None) -> None:
        if score is None:
            return
        if self.best.score is None or score > self.best.score:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = _Best(score, self.epoch, state)
            self.history.best_epoch, self.bad_epochs = self.epoch, 0
        else:
            self.bad_epochs += 1
            if self.config.patience is not None and self.bad_epochs >= self.config.patience:
                self.history.stopped_early = True

    def _measure(self, data, what: str) -> tuple[float | None, float | None]:
        return validation.accuracies(self.model, data, self.config, (what, self.epoch),
                                     self.device, self.rank, self.world)  # fmt: skip

    def _snapshot(self) -> None:
        validation.snapshot(self.model, self.history.tracked, self.tracked_x, self.tracked_y,
                            self.config.track, self.step / self.batches.per_epoch,
                            self.device)  # fmt: skip

    def _postfix(self) -> str:
        row = self.history.epochs[-1]
        text = f"loss {row['train_loss']:.3f}"
        for key in ("val_clean_acc", "val_robust_acc"):
            if row[key] is not None:
                text += f" {key[4:]} {100 * row[key]:.1f}%"
        return text

    def _finish(self) -> History:
        if self.config.restore_best and self.best.model is not None:
            self.model.load_state_dict(self.best.model)
        self.model.eval()
        return self.history


class _Stretch:
    """Loss and accuracy sums over a stretch of batches, on the device (no sync per batch)."""

    def __init__(self, device):
        self.device, self.began, self.seen = device, time.perf_counter(), 0
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)

    def add(self, loss, logits, y) -> None:
        self.loss_sum += loss.detach().double() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def totals(self) -> torch.Tensor:
        seen = torch.tensor(self.seen, device=self.device, dtype=torch.float64)
        return torch.stack([self.loss_sum, self.correct.double(), seen])


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    wd = weight_decay_at(config.weight_decay, 0.0)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=wd)  # fmt: skip
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.learning_rate, weight_decay=wd)
