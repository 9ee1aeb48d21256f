"""``run_suite``: every check on every model, each timed and isolated (a crash becomes that
check's error), the report rewritten after each check so a killed run keeps what it finished
and a rerun with the same models, data and settings picks up where it stopped."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch

import robustkern
from robustkern import resume
from robustkern._io import atomic_write_text
from robustkern._progress import progress_bar
from robustkern.checks import check_finite, warn_unusual_eps
from robustkern.data import eps_text
from robustkern.modes import channels_last, eval_mode, model_device
from robustkern.suite import (  # noqa: F401  (each module declares its checks)
    certified,
    fitting,
    generator,
    indicators,
    inspection,
    minimum_norm,
    shifts,
    trajectory,
    transfer,
    white_box,
)
from robustkern.suite.budget import (
    QUICK_SECONDS,
    SAFETY,
    Plan,
    Task,
    allocate,
    measure_models,
    plan_table,
)
from robustkern.suite.core import REGISTRY, Skip, Suite, Threat, literature_threats
from robustkern.suite.report import SCHEMA, json_safe, terminal_table, validate, write_html
from robustkern.timebudget import Deadline, parse_budget
from robustkern.training.tradeoff import Tradeoff

# The report's order; each check is declared beside its function (``core.check``).
ORDER = (
    "capacity", "first_layer_filters", "generator", "white_box", "masking", "unbounded",
    "min_distortion", "certified", "transfer", "lipschitz", "fourier", "corruptions", "trajectory",
    "randomisation", "tradeoff", "units",
)  # fmt: skip
CHECKS = tuple(REGISTRY[name] for name in ORDER)
CHECK_NAMES = ORDER


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
    budget: float | str | None = None,
    quick: bool = False,
    out: str | Path = "report",
    data_name: str = "custom",
    seed: int = 0,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Runs the checks on every model and writes ``out/report.json``, ``out/index.html`` and
    ``out/images/`` after each check; returns the report (schema: ``robustkern.suite.report``).

    Args:
        models: name -> classifier returning logits; eval mode is used (on a CPU, CNNs run
            channels_last: ``modes.channels_last``) and each model's mode and layout
            restored after; models stay on their device and the data follow the first model.
        test_data: images (N, C, H, W) in ``bounds`` and int64 labels (N,).
        train_data: (images, labels) of the training set: the capacity ratio and, with
            ``factory`` (a function returning a fresh model), the randomisation test.
        norm, eps: the main threat model, eps in the inputs' units (default: the literature's
            radius for the data's shape); the white-box check also runs the other norm.
        bounds: (lo, hi), the range of valid inputs.
        checks: names from ``CHECK_NAMES`` (default: all); the checks they need run too.
        tradeoff: a ``robustkern tradeoff`` output directory (or its tradeoff.json, or the
            loaded dict) to add to the trade-off scatter.
        layer: the module name for the unit analysis (default: the input of the last Linear).
        budget: seconds, or a string such as "10m": the whole run (measuring included) is
            planned to fit, each check's images, steps and queries chosen from the measured
            cost of the models; a check that cannot fit its least size is skipped, saying so.
            None: every check at its full size. ``quick``: a 1-minute budget.
        out: the report's directory. data_name: how the report names the data. seed: every
            draw. progress: a progress bar and the printed plan.
        resume: a rerun into the same ``out`` with the same models, data and settings reuses
            the finished checks (and the time they took); False starts over.
    """
    suite, chosen = _prepare(models, test_data, train_data, factory, norm, eps, bounds, checks,
                             tradeoff, layer, out, seed)  # fmt: skip
    seconds = QUICK_SECONDS if quick and budget is None else parse_budget(budget)
    report = _new_report(suite, data_name, train_data, seconds, quick)
    with ExitStack() as modes:
        for m in models.values():
            modes.enter_context(eval_mode(m))
            modes.enter_context(channels_last(m))
        finished = _finished(suite.out, report["fingerprint"]) if resume else {}
        deadline = Deadline(seconds, spent=sum(e["seconds"] for e in finished.values()))
        tasks = _tasks(chosen, suite)
        todo = [t for t in tasks if (t.check.name, t.model) not in finished]
        if todo:
            randomisation = any(t.check.name == "randomisation" for t in todo)
            suite.costs.update(measure_models(suite, randomisation, seconds))
            report["costs"] = {k: vars(c) for k, c in suite.costs.items()}
            plans = allocate(todo, _plannable(deadline))
            if progress:
                print(plan_table(todo, plans, seconds, suite.costs))
        _run_tasks(suite, tasks, finished, report, deadline, progress)
    return report


def _run_tasks(suite: Suite, tasks: list, finished: dict, report: dict, deadline, progress):
    """Each task in order: reused if finished, else planned again on the time left and run;
    the report rewritten after each."""
    bar = progress_bar(tasks, desc="suite", disable=not progress, unit="check")
    for i, task in enumerate(bar):
        bar.set_postfix_str(task.check.name + (f" ({task.model})" if task.model else ""))
        entry = finished.get((task.check.name, task.model))
        if entry is None:
            rest = [t for t in tasks[i:] if (t.check.name, t.model) not in finished]
            entry = _run(task, suite, allocate(rest, _plannable(deadline))[0])
        suite.results.append(entry)
        _learn(suite, task)
        report["seconds"] = deadline.elapsed
        atomic_write_text(suite.out / "report.json", json.dumps(report, indent=1, allow_nan=False))
        write_html(report, suite.out)  # a killed run leaves a readable page of what finished
    validate(report)


def _plannable(deadline: Deadline) -> float | None:
    """The seconds the planner may share out: a safe share of what is left (None: no budget)."""
    return None if deadline.seconds is None else max(0.0, deadline.left) * SAFETY


def _prepare(models, test_data, train_data, factory, norm, eps, bounds, checks, tradeoff, layer,
             out, seed) -> tuple[Suite, tuple[str, ...]]:  # fmt: skip
    """The Suite the checks see, after checking every argument; and the chosen check names."""
    if not models:
        raise ValueError("models must name at least one model")
    chosen = CHECK_NAMES if checks is None else tuple(checks)
    unknown = sorted(set(chosen) - set(CHECK_NAMES))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {', '.join(CHECK_NAMES)}")
    x, y = test_data
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"test images must be (N, C, H, W) with N labels, N > 0: {tuple(x.shape)}")
    check_finite(x, "the test images")
    device = model_device(next(iter(models.values())))
    threats = _threats(tuple(x.shape[1:]), norm, eps, bounds)
    warn_unusual_eps(threats[0].eps, threats[0].norm, bounds, x[0].numel())
    suite = Suite(
        models, x.to(device), y.to(device), threats[0], threats, Path(out),
        x_train=None if train_data is None else train_data[0],
        y_train=None if train_data is None else train_data[1],
        factory=factory, tradeoff=_load_tradeoff(tradeoff), layer=layer, bounds=bounds,
        seed=seed, classes=_classes(models, x[:1].to(device)),
    )  # fmt: skip
    return suite, chosen


def _classes(models: dict, x: torch.Tensor) -> int:
    """The widest output of the models (the labels need not cover every class)."""
    widths = []
    for m in models.values():
        with eval_mode(m), torch.no_grad():
            widths.append(m(x.to(model_device(m))).shape[-1])
    return max(widths)


def _new_report(suite: Suite, data_name: str, train_data, seconds: float | None, quick: bool):
    x = suite.x
    return {
        "schema": SCHEMA, "robustkern": robustkern.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": _fingerprint(suite, seconds), "device": str(suite.device),
        "seconds": 0.0, "budget": seconds, "quick": quick,
        "data": {"name": data_name, "test_images": len(x), "shape": list(x.shape[1:]),
                 "train_images": None if train_data is None else len(train_data[0]),
                 "classes": suite.num_classes},
        "models": [{"name": k, "parameters": sum(p.numel() for p in m.parameters())}
                   for k, m in suite.models.items()],
        "threat": {"norm": suite.threat.norm, "eps": suite.threat.eps,
                   "source": suite.threat.source},
        "costs": {},
        "checks": suite.results,
    }  # fmt: skip


def _tasks(chosen: Sequence[str], suite: Suite) -> list[Task]:
    """One task per chosen check and model (one for checks across models), with every check
    a chosen one needs, in the report's order."""
    wanted, stack = set(), list(chosen)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(REGISTRY[name].needs)
    return [Task(c, name, suite) for c in CHECKS if c.name in wanted
            for name in (suite.models if c.per_model else [None])]  # fmt: skip


def _learn(suite: Suite, task: Task) -> None:
    """What a finished check teaches the planner: the white-box check's robust share."""
    result = suite.result("white_box", task.model) if task.check.name == "white_box" else None
    if result is not None:
        suite.costs[task.model].robust = result.robust_share


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
        main = Threat(norm, float(eps), f"given (literature: {eps_text(main.eps, bounds, norm)})")
    return [main, *(t for t in known if t.norm != norm)]


def _run(task: Task, suite: Suite, plan: Plan) -> dict:
    check, name = task.check, task.model
    entry = {"name": check.name, "title": check.title, "model": name, "verdict": "error",
             "summary": "", "rationale": check.rationale, "seconds": 0.0, "figures": {},
             "tables": [], "images": [], "error": None, "sizes": plan.sizes,
             "estimate": plan.seconds}  # fmt: skip
    start = time.perf_counter()
    try:
        if plan.skipped:
            raise Skip(plan.skipped)
        sizes = plan.sizes
        outcome = check.run(suite, name, suite.models[name], sizes) if name else check.run(
            suite, sizes)  # fmt: skip
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
    """Entries of a previous run into ``out`` with the same fingerprint, except failures (a
    report of other models, data or settings is started afresh: the JSON is rewritten)."""
    try:
        old = resume.read_json(out / "report.json", "suite report") or {}
    except ValueError:  # a damaged report: nothing to reuse, it is rewritten
        return {}
    if old.get("fingerprint") != fingerprint:
        return {}
    return {(c["name"], c["model"]): c for c in old.get("checks", []) if c["verdict"] != "error"}


def _fingerprint(suite: Suite, budget: float | None) -> str:
    """The models' names and weights, the data and every setting that changes a result."""
    settings = json_safe(
        [
            suite.threats,
            suite.bounds,
            budget,
            suite.seed,
            suite.layer,
            suite.factory is not None,
            robustkern.__version__,
        ]
    )
    data = [t for t in (suite.x, suite.y, suite.x_train, suite.y_train) if t is not None]
    return resume.digest(suite.models, data, settings, suite.tradeoff)[:24]


def _load_tradeoff(tradeoff) -> Tradeoff | None:
    """A trade-off sweep's results: a ``Tradeoff``, its loaded JSON, a tradeoff.json or the
    directory that holds one."""
    if tradeoff is None or isinstance(tradeoff, Tradeoff):
        return tradeoff
    if isinstance(tradeoff, dict):
        return Tradeoff.from_dict(tradeoff)
    path = Path(tradeoff)
    path = path / "tradeoff.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"trade-off results {path} do not exist (run robustkern tradeoff)")
    try:
        return Tradeoff.from_dict(resume.read_json(path, "trade-off results"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a robustkern tradeoff.json: {e}") from None


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
