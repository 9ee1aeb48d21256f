"""The command line's argument types and the options several commands share."""

from __future__ import annotations

import argparse
import math
from fractions import Fraction

from robustkern import data, training
from robustkern.attacks import NORMS

DEFAULT_EPOCHS = 10


def real(text: str) -> float:
    """A float, or a fraction as the literature writes radii: ``8/255``."""
    try:
        return float(text)
    except ValueError:
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(text) from None


def at_least(minimum: float, kind: type = int):
    """An argparse type for a number >= ``minimum``: a bad value stops the command before it
    loads data or trains a model, and a negative ``--limit`` cannot silently drop images."""

    def parse(text: str):
        value = kind(text)  # a ValueError becomes argparse's "invalid <kind> value"
        if math.isnan(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def bounds_pair(text: str) -> tuple[float, float]:
    """--bounds LO,HI: the range valid inputs live in (e.g. of normalised images)."""
    try:
        lo, hi = (real(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LO,HI, got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"needs LO < HI, got {text!r}")
    return lo, hi


COUNT = at_least(0)  # --limit, --indicators, --eps-warmup: 0 means all or none
POSITIVE = at_least(1)  # steps, restarts, batch sizes, epochs
RADIUS = at_least(0.0, real)  # eps and step sizes, 0.03 or 8/255 (inf: the attacks decide)


def add_common(p: argparse.ArgumentParser) -> None:
    """What every command that reads data takes: the data, the device, the seed, threads."""
    p.add_argument("--data", default="mnist-5k", help=(
        f"{' | '.join(data.NAMES)} | file.npz | an image folder (one sub-folder per class) | "
        "cifar-10-batches-bin"))  # fmt: skip
    p.add_argument("--image-size", type=POSITIVE, default=None, metavar="PIXELS",
                   help="resize an image folder's images to PIXELS x PIXELS")  # fmt: skip
    p.add_argument(
        "--bounds",
        type=bounds_pair,
        default=(0.0, 1.0),
        metavar="LO,HI",
        help=(
            "the range of valid inputs (default 0,1); float .npz data in other units, e.g. "
            "normalised, with eps in those units; write --bounds=-0.42,2.82 when LO is negative"
        ),
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    add_run(p)


def add_run(p: argparse.ArgumentParser) -> None:
    """Progress bars and threads: what every command takes."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads", type=POSITIVE, default=None,
        help="CPU threads for torch (default: torch's, one per core; fewer on a busy machine)",
    )  # fmt: skip


def add_model(p: argparse.ArgumentParser) -> None:
    """One model to test: module:factory (+ weights), else the cached default small CNN."""
    add_common(p)
    p.add_argument(
        "--model",
        help="module:factory of your model (default: a small CNN trained on the data and cached)",
    )
    p.add_argument(
        "--model-kwargs", help="JSON keyword arguments for the factory, e.g. '{\"in_channels\": 1}'"
    )
    p.add_argument("--weights", help="state-dict file for --model (torch.load weights_only)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow weights files that need pickle (can run arbitrary code)",
    )
    p.add_argument(
        "--epochs", type=POSITIVE, default=DEFAULT_EPOCHS, help="epochs to train the default model"
    )


def add_training(p: argparse.ArgumentParser) -> None:
    """train and tradeoff: the model to train and fit's options."""
    add_common(p)
    p.add_argument("--model", help="module:factory of a fresh model (default: the small CNN)")
    p.add_argument("--model-kwargs", help="JSON keyword arguments for the factory")
    p.add_argument("--norm", choices=NORMS, default="linf")
    p.add_argument("--steps", type=POSITIVE, default=10, help="attack steps per training batch")
    p.add_argument("--alpha", type=RADIUS, default=None, help="attack step (method's default)")
    p.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term")
    p.add_argument(
        "--eps-warmup", type=COUNT, default=0, metavar="EPOCHS",
        help="ramp the training eps up from 0 over this many epochs",
    )  # fmt: skip
    p.add_argument(
        "--kappa", type=float, default=None,
        help="ibp, crown-ibp: final weight of the natural loss (0.5 and 0)",
    )  # fmt: skip
    p.add_argument(
        "--ramp", type=float, nargs=2, default=None, metavar=("START", "LENGTH"),
        help="ibp, crown-ibp: the eps and kappa ramp's start and length in epochs",
    )  # fmt: skip
    p.add_argument("--epochs", type=POSITIVE, default=10)
    p.add_argument("--batch-size", type=POSITIVE, default=128)
    p.add_argument("--optimizer", choices=training.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=None, help="0.1 for SGD, 1e-3 otherwise")
    p.add_argument("--lr-schedule", choices=training.LR_SCHEDULES, default="constant")
    p.add_argument(
        "--weight-decay", type=float, nargs="+", default=[0.0], metavar="WD",
        help="one value, or START END annealed from START to END",
    )  # fmt: skip
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--patience", type=POSITIVE, default=None, help="early stopping (epochs)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training data held out")
    p.add_argument("--eval-steps", type=POSITIVE, default=20, help="PGD steps of the test attack")
    p.add_argument(
        "--limit", type=COUNT, default=0, help="test on the first N test images (0: all)"
    )
