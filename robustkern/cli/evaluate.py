"""``robustkern evaluate``: a preset cascade (AutoAttack's standard, plus or rand version, or our
quick fast), and the gradient-masking indicators on request."""

from __future__ import annotations

import json

import torch

import robustkern
from robustkern import evaluation
from robustkern._io import atomic_write_text
from robustkern.attacks import NORMS
from robustkern.cli.attack import print_accuracies
from robustkern.cli.options import COUNT, POSITIVE, RADIUS, add_model
from robustkern.cli.setup import start
from robustkern.data import eps_text
from robustkern.evaluation.presets import describe, stages


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="reliable robust accuracy: AutoAttack's versions (APGD-CE, APGD-T, FAB-T, Square)",
    )
    add_model(p)
    p.add_argument("--norm", choices=NORMS, default="linf")
    p.add_argument("--eps", type=RADIUS, default=0.3, help="radius in input units (0..1)")
    p.add_argument(
        "--preset", choices=tuple(evaluation.PRESETS), default="standard",
        help="the cascade (see --list-presets); a randomised model runs 'rand' instead of "
        "'standard' or 'plus', and says so",
    )  # fmt: skip
    p.add_argument(
        "--list-presets", action="store_true", help="print every preset's attacks and exit"
    )
    p.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    p.add_argument(
        "--certify", choices=evaluation.CERTIFY_METHODS,
        help="also a certified lower bound on the same images (L-inf or L2)",
    )  # fmt: skip
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
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_presets:
        print(describe())
        return 0
    loaded = start(args)
    attacks_run = ", ".join(name for name, _, _ in stages(args.preset, args.norm))
    print(f"evaluation: {args.preset} ({attacks_run}), {args.norm}, eps "
          f"{eps_text(args.eps, args.bounds, args.norm)}")  # fmt: skip
    result = robustkern.evaluate(
        loaded.model, (loaded.x_test, loaded.y_test), args.preset, eps=args.eps, norm=args.norm,
        generator=torch.Generator(args.device).manual_seed(args.seed),
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
        autocast=torch.bfloat16 if args.bf16 else None, bounds=args.bounds, budget=args.budget,
        certify=args.certify,
    )  # fmt: skip
    print_accuracies(result)
    report = {"data": args.data, "preset": args.preset, **result.to_dict()}
    if args.indicators:
        n = min(args.indicators, len(loaded.x_test))
        print(f"\ngradient-masking indicators on the first {n} test images:")
        found = evaluation.indicators(
            loaded.model, loaded.x_test[:n].to(args.device), loaded.y_test[:n].to(args.device),
            norm=args.norm, eps=args.eps, bounds=args.bounds, seed=args.seed,
        )  # fmt: skip
        for indicator in found:
            print(f"  {indicator}")
        report["indicators"] = [i.to_dict() for i in found]
    if args.json:
        print(f"wrote {atomic_write_text(args.json, json.dumps(report, indent=1))}")
    return 0
