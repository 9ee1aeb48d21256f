"""``run_suite``: every check on every model, each timed and isolated (a crash becomes that
check's error), the report rewritten after each check so a killed run keeps what it finished
and a rerun with the same models, data and settings picks up where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

import robustkern
from robustkern._io import atomic_write_text
from robustkern.data import eps_text
from robustkern.evaluation import eval_mode, model_device
from robustkern.suite import attacking, fitting, internals, shifts
from robustkern.suite.core import Check, Skip, Suite, Threat, literature_threats
from robustkern.suite.report import SCHEMA, json_safe, terminal_table, validate, write_html

CHECKS = (
    Check("capacity", "Capacity: parameters against training examples", (
        "The checklist's first rule: a model with more parameters than training examples can "
        "memorise its data instead of learning the task, and nothing in its test accuracy says "
        "which. Pass: at most one parameter per training example (a rule of thumb, so above it "
        "is a warning). The table lists every weight's norm: very large norms make large "
        "Lipschitz constants likely (see the spectral check)."), internals.capacity),
    Check("first_layer_filters", "First-layer filters", (
        "Filters that look like noise suggest a model that did not learn much from its data, or "
        "that fits high-frequency patterns a human would not use. Each filter gets two scores, "
        "the share of its spectral energy below half the Nyquist frequency and its correlation "
        "with a blurred copy of itself; a filter is noise-like when neither score exceeds the "
        "95th percentile of the layer's own random initialisations. Pass below 25 % noise-like, "
        "warn below 50 %."), internals.first_layer_filters),
    Check("generator", "The classifier as a generator", (
        "Gradient ascent on log p(class | x) from uniform noise (sign steps, and L2-normalised "
        "steps of the same length) shows what the model takes as evidence for each class. A "
        "robust model draws recognisable class features; a non-robust one becomes very "
        "confident on images that still look like noise (Nguyen et al.'s fooling images). Fail: "
        "an image reached > 95 % confidence while its smoothness stays below that of 95 % of "
        "the real test images."), internals.generator),
    Check("white_box", "Strong white-box attacks", (
        "Robust accuracy under the reliable evaluation's white-box stages (APGD-CE, then "
        "targeted APGD-DLR over 9 classes, each on the points still robust) at the literature's "
        "radius for this kind of data, in both norms. Pass: the model keeps at least half its "
        "clean accuracy; warn: at least 10 %; fail below. A standard model fails: that is the "
        "point of adversarial examples (Szegedy et al.)."), attacking.white_box),
    Check("masking", "Gradient-masking indicators", (
        "A robust accuracy is only believable if the attack behind it worked. These indicators "
        "(Carlini et al. 2019, AutoAttack's checks, Pintor et al. 2022) look for the symptoms "
        "of gradient masking: black-box, transfer, single-step or random attacks beating the "
        "white-box one, an unbounded attack short of 100 % error, robust accuracy that does not "
        "fall with eps, zero or random gradients. The verdict is the worst indicator's."),
        attacking.masking),
    Check("unbounded", "Unbounded attack and the robust-accuracy curve", (
        "With no bound on the perturbation every input can be made misclassified; an attack "
        "that cannot reach 100 % error is failing, and every robust accuracy it reports is "
        "suspect. The fast minimum-norm attack (FMN) finds each image's smallest adversarial "
        "perturbation, which gives the whole robust-accuracy-vs-eps curve from one run; the "
        "fixed-eps white-box result is marked on it as a cross-check. Fail: any image never "
        "flipped."), attacking.unbounded),
    Check("min_distortion", "Minimum distortion (Szegedy et al.)", (
        "Szegedy et al. measure a model's stability by the average minimum distortion "
        "sqrt(mean squared pixel change) that box-constrained L-BFGS needs to change its "
        "decision, and show that Gaussian noise of the same size barely hurts: adversarial "
        "examples are rare, specific directions, not a sign of general noise sensitivity."),
        attacking.min_distortion),
    Check("transfer", "Transfer between models", (
        "Adversarial examples crafted on one model fool others (Szegedy et al., Table 2), next "
        "to Gaussian noise of the same size. Examples transferred from another model must not "
        "beat a model's own white-box attack: if they do, the white-box attack is failing on "
        "it (the checklist's 'black box weaker than white box'). Fail when they do by more "
        "than one point."), attacking.transfer, per_model=False),
    Check("lipschitz", "Spectral analysis: per-layer Lipschitz bounds", (
        "Szegedy et al. (section 4.3) bound the network's sensitivity by the product of its "
        "layers' upper Lipschitz constants; conv layers' operator norms come from the Fourier "
        "transform of their kernels (certified upper bounds, stride and padding included). A "
        "large product does not prove instability, but it shows which layers could amplify a "
        "perturbation."), internals.lipschitz),
    Check("fourier", "Fourier heat map", (
        "Yin et al.: the test error when one Fourier basis image of fixed L2 norm is added to "
        "every test image, per frequency. Naturally trained models are robust to "
        "low-frequency and fragile to mid/high-frequency perturbations; adversarial training "
        "moves the fragility to low frequencies (fog, contrast)."), shifts.fourier_heatmap),
    Check("corruptions", "Common corruptions", (
        "Accuracy under natural shifts (noise, blur, contrast, brightness, fog, pixelation, "
        "low- and high-pass filtering) at five severities each (Hendrycks & Dietterich), with "
        "the corruption error relative to the first model when there are several. Robustness "
        "to adversarial perturbations and to these shifts do not come together for free."),
        shifts.common_corruptions),
    Check("trajectory", "PGD trajectory", (
        "The class probabilities at every PGD step for a few test images (the visual tour's "
        "step slider as small multiples): a non-robust model's confidence collapses within a "
        "few steps, a robust model's decays slowly or not at all."), attacking.trajectory),
    Check("randomisation", "Randomisation test", (
        "Zhang et al.: a network that fits random labels about as fast as the true ones has "
        "the capacity to memorise its training data, so its test accuracy comes from inductive "
        "bias, not from a lack of capacity. Steps to 95 % training accuracy on a subset, with "
        "true and with random labels, at a constant learning rate."), fitting.randomisation,
        per_model=False),
    Check("tradeoff", "Accuracy-robustness trade-off", (
        "Clean against robust accuracy for every model given (and every cell of a trade-off "
        "sweep): robustness usually costs clean accuracy (Tsipras et al.), and the scatter "
        "shows what each model paid."), attacking.tradeoff, per_model=False),
    Check("units", "Unit analysis (Szegedy et al. section 3)", (
        "Szegedy et al. found that the test images maximising a single unit of a layer are no "
        "more semantically alike than those maximising a random direction: the space, not the "
        "units, carries the meaning. Shown side by side, with how often the top images share "
        "a label."), internals.units),
)  # fmt: skip
CHECK_NAMES = tuple(c.name for c in CHECKS)


def run_suite(
    models: dict[str, torch.nn.Module],
    test_data: tuple[torch.Tensor, torch.Tensor],
    *,
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    factory: Callable[[], torch.nn.Module] | None = None,
    norm: str = "linf",
    eps: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    checks: Sequence[str] | None = None,
    tradeoff: str | Path | dict | None = None,
    layer: str | None = None,
    quick: bool = False,
    out: str | Path = "report",
    data_name: str = "custom",
    seed: int = 0,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Runs the checks (default: all of ``CHECK_NAMES``) on every model and writes
    ``out/report.json``, ``out/index.html`` and ``out/images/``; returns the report (see
    ``robustkern.suite.report`` for its schema).

    models: name -> model (eval mode is used and restored; models stay on their device, the
    data follows the first model). test_data: images in ``bounds`` and labels. train_data and
    factory (a function returning a fresh model) enable the capacity ratio and the
    randomisation test. eps: the main radius in ``norm`` (default: the literature's for the
    data's shape); the white-box check also runs the other norm at the literature's radius.
    tradeoff: a ``robustkern tradeoff`` output directory (or its tradeoff.json, or the loaded
    dict) to add to the trade-off scatter. layer: the module name for the unit analysis
    (default: the input of the last Linear). ``quick``: small budgets, a smoke run. A rerun
    into the same ``out`` with the same models, data and settings reuses the finished checks
    (``resume=False`` starts over)."""
    if not models:
        raise ValueError("models must name at least one model")
    chosen = CHECK_NAMES if checks is None else tuple(checks)
    unknown = sorted(set(chosen) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {', '.join(CHECK_NAMES)}")
    x, y = test_data
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"test images must be (N, C, H, W) with N labels, N > 0: {tuple(x.shape)}")
    device = model_device(next(iter(models.values())))
    threats = _threats(tuple(x.shape[1:]), norm, eps, bounds)
    out = Path(out)
    # Every check sees the models in eval mode, restored at the end: a check that called an
    # attack on a train-mode BatchNorm model would score batch statistics and update the
    # model's running ones.
    with ExitStack() as modes:
        for m in models.values():
            modes.enter_context(eval_mode(m))
        suite = Suite(
            models, x.to(device), y.to(device), threats[0], threats, out,
            x_train=None if train_data is None else train_data[0],
            y_train=None if train_data is None else train_data[1],
            factory=factory, tradeoff=_load_tradeoff(tradeoff), layer=layer, bounds=bounds,
            quick=quick, seed=seed,
        )  # fmt: skip
        report = {
            "schema": SCHEMA, "robustkern": robustkern.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fingerprint": _fingerprint(suite), "device": str(device), "seconds": 0.0,
            "quick": quick,
            "data": {"name": data_name, "test_images": len(x), "shape": list(x.shape[1:]),
                     "train_images": None if train_data is None else len(train_data[0]),
                     "classes": suite.num_classes},
            "models": [{"name": k, "parameters": sum(p.numel() for p in m.parameters())}
                       for k, m in models.items()],
            "threat": {"norm": threats[0].norm, "eps": threats[0].eps, "source": threats[0].source},
            "checks": suite.results,
        }  # fmt: skip
        finished = _finished(out, report["fingerprint"]) if resume else {}
        tasks = [(c, name) for c in CHECKS if c.name in chosen
                 for name in (models if c.per_model else [None])]  # fmt: skip
        start = time.perf_counter()
        bar = tqdm(tasks, desc="suite", disable=not progress, unit="check")
        for check, name in bar:
            bar.set_postfix_str(check.name + (f" ({name})" if name else ""))
            entry = finished.get((check.name, name)) or _run(check, suite, name)
            suite.results.append(entry)
            report["seconds"] = (
                time.perf_counter() - start + sum(e["seconds"] for e in finished.values())
            )
            atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=False))
    validate(report)
    write_html(report, out)
    return report


def _threats(shape, norm: str, eps: float | None, bounds) -> list[Threat]:
    """The main threat first (``norm`` at ``eps``, or at the literature's radius), then the
    literature's radius for the other norm. Radii are for inputs in [0, 1], scaled to
    ``bounds``."""
    width = float(bounds[1]) - float(bounds[0])
    known = [Threat(t.norm, t.eps * width, t.source) for t in literature_threats(shape)]
    if norm not in [t.norm for t in known]:
        raise ValueError(f"norm must be one of {[t.norm for t in known]}, got {norm!r}")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    main = next(t for t in known if t.norm == norm)
    if eps is not None:
        main = Threat(norm, float(eps), f"given (literature: {eps_text(main.eps, bounds)})")
    return [main, *(t for t in known if t.norm != norm)]


def _run(check: Check, suite: Suite, name: str | None) -> dict:
    entry = {"name": check.name, "title": check.title, "model": name, "verdict": "error",
             "summary": "", "rationale": check.rationale, "seconds": 0.0, "figures": {},
             "tables": [], "images": [], "error": None}  # fmt: skip
    start = time.perf_counter()
    try:
        outcome = check.run(suite, name, suite.models[name]) if name else check.run(suite)
        entry.update(verdict=outcome.verdict, summary=outcome.summary, figures=outcome.figures,
                     tables=outcome.tables, images=outcome.images)  # fmt: skip
    except Skip as e:
        entry.update(verdict="skipped", summary=f"not run: {e}")
    except Exception as e:  # one check's failure must not stop the others
        entry["summary"] = f"the check failed: {type(e).__name__}: {e}"
        entry["error"] = traceback.format_exc(limit=-4)
    entry["seconds"] = time.perf_counter() - start
    return json_safe(entry)


def _finished(out: Path, fingerprint: str) -> dict:
    """Entries of a previous run into ``out`` with the same fingerprint, except failures."""
    path = out / "report.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if old.get("fingerprint") != fingerprint:
        return {}
    return {(c["name"], c["model"]): c for c in old.get("checks", []) if c["verdict"] != "error"}


def _fingerprint(suite: Suite) -> str:
    """Hash of the models' names and weights, the data and every setting that changes a result."""
    h = hashlib.sha256()
    for name, model in suite.models.items():
        h.update(name.encode())
        for key, tensor in model.state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    for t in (suite.x, suite.y, suite.x_train, suite.y_train):
        if t is not None:
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    settings = [suite.threats, suite.bounds, suite.quick, suite.seed, suite.layer,
                suite.tradeoff, suite.factory is not None, robustkern.__version__]  # fmt: skip
    h.update(json.dumps(json_safe(settings), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _load_tradeoff(tradeoff) -> dict | None:
    if tradeoff is None or isinstance(tradeoff, dict):
        return tradeoff
    path = Path(tradeoff)
    path = path / "tradeoff.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"trade-off results {path} do not exist (run robustkern tradeoff)")
    try:
        loaded = json.loads(path.read_text())
        if not (loaded["config"]["eval_eps"] and isinstance(loaded["cells"], dict)):
            raise ValueError("no evaluation eps or cells")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a robustkern tradeoff.json: {e}") from None
    return loaded


def print_summary(report: dict, out: str | Path) -> None:
    print(terminal_table(report))
    print(
        f"\nreport: {Path(out) / 'index.html'} (open it in a browser), {Path(out) / 'report.json'}"
    )


def default_models(
    data: str, x_train: torch.Tensor, y_train: torch.Tensor, *, seed: int = 0, progress: bool = True
) -> dict[str, torch.nn.Module]:
    """A standard and a PGD-trained small CNN on ``data``'s training split (trained on first
    use, then cached; see ``robustkern.pretrained``)."""
    from robustkern import pretrained

    return {
        "standard": pretrained.small_cnn(data, x_train, y_train, seed=seed, progress=progress),
        "pgd-at": pretrained.small_cnn(
            data, x_train, y_train, seed=seed, progress=progress, **pretrained.ADVERSARIAL
        ),
    }
