"""``robustkern fourier``: the Fourier heat map (Yin et al.), resumable."""

from __future__ import annotations

import json
from pathlib import Path

from robustkern import fourier
from robustkern._io import atomic_write_text
from robustkern.cli.options import COUNT, POSITIVE, RADIUS, add_model
from robustkern.cli.setup import start


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fourier", help="Fourier heat map: error under single-frequency perturbations (Yin et al.)"
    )
    add_model(p)
    p.add_argument("--eps", type=RADIUS, default=4.0, help="L2 norm of the basis image per channel")
    p.add_argument("--limit", type=COUNT, default=1000, help="use the first N test images (0: all)")
    p.add_argument(
        "--batch-size", type=POSITIVE, default=None, help="images per forward (256 CPU, 4096 GPU)"
    )
    p.add_argument("--stride", type=POSITIVE, default=1,
                   help="every stride-th frequency only (large images)")  # fmt: skip
    p.add_argument("--out", default="fourier", help="directory for heatmap.png and heatmap.json")
    p.set_defaults(func=run)


def run(args) -> int:
    loaded = start(args)
    out = Path(args.out)
    h, w = loaded.x_test.shape[-2:]
    print(f"Fourier heat map: eps {args.eps:g} (L2 norm per channel), {h}x{w} frequencies"
          + (f", stride {args.stride}" if args.stride > 1 else ""))  # fmt: skip
    checkpoint = out / "heatmap.ckpt"
    error_map, counts = fourier.heatmap(
        loaded.model, loaded.x_test, loaded.y_test, eps=args.eps, bounds=args.bounds,
        batch_size=args.batch_size, seed=args.seed, device=args.device, checkpoint=checkpoint,
        progress=not args.no_progress, return_counts=True, stride=args.stride,
    )  # fmt: skip
    summary = fourier.summary(error_map, counts, eps=args.eps, n=len(loaded.x_test))
    print(f"mean error over frequencies {100 * summary['mean_error']:.2f} %")
    print(f"highest error {100 * summary['max_error']:.2f} % at frequency "
          f"{tuple(summary['worst_frequency'])}")  # fmt: skip
    print("radial profile (low -> high):",
          " ".join(f"{100 * v:.0f}" for v in summary["radial_profile"]))  # fmt: skip
    title = f"Fourier heat map, eps {args.eps:g}, n={len(loaded.x_test)}"
    print(f"wrote {fourier.plot_heatmap(error_map, out / 'heatmap.png', title=title)}")
    print(f"wrote {atomic_write_text(out / 'heatmap.json', json.dumps(summary))}")
    checkpoint.unlink(missing_ok=True)  # the results are written; nothing left to resume
    return 0
