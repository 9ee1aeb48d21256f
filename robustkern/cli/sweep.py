"""``robustkern sweep run | report``: models x attacks x eps from a TOML file, sharded with
torchrun, resumable, into SQLite; and its tables and plot."""

from __future__ import annotations

from robustkern import sweep
from robustkern.cli.options import add_run
from robustkern.cli.setup import say


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="models x attacks x eps from a TOML file, torchrun-sharded, into SQLite"
    )
    actions = p.add_subparsers(dest="action", required=True)
    run_parser = actions.add_parser("run", help="run every cell not yet in the store (resumable)")
    run_parser.add_argument("file", help="the sweep file (TOML)")
    run_parser.add_argument("--device", default=None,
                            help="overrides [run] device (auto, cpu, cuda)")  # fmt: skip
    run_parser.add_argument("--budget", default=None, help=(
        'overrides [run] budget ("30m", "1h30m", "none"): as many examples as fit'))  # fmt: skip
    add_run(run_parser)
    run_parser.set_defaults(func=run)
    report = actions.add_parser("report", help="tables and plots from a sweep's results")
    report.add_argument("source", help=(
        "the sweep file (its cells for the data and weights as they are now) or a results .db "
        "(every cell)"))  # fmt: skip
    report.add_argument("--out", help="also write results.md, results.csv and a PNG here")
    report.add_argument("--csv", action="store_true", help="print CSV instead of markdown")
    report.set_defaults(func=run_report)


def run(args) -> int:
    sweep.run(sweep.load(args.file), device=args.device, budget=args.budget,
              progress=not args.no_progress)  # fmt: skip
    return 0


def run_report(args) -> int:
    if args.csv:
        cells = sweep.report.load_cells(args.source)[0]
        print(sweep.report.table(cells, "csv"), end="")
    else:
        print(sweep.write_report(args.source, args.out), end="")
    if args.out:
        say(f"written: {args.out}/results.md, results.csv, robust_accuracy.png")
    return 0
