"""``robustkern tradeoff``: the accuracy-robustness trade-off, one model per training eps."""

from __future__ import annotations

from pathlib import Path

from robustkern import training
from robustkern.cli.options import RADIUS, add_training
from robustkern.cli.setup import fit_config, say, training_setup


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tradeoff", help="the accuracy-robustness trade-off: one model per training eps"
    )
    add_training(p)
    # the methods trained at an eps that PGD at that eps judges (not gaussian's noise sigma)
    robust = tuple(m for m in training.METHODS if m not in ("standard", "gaussian"))
    p.add_argument("--method", choices=robust, default="pgd")
    p.add_argument("--eps", type=RADIUS, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--out", default="runs/tradeoff", help="directory for results and PNGs")
    p.set_defaults(func=run)


def run(args) -> int:
    factory, train, val, test = training_setup(args)
    say(f"trade-off: {args.method} at eps {', '.join(format(e, 'g') for e in args.eps)} "
        f"and standard training; PGD-{args.eval_steps} at each eps")  # fmt: skip
    result = training.tradeoff(
        factory, (train, test), args.eps, method=args.method, attack_steps=args.eval_steps,
        val_data=val, out=args.out, config=fit_config(args),
    )  # fmt: skip
    say(f"\ntest accuracy (%), clean and under PGD-{args.eval_steps} at each eps:")
    say(result.table())
    say(f"wrote {Path(args.out) / 'tradeoff.png'}, training.png and tradeoff.json")
    return 0
