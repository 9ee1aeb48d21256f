"""``robustkern spectral``: per-layer Lipschitz upper bounds (Szegedy et al.'s Table 5)."""

from __future__ import annotations

import torch

from robustkern import data, spectral
from robustkern._io import atomic_write_text
from robustkern.cli.options import add_model
from robustkern.cli.setup import load_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "spectral", help="per-layer Lipschitz upper bounds and their product (Szegedy's Table 5)"
    )
    add_model(p)
    p.add_argument("--input-shape", help="one input's shape, e.g. 3,32,32 (default: the data's)")
    p.add_argument(
        "--lower-bound", action="store_true", help="add power-iteration lower bounds (slower)"
    )
    p.add_argument("--exact", action="store_true", help="exact per-frequency SVD, not Gram bounds")
    p.add_argument("--json", help="also write the table to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
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
