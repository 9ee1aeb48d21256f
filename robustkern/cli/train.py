"""``robustkern train``: standard or adversarial training of one model, or several methods
compared on the same data (``training.compare``); torchrun for DDP."""

from __future__ import annotations

from pathlib import Path

from robustkern import training
from robustkern.cli.options import POSITIVE, RADIUS, add_training
from robustkern.cli.setup import fit_config, say, training_setup
from robustkern.data import eps_text


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="standard, adversarial (pgd, fgsm-rs, trades), certified (ibp, crown-ibp) or "
        "noise (gaussian) training; torchrun for DDP",
    )
    add_training(p)
    p.add_argument(
        "--method", default="pgd",
        help=f"one of {', '.join(training.METHODS)}, or several comma-separated to compare",
    )  # fmt: skip
    p.add_argument("--eps", type=RADIUS, default=0.3, help="training and test radius (0..1)")
    p.add_argument(
        "--checkpoint-every", type=POSITIVE, default=None, help="steps (default: epochs)"
    )
    p.add_argument("--out", default="runs/train", help="directory for checkpoints and results")
    p.set_defaults(func=run)


def run(args) -> int:
    factory, train, val, test = training_setup(args)
    methods = args.method.split(",")
    config = fit_config(args).replace(checkpoint_every=args.checkpoint_every)
    say(f"training: {', '.join(methods)} at eps {eps_text(args.eps, args.bounds, args.norm)}, "
        f"{args.epochs} epochs -> {args.out}")  # fmt: skip
    result = training.compare(
        factory, (train, test), methods, args.eps, attack_steps=args.eval_steps, val_data=val,
        out=args.out, config=config,
    )  # fmt: skip
    for method, history in zip(result.methods, result.histories, strict=True):
        say(f"\n{method}:\n{history.table()}")
    say(f"\ntest accuracy (%), clean and PGD-{args.eval_steps} at eps "
        f"{eps_text(args.eps, args.bounds, args.norm)}:")  # fmt: skip
    say(result.table())
    where = Path(args.out)
    say(f"wrote {where / 'tradeoff.json'}, training.png; model.pt and result.json per run")
    return 0
