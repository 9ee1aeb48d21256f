"""``robustkern certify``: a certified lower bound on robust accuracy beside an attack's upper
bound on the same images (bound propagation or the Lipschitz margin), or randomised smoothing's
certified radii."""

from __future__ import annotations

import torch

import robustkern
from robustkern import certify
from robustkern.certify.smoothing import ABSTAIN
from robustkern.cli.attack import print_accuracies
from robustkern.cli.options import COUNT, POSITIVE, RADIUS, add_model, real
from robustkern.cli.setup import start
from robustkern.data import eps_text
from robustkern.evaluation import CERTIFY_METHODS
from robustkern.stats import percent_with_interval


def add_parser(sub) -> None:
    p = sub.add_parser(
        "certify", help="certified robust accuracy beside an attack's upper bound (the sandwich)"
    )
    add_model(p)
    p.add_argument(
        "--method", choices=(*CERTIFY_METHODS, "smoothing"), default="crown-ibp",
        help="ibp, crown (tight, slow on large nets), crown-ibp, lipschitz (L2 margin over the "
        "spectral bound), or smoothing (Cohen et al.: the smoothed classifier's L2 radii)",
    )  # fmt: skip
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--eps", type=RADIUS, default=0.1, help="radius in input units (0..1)")
    p.add_argument(
        "--attack", default="apgd", choices=("apgd", "pgd", "standard", "fast", "none"),
        help="the upper bound on the same images (default apgd; none: the certificate alone)",
    )  # fmt: skip
    p.add_argument("--sigma", type=RADIUS, default=0.25, help="smoothing: the noise's std")
    p.add_argument("--n0", type=POSITIVE, default=100, help="smoothing: selection samples")
    p.add_argument("--n", type=POSITIVE, default=10_000, help="smoothing: estimation samples")
    p.add_argument("--alpha", type=real, default=0.001, help="smoothing: failure rate")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--limit", type=COUNT, default=1000, help="the first N test images (0: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.method == "smoothing" and args.norm != "l2":
        raise ValueError("smoothing certifies L2 radii: use --norm l2")
    loaded = start(args)
    eps = eps_text(args.eps, args.bounds, args.norm)
    if args.method == "smoothing":
        return _smoothing(args, loaded, eps)
    print(f"certify: {args.method} at {args.norm} eps {eps}, beside {args.attack}")
    result = robustkern.evaluate(
        loaded.model, (loaded.x_test, loaded.y_test), args.attack, eps=args.eps, norm=args.norm,
        bounds=args.bounds, certify=args.method, batch_size=args.batch_size, device=args.device,
        generator=torch.Generator(args.device).manual_seed(args.seed),
        progress=not args.no_progress,
    )  # fmt: skip
    print_accuracies(result)
    return 0


def _smoothing(args, loaded, eps: str) -> int:
    print(f"certify: randomised smoothing, sigma {args.sigma:g}, n0 {args.n0}, n {args.n}, "
          f"alpha {args.alpha:g}; certified accuracy at L2 eps {eps}")  # fmt: skip
    x, y = loaded.x_test.to(args.device), loaded.y_test.to(args.device)
    prediction, radius = certify.smoothing(
        loaded.model, x, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
        batch_size=args.batch_size, bounds=args.bounds,
        generator=torch.Generator(args.device).manual_seed(args.seed),
    )  # fmt: skip
    n = len(y)
    abstained = int((prediction == ABSTAIN).sum())
    correct = prediction == y
    certified = int((correct & (radius > args.eps)).sum())
    print(f"smoothed accuracy: {percent_with_interval(int(correct.sum()), n)}, abstained on "
          f"{abstained} of {n}")  # fmt: skip
    print(f"certified accuracy at eps {eps}: {percent_with_interval(certified, n)}")
    if correct.any():
        print(f"median certified radius of the correct ones: {radius[correct].median():.4g}")
    return 0
