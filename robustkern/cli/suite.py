"""``robustkern suite``: every check of the suite on one or several models, within a time
budget: report/index.html, report.json and a terminal table."""

from __future__ import annotations

import functools
import json

import torch

from robustkern import models, suite
from robustkern.checks import check_model_fits
from robustkern.cli.options import COUNT, RADIUS, add_common
from robustkern.cli.setup import model_from_spec, test_split

DEFAULT_BUDGET, QUICK_BUDGET = "10m", "1m"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "suite", help="the full robustness test suite: one report (index.html, report.json)"
    )
    add_common(p)
    p.add_argument("--model", action="append", help=(
        "module:factory of a model; repeat for several (default: a standard and a PGD-trained "
        "small CNN, trained on the data and cached)"))  # fmt: skip
    p.add_argument("--weights", action="append", help="state-dict file per --model, in order")
    p.add_argument("--model-kwargs", action="append", help="JSON keyword arguments (one or each)")
    p.add_argument("--name", action="append", help="a report name per --model")
    p.add_argument("--trust-pickle", action="store_true", help="allow weights that need pickle")
    p.add_argument(
        "--norm", choices=("linf", "l2"), default="linf", help="the main threat model's norm"
    )
    p.add_argument(
        "--eps", type=RADIUS, default=None, help="main radius (default: the literature's)"
    )
    p.add_argument("--checks", help=f"comma-separated subset of: {', '.join(suite.CHECK_NAMES)}")
    p.add_argument("--tradeoff", help="a robustkern tradeoff --out directory to plot along")
    p.add_argument("--layer", help="module name for the unit analysis (default: penultimate)")
    p.add_argument("--budget", default=None, help=(
        f"time for the whole run, e.g. {DEFAULT_BUDGET} (the default), 90s, 1h30m, or none for "
        "every check at full size; each check's images and steps are chosen to fit"))  # fmt: skip
    p.add_argument("--quick", action="store_true", help=f"a smoke run: --budget {QUICK_BUDGET}")
    p.add_argument("--limit", type=COUNT, default=0, help="use the first N test images (0: all)")
    p.add_argument("--fresh", action="store_true", help="rerun every check (no resume)")
    p.add_argument("--out", default="report", help="directory for index.html, report.json")
    p.set_defaults(func=run)


def run(args) -> int:
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = test_split(args)
    channels, classes = x_train.shape[1], int(y_train.max()) + 1
    print(f"data: {args.data}, {len(x_train)} training and {len(x_test)} test images "
          f"{tuple(x_test.shape[1:])}")  # fmt: skip
    if args.model:  # the first model's factory gives the randomisation test its fresh models
        named = user_models(args, x_test, classes)
        kwargs = json.loads(_per_model(args.model_kwargs, args.model)[0] or "{}")
        factory = functools.partial(models.from_spec, args.model[0], None, kwargs=kwargs)
    else:
        named = suite.default_models(args.data, x_train, y_train, seed=args.seed,
                                     progress=not args.no_progress)  # fmt: skip
        factory = functools.partial(models.small_cnn, channels, classes)
    budget = QUICK_BUDGET if args.quick and args.budget is None else args.budget or DEFAULT_BUDGET
    report = suite.run_suite(
        {k: m.to(args.device) for k, m in named.items()}, (x_test, y_test),
        train_data=(x_train, y_train), factory=factory, norm=args.norm, eps=args.eps,
        checks=args.checks.split(",") if args.checks else None, tradeoff=args.tradeoff,
        layer=args.layer, bounds=args.bounds, budget=budget, out=args.out, data_name=args.data,
        seed=args.seed, progress=not args.no_progress, resume=not args.fresh,
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


def user_models(args, x: torch.Tensor, classes: int) -> dict[str, torch.nn.Module]:
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
