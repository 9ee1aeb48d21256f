"""``robustkern corruptions``: accuracy under the common corruptions, mCE against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

from robustkern import corruptions
from robustkern._io import atomic_write_text
from robustkern.cli.options import COUNT, POSITIVE, add_model
from robustkern.cli.setup import model_from_spec, start


def add_parser(sub) -> None:
    p = sub.add_parser("corruptions", help="accuracy under common corruptions, 5 severities each")
    add_model(p)
    p.add_argument("--corruptions", help="comma-separated names (default: all)")
    p.add_argument("--table", choices=("auto", "cifar", "imagenet"), default="auto")
    p.add_argument("--baseline-model", help="module:factory of a baseline model for mCE")
    p.add_argument("--baseline-model-kwargs", help="JSON keyword arguments for the baseline")
    p.add_argument("--baseline-weights", help="state-dict file for --baseline-model")
    p.add_argument("--limit", type=COUNT, default=1000, help="use the first N test images (0: all)")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--out", default="corruptions", help="directory for the PNG and JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    loaded = start(args)
    baseline = None
    if args.baseline_model:
        baseline = model_from_spec(
            args.baseline_model,
            args.baseline_weights,
            args.baseline_model_kwargs,
            args.trust_pickle,
        ).to(args.device)
    names = args.corruptions.split(",") if args.corruptions else corruptions.CORRUPTIONS
    report = corruptions.corruption_report(
        loaded.model, loaded.x_test, loaded.y_test, corruptions=names, baseline=baseline,
        table=args.table, bounds=args.bounds, batch_size=args.batch_size, seed=args.seed,
        device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    print(report)
    out = Path(args.out)
    print(f"wrote {corruptions.plot_report(report, out / 'corruptions.png')}")
    print(f"wrote {atomic_write_text(out / 'corruptions.json', json.dumps(report.to_dict()))}")
    return 0
