"""``robustkern attack``: clean and robust accuracy of a model under one attack."""

from __future__ import annotations

import inspect

import torch

import robustkern
from robustkern import evaluation
from robustkern.attacks import NORMS
from robustkern.attacks.apgd import APGD_LOSSES
from robustkern.attacks.losses import LOSSES
from robustkern.cli.options import COUNT, POSITIVE, RADIUS, add_model
from robustkern.cli.setup import start
from robustkern.data import eps_text
from robustkern.evaluation.single import SINGLE, norm_for

# Flags that go to the attack function when it takes them.
ATTACK_FLAGS = ("steps", "restarts", "loss", "alpha", "queries", "eot")


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="clean and robust accuracy of a model under an attack")
    add_model(p)
    p.add_argument(
        "--attack", choices=tuple(SINGLE), default="pgd",
        help="bounded: pgd apgd fab adam square rays fgsm mi_fgsm di_fgsm; minimum-norm, "
        "counted where the distance is within eps: cw ddn deepfool min_norm hop_skip_jump; "
        "sparse_rs, eps its number of changed pixels (default pgd)",
    )  # fmt: skip
    p.add_argument("--norm", choices=(*NORMS, "l0"), help="default: the attack's first norm")
    p.add_argument("--eps", type=RADIUS, default=0.3,
                   help="radius in input units (0..1); sparse_rs: pixels")  # fmt: skip
    p.add_argument("--steps", type=POSITIVE, help="iterations (10 for pgd, 100 for apgd, adam)")
    p.add_argument("--alpha", type=RADIUS, help="pgd's step size (2.5*eps/steps)")
    p.add_argument("--restarts", type=POSITIVE, help="pgd, apgd, square (1)")
    p.add_argument("--loss", choices=("ce", "margin", "dlr"), help="ce (default), margin, dlr")
    p.add_argument("--queries", type=POSITIVE, help="black-box query budget (square 5000)")
    p.add_argument(
        "--eot", type=POSITIVE,
        help="pgd, apgd, fab: gradient passes averaged per step, for a randomised model (1)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--limit", type=COUNT, default=0, help="evaluate only the first N test images")
    p.add_argument("--budget", default=None, help="stop after the batch that fills it, e.g. 10m")
    p.set_defaults(func=run)


def run(args) -> int:
    kwargs = options(args)  # before the data: a flag the attack does not take stops here
    loaded = start(args)
    budget = "".join(f", {k} {kwargs[k]}" for k in ATTACK_FLAGS if k in kwargs)
    eps = eps_text(args.eps, args.bounds, kwargs["norm"])
    print(f"attack: {args.attack} ({kwargs['norm']}, eps {eps}{budget})")
    result = robustkern.evaluate(
        loaded.model, (loaded.x_test, loaded.y_test), args.attack, batch_size=args.batch_size,
        device=args.device, progress=not args.no_progress, budget=args.budget, **kwargs,
    )  # fmt: skip
    print_accuracies(result)
    return 0


def options(args) -> dict:
    """The chosen attack's keyword arguments: each flag it takes, given or at the function's
    default (so the printed budget is the one that runs); a flag it does not take, a norm it
    does not attack in or an unknown loss stop here, before a model is loaded or trained."""
    params = inspect.signature(evaluation.FUNCTIONS[args.attack]).parameters
    kwargs: dict = {"eps": args.eps, "bounds": args.bounds}
    for flag in ATTACK_FLAGS:
        value = getattr(args, flag)
        if flag not in params and value is not None:
            raise ValueError(f"--attack {args.attack} takes no --{flag}")
        if flag in params:
            kwargs[flag] = params[flag].default if value is None else value
    kwargs["norm"] = norm_for(args.attack, args.norm)
    if "generator" in params:
        kwargs["generator"] = torch.Generator(args.device).manual_seed(args.seed)
    losses = APGD_LOSSES if args.attack == "apgd" else LOSSES
    if kwargs.get("loss", "ce") not in losses:
        raise ValueError(f"--attack {args.attack} takes --loss {' or '.join(losses)}")
    return {k: v for k, v in kwargs.items() if v is not None}


def print_accuracies(result: evaluation.Evaluation) -> None:
    """Clean and robust accuracy with their 95 % intervals, and a budget's early stop."""
    if result.stopped_early:
        print(f"the time budget stopped the evaluation after {result.n} of {result.of} images")
    print(f"clean accuracy:  {result.interval_text('clean')}  (95 % interval)")
    for name, acc in result.after_each_attack():
        print(f"  after {name:<8} {100 * acc:6.2f} %  ({result.broken_by[name]} points broken)")
    print(f"robust accuracy: {result.interval_text('robust')}  ({result.seconds:.1f} s)")
    for line in (result.note, result.randomized_text()):
        if line:
            print(line)
    if result.certify:
        status = result.sandwich()
        print(f"certified accuracy: {result.interval_text('certified')}  ({result.certify}; "
              f"{status['verified']} verified, {status['open']} open, {status['attacked']} "
              "attacked)")  # fmt: skip
