"""What the commands share before their own work: the seed, the data, the model, the device,
torch.distributed under torchrun, and printing on rank 0 only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from robustkern import data, models, pretrained, training
from robustkern._env import init_distributed
from robustkern.checks import check_model_fits


@dataclass
class Loaded:
    """The data a command works on (test split cut to --limit) and, when asked, its model."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    model: torch.nn.Module | None = None

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1


def start(args, model: bool = True) -> Loaded:
    """The prologue of the model commands: seed, data (printed), and the model on --device."""
    torch.manual_seed(args.seed)
    loaded = Loaded(*test_split(args))
    print(f"data: {args.data}, {len(loaded.x_test)} test images {tuple(loaded.x_test.shape[1:])}")
    if model:
        loaded.model = load_model(args, loaded.x_train, loaded.y_train)
    return loaded


def test_split(args) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) of --data, the test split cut to --limit."""
    x_train, y_train, x_test, y_test = data.load(
        args.data, image_size=args.image_size, bounds=args.bounds
    )
    limit = getattr(args, "limit", 0)
    if limit:
        x_test, y_test = x_test[:limit], y_test[:limit]
    return x_train, y_train, x_test, y_test


def model_from_spec(
    spec: str, weights: str | None, kwargs_json: str | None, trust_pickle: bool
) -> torch.nn.Module:
    """module:factory with JSON keyword arguments and an optional state-dict file."""
    kwargs = json.loads(kwargs_json) if kwargs_json else {}
    return models.from_spec(spec, weights, kwargs=kwargs, trust_pickle=trust_pickle)


def load_model(args, x_train: torch.Tensor, y_train: torch.Tensor) -> torch.nn.Module:
    """--model module:factory (+ --weights), checked on two images, else the cached default
    small CNN."""
    if args.model:
        model = model_from_spec(args.model, args.weights, args.model_kwargs, args.trust_pickle)
        print(f"model: {args.model}" + (f" with weights {args.weights}" if args.weights else ""))
        classes = int(y_train.max()) + 1
        check_model_fits(model.to(args.device), x_train[:2].to(args.device), classes, args.model)
    else:
        model = pretrained.small_cnn(
            args.data, x_train, y_train, epochs=args.epochs, seed=args.seed,
            progress=not args.no_progress,
        )  # fmt: skip
    return model.to(args.device)


def say(*args) -> None:
    """print, on rank 0 only when running under torchrun."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(*args)


def training_setup(args) -> tuple:
    """(model factory, train, val, test) for train/tradeoff, after torch.distributed is set up
    under torchrun: --val-fraction of the training split is held out for validation (early
    stopping and best-epoch choice never see the test set); a --model is checked on two images."""
    args.device = str(init_distributed(args.device)[0])
    x_train, y_train, x_test, y_test = test_split(args)
    n_val = round(len(x_train) * args.val_fraction)
    if not 0 <= n_val < len(x_train):
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    train = (x_train[: len(x_train) - n_val], y_train[: len(x_train) - n_val])
    val = (x_train[len(x_train) - n_val :], y_train[len(x_train) - n_val :]) if n_val else None
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    channels, classes = x_train.shape[1], int(y_train.max()) + 1

    def factory() -> torch.nn.Module:
        if args.model:
            return models.from_spec(args.model, None, kwargs=kwargs)
        return models.small_cnn(channels, classes)

    if args.model:  # a model that does not fit the data is an error before any training
        check_model_fits(factory().to(args.device), x_train[:2].to(args.device), classes,
                         args.model)  # fmt: skip
    say(f"data: {args.data}, {len(train[0])} training, {n_val} validation, "
        f"{len(x_test)} test images {tuple(x_test.shape[1:])}")  # fmt: skip
    return factory, train, val, (x_test, y_test)


def fit_config(args) -> training.TrainConfig:
    """fit's options from the train/tradeoff flags."""
    wd = args.weight_decay[0] if len(args.weight_decay) == 1 else tuple(args.weight_decay)
    return training.TrainConfig(
        norm=args.norm, steps=args.steps, alpha=args.alpha, beta=args.beta,
        eps_warmup=args.eps_warmup, kappa=args.kappa,
        ramp_start=args.ramp[0] if args.ramp else None,
        ramp_length=args.ramp[1] if args.ramp else None,
        epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, lr_schedule=args.lr_schedule, weight_decay=wd,
        amp=args.amp, channels_last=args.channels_last, patience=args.patience,
        device=args.device, progress=not args.no_progress, bounds=args.bounds, seed=args.seed,
    )  # fmt: skip
