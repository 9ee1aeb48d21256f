"""What every check shares: the inputs of a suite run (``Suite``), what a check returns
(``Outcome``, or ``Skip`` when it needs something the user did not give), how it is described
(``Check``) and the image helpers the checks draw with."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robustkern._io import pyplot, save_figure
from robustkern.stats import GRADES

VERDICTS = (*GRADES, "info", "skipped", "error")  # a report entry's verdicts
Sizes = dict[str, int]  # a check's planned sizes by knob name ("images", "steps", ...)
OVERHEAD = 0.4  # seconds a check spends besides the model (figures, tables), for the planner


class Skip(Exception):
    """Raised by a check that cannot run with what was given; the message says what it needs."""


@dataclass
class Outcome:
    """What a check found: a verdict (pass | warn | fail | info), one line, the numbers behind
    it (``figures``), tables ``{"title", "columns", "rows"}`` and images ``{"path", "caption"}``."""

    verdict: str
    summary: str
    figures: dict = field(default_factory=dict)
    tables: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """A check of the suite, declared beside its function with ``@check``.

    ``run(suite, name, model, sizes)`` for per-model checks, ``run(suite, sizes)`` for checks
    across all models (``per_model=False``); ``sizes`` holds one value per knob. ``knobs``: what
    the time budget may shrink (``budget.Knob``); ``cost(suite, model_name, sizes)``: the
    estimated seconds; ``needs``: checks whose results this one reads (run first, per model);
    ``priority``: lower is kept first when the budget cannot fit every check; ``weight``: its
    share of the time left once every check has its least size."""

    name: str
    title: str
    rationale: str
    run: Callable[..., Outcome]
    per_model: bool = True
    knobs: dict = field(default_factory=dict)
    cost: Callable[..., float] = lambda suite, name, sizes: OVERHEAD
    needs: tuple[str, ...] = ()
    priority: int = 50
    weight: float = 0.2


REGISTRY: dict[str, Check] = {}


def check(name: str, title: str, rationale: str, **options) -> Callable:
    """Declares the decorated function as the suite check ``name`` (see ``Check``)."""

    def register(fn: Callable[..., Outcome]) -> Callable[..., Outcome]:
        REGISTRY[name] = Check(name, title, " ".join(rationale.split()), fn, **options)
        return fn

    return register


@dataclass
class Threat:
    """A norm and radius, with where the value comes from."""

    norm: str
    eps: float
    source: str


def literature_threats(shape: tuple[int, ...]) -> list[Threat]:
    """The literature's usual L-inf and L2 radii for images of this (C, H, W) shape in [0, 1]:
    grey images as MNIST (Madry et al.'s 0.3; L2 2.0 scaled by the pixel count's square root
    for other sizes), colour images up to 64 px as CIFAR-10 and larger ones as ImageNet
    (RobustBench's 8/255 and 0.5, 4/255 and 3.0)."""
    c, h, w = shape
    if c == 1:
        l2 = 2.0 * math.sqrt(h * w / 784)
        where = "MNIST (Madry et al. 2018; L2 as in Croce & Hein 2020"
        where += ")" if (h, w) == (28, 28) else ", scaled by sqrt(pixels / 784))"
        return [Threat("linf", 0.3, where), Threat("l2", round(l2, 4), where)]
    if max(h, w) <= 64:
        return [
            Threat("linf", 8 / 255, "CIFAR-10 (RobustBench)"),
            Threat("l2", 0.5, "CIFAR-10 (RobustBench)"),
        ]
    return [
        Threat("linf", 4 / 255, "ImageNet (RobustBench)"),
        Threat("l2", 3.0, "ImageNet (RobustBench)"),
    ]


@dataclass
class Suite:
    """Everything the checks see. ``x, y``: the test images (on ``device``); ``x_train,
    y_train`` and ``factory`` (a fresh, untrained model) are optional; ``threat`` is the main
    norm and eps, ``threats`` every (norm, eps) the white-box check runs; ``classes``: the
    models' output width; ``costs``: each model's measured seconds per image (``budget.Costs``)
    for the planner; ``results`` holds the report entries finished so far (typed access:
    ``result``)."""

    models: dict[str, torch.nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    threat: Threat
    threats: list[Threat]
    out: Path
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None
    factory: Callable[[], torch.nn.Module] | None = None
    tradeoff: object | None = None  # training.Tradeoff: a trade-off sweep's results
    layer: str | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    classes: int = 0
    costs: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def num_classes(self) -> int:
        """Classes the models can output (the test labels may not cover them all)."""
        return max(self.classes, int(self.y.max()) + 1)

    def images(self, sizes: Sizes) -> int:
        """A check's number of test images: its planned size, at most all there are."""
        return min(len(self.x), sizes["images"])

    def first(self, sizes: Sizes) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``images`` test images and labels of a check's sizes."""
        n = self.images(sizes)
        return self.x[:n], self.y[:n]

    def result(self, check: str, model: str | None):
        """The typed result of a finished check (``suite.results.RESULTS``), None if it did not
        run or did not succeed."""
        from robustkern.suite.results import RESULTS

        for entry in self.results:
            if (entry["name"], entry["model"]) == (check, model) and entry["error"] is None:
                return None if entry["verdict"] == "skipped" else RESULTS[check].from_figures(
                    entry["figures"])  # fmt: skip
        return None

    def generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(self.seed)

    def image(self, *parts: str, caption: str) -> tuple[Path, dict]:
        """(where to write images/<parts>.png, the report's entry for it with the path relative
        to the output directory)."""
        stem = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p) for p in parts if p)
        path = Path("images") / f"{stem}.png"
        return self.out / path, {"path": path.as_posix(), "caption": caption}

    def save(self, figure, *parts: str, caption: str) -> dict:
        """Writes a matplotlib figure as images/<parts>.png; returns its report entry."""
        path, entry = self.image(*parts, caption=caption)
        save_figure(figure, path)
        return entry


def percent(v: float) -> str:
    return f"{100 * v:.1f} %"


def image_grid(
    images: torch.Tensor,
    titles: list[str] | None = None,
    *,
    columns: int = 8,
    signed: bool | list[bool] = False,
    outlined: list[bool] | None = None,
    row_labels: list[str] | None = None,
    size: float = 1.1,
):
    """A figure of (N, C, H, W) images (C in {1, 3}) in a grid, with optional titles; ``signed``
    shows each image (or the chosen ones) centred on zero, grey = 0, at its own full scale
    (filters, differences); ``outlined``
    draws a red frame around chosen images; ``row_labels`` name the rows."""
    plt = pyplot()
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(size * columns + 0.8, size * rows + 0.3), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        img = images[k].detach().float().cpu()
        if signed is True or (isinstance(signed, list) and signed[k]):
            img = 0.5 + img / (2 * img.abs().max().clamp_min(1e-12))
        img = img.clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img[:3].permute(1, 2, 0).numpy())
        if titles:
            ax.set_title(titles[k], fontsize=7)
        if outlined and outlined[k]:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
        if row_labels and k % columns == 0:
            ax.set_ylabel(row_labels[k // columns], fontsize=7)
    fig.tight_layout()
    return fig


def smoothness(images: torch.Tensor) -> torch.Tensor:
    """Per image (N, C, H, W): the correlation between the image and a copy blurred with a 3x3
    binomial kernel (edges replicated). Natural images and smooth filters score near 1; white
    noise scores far lower (about 0.4)."""
    x = images.detach().float()
    kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    c = x.shape[1]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, kernel.expand(c, 1, 3, 3), groups=c)
    a = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    b = blurred.flatten(1) - blurred.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
