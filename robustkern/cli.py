"""The ``robustkern`` command line."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import torch

import robustkern
from robustkern import (
    corruptions,
    data,
    evaluation,
    fourier,
    models,
    pretrained,
    spectral,
    suite,
    sweep,
    training,
)
from robustkern._io import atomic_torch_save, atomic_write_text
from robustkern.attacks import NORMS
from robustkern.attacks._common import LOSSES
from robustkern.attacks.apgd import APGD_LOSSES
from robustkern.checks import check_model_fits
from robustkern.data import eps_text

DEFAULT_EPOCHS = 10


def real(text: str) -> float:
    """A float, or a fraction as the literature writes radii: ``8/255``."""
    try:
        return float(text)
    except ValueError:
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(text) from None


def at_least(minimum: float, kind: type = int):
    """An argparse type for a number >= ``minimum``: a bad value stops the command before it
    loads data or trains a model, and a negative ``--limit`` cannot silently drop images."""

    def parse(text: str):
        value = kind(text)  # a ValueError becomes argparse's "invalid <kind> value"
        if math.isnan(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def bounds_pair(text: str) -> tuple[float, float]:
    """--bounds LO,HI: the range valid inputs live in (e.g. of normalised images)."""
    try:
        lo, hi = (real(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LO,HI, got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"needs LO < HI, got {text!r}")
    return lo, hi


COUNT = at_least(0)  # --limit, --indicators, --eps-warmup: 0 means all or none
POSITIVE = at_least(1)  # steps, restarts, batch sizes, epochs
RADIUS = at_least(0.0, real)  # eps and step sizes, 0.03 or 8/255 (inf: the attacks decide)


def model_from_spec(
    spec: str, weights: str | None, kwargs_json: str | None, trust_pickle: bool
) -> torch.nn.Module:
    """module:factory with JSON keyword arguments and an optional state-dict file."""
    kwargs = json.loads(kwargs_json) if kwargs_json else {}
    return models.from_spec(spec, weights, kwargs=kwargs, trust_pickle=trust_pickle)


def load_model(args, x_train: torch.Tensor, y_train: torch.Tensor) -> torch.nn.Module:
    """--model module:factory (+ --weights), else the cached default small CNN."""
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


# Flags of `robustkern attack` that go to the attack function when it takes them.
ATTACK_FLAGS = ("steps", "restarts", "loss", "alpha", "queries")


def attack_options(args) -> dict:
    """The chosen attack's keyword arguments: each flag it takes, given or at the function's
    default (so the printed budget is the one that runs); a flag it does not take, an L2 fgsm
    or an unknown loss stop here, before a model is loaded or trained."""
    params = inspect.signature(evaluation.FUNCTIONS[args.attack]).parameters
    options: dict = {"eps": args.eps}
    for flag in ATTACK_FLAGS:
        value = getattr(args, flag)
        if flag not in params and value is not None:
            raise ValueError(f"--attack {args.attack} takes no --{flag}")
        if flag in params:
            options[flag] = params[flag].default if value is None else value
    if "norm" not in params and args.norm != "linf":
        raise ValueError(f"{args.attack} is an L-inf attack: use --norm linf or another attack")
    if "norm" in params:
        options["norm"] = args.norm
    if "generator" in params:
        options["generator"] = torch.Generator(args.device).manual_seed(args.seed)
    losses = APGD_LOSSES if args.attack == "apgd" else LOSSES
    if options.get("loss", "ce") not in losses:
        raise ValueError(f"--attack {args.attack} takes --loss {' or '.join(losses)}")
    return {k: v for k, v in options.items() if v is not None}


def cmd_attack(args) -> int:
    torch.manual_seed(args.seed)
    kwargs = attack_options(args)
    x_train, y_train, x_test, y_test = load_test_split(args)
    model = load_model(args, x_train, y_train)
    budget = "".join(f", {k} {kwargs[k]}" for k in ATTACK_FLAGS if k in kwargs)
    what = f"{args.attack} ({args.norm}, eps {eps_text(args.eps, args.bounds)}{budget})"
    print(f"data: {args.data}, {len(x_test)} test images {tuple(x_test.shape[1:])}")
    print(f"attack: {what}")
    result = robustkern.evaluate(
        model,
        (x_test, y_test),
        args.attack,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        budget=args.budget,
        **kwargs,
    )
    print_accuracies(result)
    return 0


def print_accuracies(result: evaluation.Evaluation) -> None:
    """Clean and robust accuracy with their 95 % intervals, and a budget's early stop."""
    if result.stopped_early:
        print(f"the time budget stopped the evaluation after {result.n} of {result.of} images")
    print(f"clean accuracy:  {result.interval_text('clean')}  (95 % interval)")
    for name, acc in result.after_each_attack():
        print(f"  after {name:<8} {100 * acc:6.2f} %  ({result.broken_by[name]} points broken)")
    print(f"robust accuracy: {result.interval_text('robust')}  ({result.seconds:.1f} s)")


def cmd_evaluate(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_test_split(args)
    model = load_model(args, x_train, y_train)
    attacks_run = ", ".join(name for name, _ in evaluation.PRESETS[args.preset])
    print(f"data: {args.data}, {len(x_test)} test images {tuple(x_test.shape[1:])}")
    print(
        f"evaluation: {args.preset} ({attacks_run}), {args.norm}, eps "
        f"{eps_text(args.eps, args.bounds)}"
    )
    result = robustkern.evaluate(
        model,
        (x_test, y_test),
        args.preset,
        eps=args.eps,
        norm=args.norm,
        generator=torch.Generator(args.device).manual_seed(args.seed),
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        autocast=torch.bfloat16 if args.bf16 else None,
        bounds=args.bounds,
        budget=args.budget,
    )
    print_accuracies(result)
    report = {"data": args.data, "preset": args.preset, **result.to_dict()}
    if args.indicators:
        n = min(args.indicators, len(x_test))
        print(f"\ngradient-masking indicators on the first {n} test images:")
        found = evaluation.indicators(
            model, x_test[:n].to(args.device), y_test[:n].to(args.device),
            norm=args.norm, eps=args.eps, seed=args.seed,
        )  # fmt: skip
        for indicator in found:
            print(f"  {indicator}")
        report["indicators"] = [vars(i) for i in found]
    if args.json:
        print(f"wrote {atomic_write_text(args.json, json.dumps(report, indent=1))}")
    return 0


def cmd_spectral(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, *_ = data.load(args.data, image_size=args.image_size, bounds=args.bounds)
    model = load_model(args, x_train, y_train)
    shape = tuple(x_train.shape[1:])
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise ValueError(
                f"--input-shape must be C,H,W or F, got {args.input_shape!r}"
            ) from None
    table = spectral.lipschitz_table(
        model, shape, lower_bound=args.lower_bound, method="exact" if args.exact else "gram"
    )
    print(f"input shape {shape}; upper bounds are L2 operator norms (certified unless noted)\n")
    print(table)
    if args.json:
        print(f"\nwrote {atomic_write_text(args.json, table.to_json())}")
    return 0


def load_test_split(args) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) of --data, the test split cut to --limit."""
    x_train, y_train, x_test, y_test = data.load(
        args.data, image_size=args.image_size, bounds=args.bounds
    )
    if args.limit:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    return x_train, y_train, x_test, y_test


def cmd_fourier(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_test_split(args)
    model = load_model(args, x_train, y_train)
    out = Path(args.out)
    h, w = x_test.shape[-2:]
    print(f"data: {args.data}, {len(x_test)} test images {tuple(x_test.shape[1:])}")
    print(f"Fourier heat map: eps {args.eps:g} (L2 norm per channel), {h}x{w} frequencies")
    checkpoint = out / "heatmap.ckpt"
    error_map, counts = fourier.heatmap(
        model,
        x_test,
        y_test,
        eps=args.eps,
        bounds=args.bounds,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        checkpoint=checkpoint,
        progress=not args.no_progress,
        return_counts=True,
    )
    profile = fourier.radial_profile(error_map)
    worst = divmod(int(error_map.argmax()), w)
    print(f"mean error over frequencies {100 * error_map.mean().item():.2f} %")
    print(
        f"highest error {100 * error_map.max().item():.2f} % at frequency "
        f"({worst[0] - h // 2}, {worst[1] - w // 2})"
    )
    print("radial profile (low -> high):", " ".join(f"{100 * v:.0f}" for v in profile.tolist()))
    report = {
        "eps": args.eps,
        "n": len(x_test),
        "shape": list(x_test.shape[1:]),
        "convention": "index (r, s) is frequency (r - H // 2, s - W // 2); see robustkern.fourier",
        "error": error_map.tolist(),
        "errors": counts.tolist(),
        "radial_profile": profile.tolist(),
    }
    title = f"Fourier heat map, eps {args.eps:g}, n={len(x_test)}"
    print(f"wrote {fourier.plot_heatmap(error_map, out / 'heatmap.png', title=title)}")
    print(f"wrote {atomic_write_text(out / 'heatmap.json', json.dumps(report))}")
    checkpoint.unlink(missing_ok=True)  # the results are written; nothing left to resume
    return 0


def cmd_corruptions(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_test_split(args)
    model = load_model(args, x_train, y_train)
    baseline = None
    if args.baseline_model:
        baseline = model_from_spec(
            args.baseline_model,
            args.baseline_weights,
            args.baseline_model_kwargs,
            args.trust_pickle,
        ).to(args.device)
    names = args.corruptions.split(",") if args.corruptions else corruptions.CORRUPTIONS
    print(f"data: {args.data}, {len(x_test)} test images {tuple(x_test.shape[1:])}")
    report = corruptions.corruption_report(
        model,
        x_test,
        y_test,
        corruptions=names,
        baseline=baseline,
        table=args.table,
        bounds=args.bounds,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    print(report)
    out = Path(args.out)
    print(f"wrote {corruptions.plot_report(report, out / 'corruptions.png')}")
    print(f"wrote {atomic_write_text(out / 'corruptions.json', json.dumps(report.to_dict()))}")
    return 0


def cmd_suite(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_test_split(args)
    channels, classes = x_train.shape[1], int(y_train.max()) + 1
    print(f"data: {args.data}, {len(x_train)} training and {len(x_test)} test images "
          f"{tuple(x_test.shape[1:])}")  # fmt: skip
    if args.model:  # the first model's factory gives the randomisation test its fresh models
        named = suite_models(args, x_test, classes)
        kwargs = json.loads(_per_model(args.model_kwargs, args.model)[0] or "{}")
        factory = functools.partial(models.from_spec, args.model[0], None, kwargs=kwargs)
    else:
        named = suite.default_models(args.data, x_train, y_train, seed=args.seed,
                                     progress=not args.no_progress)  # fmt: skip
        factory = functools.partial(models.small_cnn, channels, classes)
    named = {k: m.to(args.device) for k, m in named.items()}
    report = suite.run_suite(
        named, (x_test, y_test), train_data=(x_train, y_train), factory=factory,
        norm=args.norm, eps=args.eps, checks=args.checks.split(",") if args.checks else None,
        tradeoff=args.tradeoff, layer=args.layer, bounds=args.bounds,
        budget="1m" if args.quick and args.budget is None else args.budget or "10m", out=args.out,
        data_name=args.data, seed=args.seed, progress=not args.no_progress,
        resume=not args.fresh,
    )  # fmt: skip
    print()
    suite.print_summary(report, args.out)
    return 0


def _per_model(values: list[str] | None, specs: list[str]) -> list[str | None]:
    """One value per --model: none given, one for all, or one each."""
    if not values:
        return [None] * len(specs)
    if len(values) == 1:
        return values * len(specs)
    if len(values) != len(specs):
        raise ValueError(f"give one value for every --model ({len(specs)}), got {len(values)}")
    return values


def suite_models(args, x: torch.Tensor, classes: int) -> dict[str, torch.nn.Module]:
    """--model (repeatable) with --weights, --model-kwargs and --name per model, each checked
    on two of the images x."""
    weights = _per_model(args.weights, args.model)
    kwargs = _per_model(args.model_kwargs, args.model)
    names = _per_model(args.name, args.model)
    out = {}
    for k, spec in enumerate(args.model):
        name = names[k] or spec.rpartition(":")[2]
        if name in out:
            name = f"{name}-{k + 1}"
        out[name] = model_from_spec(spec, weights[k], kwargs[k], args.trust_pickle).to(args.device)
        check_model_fits(out[name], x[:2].to(args.device), classes, f"model {name} ({spec})")
        print(f"model {name}: {spec}" + (f" with weights {weights[k]}" if weights[k] else ""))
    return out


def say(*args) -> None:
    """print, on rank 0 only when running under torchrun."""
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(*args)


def training_setup(args) -> tuple:
    """(model factory, train, val, test) for train/tradeoff: --val-fraction of the training split
    is held out for validation (early stopping and best-epoch choice never see the test set)."""
    if args.device.startswith("cuda") and "LOCAL_RANK" in os.environ:
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    x_train, y_train, x_test, y_test = load_test_split(args)
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

    say(f"data: {args.data}, {len(train[0])} training, {n_val} validation, "
          f"{len(x_test)} test images {tuple(x_test.shape[1:])}")  # fmt: skip
    return factory, train, val, (x_test, y_test)


def fit_settings(args) -> dict:
    """fit's keyword arguments from the train/tradeoff options."""
    wd = args.weight_decay[0] if len(args.weight_decay) == 1 else tuple(args.weight_decay)
    return dict(
        norm=args.norm, steps=args.steps, alpha=args.alpha, beta=args.beta,
        eps_warmup=args.eps_warmup, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        lr_schedule=args.lr_schedule, weight_decay=wd, amp=args.amp,
        channels_last=args.channels_last, patience=args.patience, device=args.device,
        progress=not args.no_progress, bounds=args.bounds,
    )  # fmt: skip


def cmd_train(args) -> int:
    factory, train, val, test = training_setup(args)
    methods = args.method.split(",")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    out, rows = Path(args.out), []
    for method in methods:
        eps = 0.0 if method == "standard" else args.eps
        torch.manual_seed(args.seed)
        model = factory()
        where = out / method if len(methods) > 1 else out
        say(f"\ntraining: {method}, eps {eps_text(eps)}, {args.epochs} epochs -> {where}")
        history = training.fit(
            model, train, val, method=method, eps=eps, seed=args.seed,
            checkpoint=where / "checkpoint.pt", checkpoint_every=args.checkpoint_every,
            **fit_settings(args),
        )  # fmt: skip
        say(history.table())
        result = robustkern.evaluate(
            model, test, "pgd", eps=args.eps, norm=args.norm, steps=args.eval_steps,
            generator=torch.Generator(args.device).manual_seed(args.seed),
            device=args.device, progress=False, bounds=args.bounds,
        )  # fmt: skip
        rows.append((method, result.clean_accuracy, result.robust_accuracy, history))
        say(f"test: clean {100 * result.clean_accuracy:.2f} %, PGD-{args.eval_steps} at eps "
              f"{eps_text(args.eps)}: {100 * result.robust_accuracy:.2f} %")  # fmt: skip
        if rank == 0:
            summary = {"method": method, "eps": eps, "eval_eps": args.eps,
                       "eval_attack": f"pgd-{args.eval_steps}", "test_clean_acc":
                       result.clean_accuracy, "test_robust_acc": result.robust_accuracy,
                       "history": history.to_dict()}  # fmt: skip
            say(f"wrote {atomic_torch_save(model.state_dict(), where / 'model.pt')}")
            say(f"wrote {atomic_write_text(where / 'result.json', json.dumps(summary))}")
    if len(methods) > 1:
        say(f"\ntest accuracy (%), PGD-{args.eval_steps} at eps {eps_text(args.eps)}:")
        say(f"{'method':>10} {'clean':>7} {'robust':>7} {'train s':>8}")
        for method, clean, robust, h in rows:
            seconds = sum(h["seconds"])
            say(f"{method:>10} {100 * clean:7.2f} {100 * robust:7.2f} {seconds:8.1f}")
    if rank == 0:
        plot = training.plot_histories({m: h for m, _, _, h in rows}, out / "training.png")
        say(f"wrote {plot}")
    return 0


def cmd_tradeoff(args) -> int:
    factory, train, val, test = training_setup(args)
    say(f"trade-off: {args.method} at eps {', '.join(format(e, 'g') for e in args.eps)} "
          f"and standard training; PGD-{args.eval_steps} at each eps")  # fmt: skip
    result = training.tradeoff(
        factory, (train, test), args.eps, method=args.method, attack_steps=args.eval_steps,
        val_data=val, out=args.out, seed=args.seed, **fit_settings(args),
    )  # fmt: skip
    say(f"\ntest accuracy (%), clean and under PGD-{args.eval_steps} at each eps:")
    say(result.table())
    say(f"wrote {Path(args.out) / 'tradeoff.png'}, training.png and tradeoff.json")
    return 0


def cmd_sweep_run(args) -> int:
    sweep.run(sweep.load(args.file), device=args.device, budget=args.budget,
              progress=not args.no_progress)  # fmt: skip
    return 0


def cmd_sweep_report(args) -> int:
    if args.csv:
        cells = sweep.report.load_cells(args.source)[0]
        print(sweep.report.table(cells, "csv"), end="")
    else:
        print(sweep.write_report(args.source, args.out), end="")
    if args.out:
        say(f"written: {args.out}/results.md, results.csv, robust_accuracy.png")
    return 0


def add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="models x attacks x eps from a TOML file, torchrun-sharded, into SQLite"
    )
    actions = p.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="run every cell not yet in the store (resumable)")
    run.add_argument("file", help="the sweep file (TOML)")
    run.add_argument("--device", default=None, help="overrides [run] device (auto, cpu, cuda)")
    run.add_argument("--budget", default=None, help=(
        'overrides [run] budget ("30m", "1h30m", "none"): as many examples as fit'))  # fmt: skip
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch")
    run.set_defaults(func=cmd_sweep_run)
    report = actions.add_parser("report", help="tables and plots from a sweep's results")
    report.add_argument("source", help=(
        "the sweep file (its cells for the data and weights as they are now) or a results .db "
        "(every cell)"))  # fmt: skip
    report.add_argument("--out", help="also write results.md, results.csv and a PNG here")
    report.add_argument("--csv", action="store_true", help="print CSV instead of markdown")
    report.set_defaults(func=cmd_sweep_report)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """What every command takes: the data, the device, the seed, progress bars."""
    p.add_argument("--data", default="mnist-5k", help=(
        f"{' | '.join(data.NAMES)} | file.npz | an image folder (one sub-folder per class) | "
        "cifar-10-batches-bin"))  # fmt: skip
    p.add_argument("--image-size", type=POSITIVE, default=None, metavar="PIXELS",
                   help="resize an image folder's images to PIXELS x PIXELS")  # fmt: skip
    p.add_argument("--bounds", type=bounds_pair, default=(0.0, 1.0), metavar="LO,HI", help=(
        "the range of valid inputs (default 0,1); float .npz data in other units, e.g. "
        "normalised, with eps in those units"))  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads", type=POSITIVE, default=None,
        help="CPU threads for torch (default: torch's, one per core; fewer on a busy machine)",
    )  # fmt: skip


def add_training_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--model", help="module:factory of a fresh model (default: the small CNN)")
    p.add_argument("--model-kwargs", help="JSON keyword arguments for the factory")
    p.add_argument("--norm", choices=NORMS, default="linf")
    p.add_argument("--steps", type=POSITIVE, default=10, help="attack steps per training batch")
    p.add_argument("--alpha", type=RADIUS, default=None, help="attack step (method's default)")
    p.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term")
    p.add_argument(
        "--eps-warmup", type=COUNT, default=0, metavar="EPOCHS",
        help="ramp the training eps up from 0 over this many epochs",
    )  # fmt: skip
    p.add_argument("--epochs", type=POSITIVE, default=10)
    p.add_argument("--batch-size", type=POSITIVE, default=128)
    p.add_argument("--optimizer", choices=training.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=None, help="0.1 for SGD, 1e-3 otherwise")
    p.add_argument("--lr-schedule", choices=training.LR_SCHEDULES, default="constant")
    p.add_argument(
        "--weight-decay", type=float, nargs="+", default=[0.0], metavar="WD",
        help="one value, or START END annealed from START to END",
    )  # fmt: skip
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--patience", type=POSITIVE, default=None, help="early stopping (epochs)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training data held out")
    p.add_argument("--eval-steps", type=POSITIVE, default=20, help="PGD steps of the test attack")
    p.add_argument("--limit", type=COUNT, default=0, help="test on the first N images (0: all)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument(
        "--model",
        help="module:factory of your model (default: a small CNN trained on the data and cached)",
    )
    p.add_argument(
        "--model-kwargs", help="JSON keyword arguments for the factory, e.g. '{\"in_channels\": 1}'"
    )
    p.add_argument("--weights", help="state-dict file for --model (torch.load weights_only)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow weights files that need pickle (can run arbitrary code)",
    )
    p.add_argument(
        "--epochs", type=POSITIVE, default=DEFAULT_EPOCHS, help="epochs to train the default model"
    )


def add_suite_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--model", action="append", help=(
        "module:factory of a model; repeat for several (default: a standard and a PGD-trained "
        "small CNN, trained on the data and cached)"))  # fmt: skip
    p.add_argument("--weights", action="append", help="state-dict file per --model, in order")
    p.add_argument("--model-kwargs", action="append", help="JSON keyword arguments (one or each)")
    p.add_argument("--name", action="append", help="a report name per --model")
    p.add_argument("--trust-pickle", action="store_true", help="allow weights that need pickle")
    p.add_argument("--norm", choices=NORMS, default="linf", help="the main threat model's norm")
    p.add_argument(
        "--eps", type=RADIUS, default=None, help="main radius (default: the literature's)"
    )
    p.add_argument("--checks", help=f"comma-separated subset of: {', '.join(suite.CHECK_NAMES)}")
    p.add_argument("--tradeoff", help="a robustkern tradeoff --out directory to plot along")
    p.add_argument("--layer", help="module name for the unit analysis (default: penultimate)")
    p.add_argument("--budget", default=None, help=(
        "time for the whole run, e.g. 10m (the default), 90s, 1h30m, or none for every check at "
        "full size; each check's images and steps are chosen to fit"))  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a smoke run: --budget 1m")
    p.add_argument("--limit", type=COUNT, default=0, help="use the first N test images (0: all)")
    p.add_argument("--fresh", action="store_true", help="rerun every check (no resume)")
    p.add_argument("--out", default="report", help="directory for index.html, report.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustkern", description="Test and improve the robustness of models."
    )
    parser.add_argument("--version", action="version", version=robustkern.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "suite", help="the full robustness test suite: one report (index.html, report.json)"
    )
    add_suite_args(p)
    p.set_defaults(func=cmd_suite)
    add_sweep_parser(sub)
    p = sub.add_parser("attack", help="clean and robust accuracy of a model under an attack")
    add_model_args(p)
    p.add_argument("--attack", choices=tuple(evaluation.FUNCTIONS), default="pgd")
    p.add_argument("--norm", choices=NORMS, default="linf")
    p.add_argument("--eps", type=RADIUS, default=0.3, help="radius in input units (0..1)")
    p.add_argument("--steps", type=POSITIVE, help="iterations (10 for pgd, 100 for apgd, adam)")
    p.add_argument("--alpha", type=RADIUS, help="pgd's step size (2.5*eps/steps)")
    p.add_argument("--restarts", type=POSITIVE, help="pgd, apgd, square (1)")
    p.add_argument("--loss", choices=("ce", "margin", "dlr"), help="ce (default), margin, dlr")
    p.add_argument("--queries", type=POSITIVE, help="square's query budget (5000)")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--limit", type=COUNT, default=0, help="evaluate only the first N test images")
    p.add_argument("--budget", default=None, help="stop after the batch that fills it, e.g. 10m")
    p.set_defaults(func=cmd_attack)
    p = sub.add_parser(
        "evaluate",
        help="reliable robust accuracy: APGD-CE, targeted APGD-DLR and Square in a cascade",
    )
    add_model_args(p)
    p.add_argument("--norm", choices=NORMS, default="linf")
    p.add_argument("--eps", type=RADIUS, default=0.3, help="radius in input units (0..1)")
    p.add_argument("--preset", choices=tuple(evaluation.PRESETS), default="standard")
    p.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    p.add_argument(
        "--indicators", type=COUNT, default=0, metavar="N",
        help="also run the gradient-masking indicators on the first N test images",
    )  # fmt: skip
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument(
        "--limit", type=COUNT, default=1000, help="evaluate the first N test images (0: all)"
    )
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--budget", default=None, help="stop after the batch that fills it, e.g. 10m")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser(
        "spectral", help="per-layer Lipschitz upper bounds and their product (Szegedy's Table 5)"
    )
    add_model_args(p)
    p.add_argument("--input-shape", help="one input's shape, e.g. 3,32,32 (default: the data's)")
    p.add_argument(
        "--lower-bound", action="store_true", help="add power-iteration lower bounds (slower)"
    )
    p.add_argument("--exact", action="store_true", help="exact per-frequency SVD, not Gram bounds")
    p.add_argument("--json", help="also write the table to this JSON file")
    p.set_defaults(func=cmd_spectral)
    p = sub.add_parser(
        "fourier", help="Fourier heat map: error under single-frequency perturbations (Yin et al.)"
    )
    add_model_args(p)
    p.add_argument("--eps", type=RADIUS, default=4.0, help="L2 norm of the basis image per channel")
    p.add_argument("--limit", type=COUNT, default=1000, help="use the first N test images (0: all)")
    p.add_argument(
        "--batch-size", type=POSITIVE, default=None, help="images per forward (256 CPU, 4096 GPU)"
    )
    p.add_argument("--out", default="fourier", help="directory for heatmap.png and heatmap.json")
    p.set_defaults(func=cmd_fourier)
    p = sub.add_parser("corruptions", help="accuracy under common corruptions, 5 severities each")
    add_model_args(p)
    p.add_argument("--corruptions", help="comma-separated names (default: all)")
    p.add_argument("--table", choices=("auto", "cifar", "imagenet"), default="auto")
    p.add_argument("--baseline-model", help="module:factory of a baseline model for mCE")
    p.add_argument("--baseline-model-kwargs", help="JSON keyword arguments for the baseline")
    p.add_argument("--baseline-weights", help="state-dict file for --baseline-model")
    p.add_argument("--limit", type=COUNT, default=1000, help="use the first N test images (0: all)")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--out", default="corruptions", help="directory for the PNG and JSON")
    p.set_defaults(func=cmd_corruptions)
    p = sub.add_parser(
        "train", help="standard or adversarial training (pgd, fgsm-rs, trades); torchrun for DDP"
    )
    add_training_args(p)
    p.add_argument(
        "--method", default="pgd",
        help=f"one of {', '.join(training.METHODS)}, or several comma-separated to compare",
    )  # fmt: skip
    p.add_argument("--eps", type=RADIUS, default=0.3, help="training and test radius (0..1)")
    p.add_argument(
        "--checkpoint-every", type=POSITIVE, default=None, help="steps (default: epochs)"
    )
    p.add_argument("--out", default="runs/train", help="directory for checkpoints and results")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "tradeoff", help="the accuracy-robustness trade-off: one model per training eps"
    )
    add_training_args(p)
    p.add_argument("--method", choices=training.METHODS[1:], default="pgd")
    p.add_argument("--eps", type=RADIUS, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--out", default="runs/tradeoff", help="directory for results and PNGs")
    p.set_defaults(func=cmd_tradeoff)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"robustkern {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
