"""Running a sweep: every cell's examples split over torch.distributed ranks (or one process),
the outcomes all-reduced, rank 0 recording them.

Work is done per *group*: one model and one attack entry with all of its eps values not yet in
the store. The data are cut into batches of ``batch_size`` examples (``batch_size // K`` for
K eps values under ``batch``, so that one call holds at most ``batch_size`` rows), the same
batches whatever the number of ranks; rank r takes batches r, r + world, ... and seeds each
batch's generator from the sweep seed, the group and the batch index, so every rank count
gives the same outcome for every example. Within a batch the eps values share work in one of
three ways:

* ``cascade`` (the CPU default): eps in ascending order, each attacking only the examples that
  survived the smaller ones; an example fooled at eps_k is counted fooled at every larger eps,
  because the adversarial point found lies inside those balls too (sound, and it skips them).
* ``batch`` (the GPU default): one attack call on every (example, eps) pair of the batch, eps
  given per sample to the fused projection ops; K small calls become one of K times the rows.
* ``none``: each eps on its own, as separate runs would do (for comparison).

All three report the same quantity: an example is robust at eps when it is classified correctly
and no adversarial point was found at that eps or a smaller one in the list. ``min-norm``
and the other minimum-norm attacks (cw, ddn, deepfool, hop_skip_jump) need no sharing: one run
gives each example's smallest adversarial distance, hence every eps at once (robust at eps when
that distance exceeds eps).

With ``[run] budget`` (or ``run(budget=)``) the run covers the first n examples, n chosen so
that the pending cells fit (``sweep.budget``); n then acts exactly as ``[data] limit = n``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import torch
import torch.distributed as dist

from robustkern import attacks, data, models
from robustkern._env import code_version, derived_seed, device_name, init_distributed, world
from robustkern._progress import progress_bar
from robustkern.checks import check_finite, check_model_fits, warn_unusual_eps
from robustkern.evaluation import PRESETS, outcome_fn
from robustkern.evaluation.single import SINGLE
from robustkern.modes import channels_last, eval_mode, model_device
from robustkern.sweep.budget import VERIFY_STEPS, examples_for_budget, with_limit
from robustkern.sweep.config import (
    DISTANCE_ATTACKS,
    AttackSpec,
    ModelSpec,
    Sweep,
    budget_seconds,
    config_hash,
)
from robustkern.sweep.grid import Cell, fingerprints, plan
from robustkern.sweep.store import Store


@dataclass
class Summary:
    """What a run did: cells computed now, cells found already recorded, wall time."""

    computed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    examples: int = 0  # per cell: the data's size after limit, or the n a budget chose
    lines: list[str] = field(default_factory=list)  # one result line per computed cell


def run(
    sweep: Sweep,
    *,
    device: str | None = None,
    budget: str | float | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Summary:
    """Runs every cell (model x attack x eps) of ``sweep`` not yet in its store.

    Args:
        sweep: a checked sweep file (``sweep.load``).
        device: "cpu", "cuda" or "auto" (this rank's GPU when there is one); overrides
            ``[run] device``.
        budget: seconds or a string ("30m"; "none": no budget) that overrides ``[run]
            budget``: each model is timed and the first n examples of every cell are run,
            n as many as fit.
        progress: a progress bar per group (rank 0).
        log: where the plan and the per-cell lines go (rank 0).

    Under torchrun (WORLD_SIZE > 1) the process group is initialised here if needed (nccl on
    CUDA, gloo on CPU), every rank takes its share of the batches and rank 0 writes the store.
    Everything that can be checked (data, models and their weights, models against the data)
    is checked on every rank before any attack runs. Returns the ``Summary`` (cells computed
    and skipped, seconds, the result lines)."""
    start = time.perf_counter()
    if budget is not None:
        sweep = replace(sweep, budget=budget_seconds(budget, "--budget"))
    own_group = init_distributed(device or sweep.device)[1]
    rank, world_size = world()
    dev = _device(device or sweep.device)
    say = log if rank == 0 else (lambda _: None)
    try:
        x, y, nets, groups = prepare(sweep, dev)
        finished = _finished_cells(sweep, rank)
        if sweep.budget is not None:
            n = examples_for_budget(sweep, x, y, nets, groups, finished, start, say)
            if n < len(x):  # exactly as [data] limit = n: other data, other cells
                sweep, x, y = with_limit(sweep, n), x[:n], y[:n]
                groups = plan(sweep, fingerprints(x, y, nets))
        summary = Summary(examples=len(x))
        total = sum(len(g) for g in groups)
        pending = [[c for c in g if c.hash not in finished] for g in groups]
        summary.skipped = total - sum(len(g) for g in pending)
        say(
            f"sweep {sweep.path}: {len(x)} examples, {len(sweep.models)} model(s), "
            f"{len(sweep.attacks)} attack(s): {total} cells, {summary.skipped} already in "
            f"{sweep.store}, {world_size} rank(s) on {dev}"
        )
        with Store(sweep.store) if rank == 0 else nullcontext() as store:
            for cells in filter(None, pending):
                _run_group(cells, nets, x, y, sweep, dev, store, summary, progress, say)
        summary.seconds = time.perf_counter() - start
        say(
            f"done: {summary.computed} cell(s) computed, {summary.skipped} skipped, "
            f"{summary.seconds:.1f} s; results in {sweep.store}"
        )
        return summary
    finally:
        if own_group:
            dist.destroy_process_group()


def _run_group(cells, nets, x, y, sweep, device, store, summary, progress, say) -> None:
    """One model and attack at the eps values still missing: evaluated, recorded by rank 0."""
    rank, world_size = world()
    attack = cells[0].attack
    rows, seconds, share = evaluate_group(
        nets[cells[0].model.name], attack, [c.eps for c in cells], x, y,
        batch_size=sweep.batch_size, seed=(sweep.seed, config_hash(cells[0].config)),
        share=sweep.share, device=device, progress=progress and rank == 0,
        desc=f"{cells[0].model.name} {attack.label} {attack.norm}",
    )  # fmt: skip
    if store is not None:
        _record(store, sweep, cells, rows, y, seconds, share, device, world_size)
    for cell, (_, robust) in zip(cells, rows[1], strict=True):
        summary.lines.append(_result_line(cell, rows[0], robust))
        say(summary.lines[-1])
    summary.computed += len(cells)


def prepare(sweep: Sweep, device: torch.device) -> tuple:
    """(x, y, models by name on ``device``, the grid): data and models loaded and checked
    against each other, and each cell's identity from their contents."""
    x, y = load_data(sweep)
    nets = {m.name: load_model(m, sweep.seed).to(device) for m in sweep.models}
    for name, net in nets.items():
        check_model_fits(net, x[:2].to(device), int(y.max()) + 1, f"model {name!r}")
    check_finite(x, f"the sweep's data ({sweep.data.name})")
    for attack in sweep.attacks:
        for e in attack.eps:
            warn_unusual_eps(e, attack.norm, (0.0, 1.0), x[0].numel())
    return x, y, nets, plan(sweep, fingerprints(x, y, nets))


def load_data(sweep: Sweep) -> tuple[torch.Tensor, torch.Tensor]:
    spec = sweep.data
    x_train, y_train, x_test, y_test = data.load(
        spec.source, test_fraction=spec.test_fraction, image_size=spec.image_size
    )
    x, y = {
        "test": (x_test, y_test),
        "train": (x_train, y_train),
        "all": (torch.cat([x_train, x_test]), torch.cat([y_train, y_test])),
    }[spec.split]
    return (x[: spec.limit], y[: spec.limit]) if spec.limit else (x, y)


def load_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """The model a [[models]] entry names (seeded, so that a factory without weights builds the
    same random model on every rank and every run)."""
    torch.manual_seed(seed)
    if spec.file is not None:
        return models.load_model_file(spec.file)
    return models.from_spec(
        spec.factory, spec.weights, kwargs=spec.kwargs, trust_pickle=spec.trust_pickle
    )


def evaluate_group(
    model: torch.nn.Module,
    attack: AttackSpec,
    eps: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    seed: object = 0,
    share: str = "auto",
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "",
) -> tuple[tuple, float, str]:
    """Outcomes of one model under one attack at each eps (ascending), all examples, sharded over
    the ranks and all-reduced: ((clean (N,), [(distance (N,) or None, robust (N,))] per eps),
    wall seconds, the sharing used). ``seed``: anything with a stable repr; each batch's
    generator is seeded from it and the batch's first index."""
    rank, world_size = world()
    device = device or model_device(model)
    share = _sharing(share, attack, device)
    n, k = len(x), len(eps)
    # rows: clean, robust at each eps, covered (each example exactly once over the ranks)
    table = torch.zeros(k + 2, n, dtype=torch.float64, device=device)
    distance = torch.zeros(n, dtype=torch.float64, device=device)
    # batch_size bounds the rows of one attack call: with "batch" each example brings K rows.
    per_batch = max(1, batch_size // k) if share == "batch" else batch_size
    starts = list(range(0, n, per_batch))[rank::world_size]
    start = time.perf_counter()
    with eval_mode(model), channels_last(model):
        for s in progress_bar(starts, desc=desc.strip(), disable=not progress, unit="batch"):
            rows = slice(s, min(s + per_batch, n))
            g = torch.Generator(device).manual_seed(derived_seed(seed, s))
            xb, yb = x[rows].to(device), y[rows].to(device)
            ok, fooled, dist_b = _attack_batch(model, attack, eps, xb, yb, g, share)
            table[0, rows] = ok.double()
            table[1 : k + 1, rows] = (ok & (fooled.cumsum(dim=0) == 0)).double()
            table[k + 1, rows] = 1
            if dist_b is not None:
                distance[rows] = dist_b.double()
    if world_size > 1:
        dist.all_reduce(table)
        dist.all_reduce(distance)
    if not bool((table[k + 1] == 1).all()):
        raise RuntimeError("sweep sharding error: an example was evaluated by no rank or twice")
    clean = table[0].bool().cpu()
    dists = distance.cpu() if attack.name in DISTANCE_ATTACKS else None
    per_eps = [(dists, table[1 + i].bool().cpu()) for i in range(k)]
    return (clean, per_eps), time.perf_counter() - start, share


def _attack_batch(model, attack: AttackSpec, eps: list[float], x, y, g, share: str):
    """(clean correct (B,), fooled (K, B) at each eps, min-norm distances (B,) or None)."""
    with torch.no_grad():
        ok = model(x).argmax(dim=1) == y
    k, b = len(eps), len(x)
    fooled = torch.zeros(k, b, dtype=torch.bool, device=x.device)
    idx = ok.nonzero().squeeze(1)
    by_distance = attack.name in DISTANCE_ATTACKS
    if attack.name == "none" or idx.numel() == 0:
        return ok, fooled, (torch.zeros(b, device=x.device) if by_distance else None)
    if by_distance:
        distance = (_min_norm_distances if attack.name == "min-norm" else _distances)(
            model, attack, eps, x, y, idx, g
        )
        eps_t = torch.tensor(eps, dtype=torch.float64, device=x.device)[:, None]
        return ok, ok & (distance[None] <= eps_t), distance
    if share == "batch":  # every (example, eps) pair in one call, eps per sample
        rows = idx.repeat(k)
        per_row = torch.tensor(eps, device=x.device).repeat_interleave(idx.numel())
        hit = _fooled(model, attack, x[rows], y[rows], per_row, g)
        fooled[:, idx] = hit.view(k, -1)
        return ok, fooled, None
    alive = ok.clone()
    for i, e in enumerate(eps):
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            fooled[i, idx] = _fooled(model, attack, x[idx], y[idx], e, g)
        if share == "cascade":
            alive &= ~fooled[i]
    return ok, fooled, None


def _distances(model, attack: AttackSpec, eps: list[float], x, y, idx, g):
    """Per example, the distance of the minimum-norm attack's point (0 if misclassified, inf
    if none was found)."""
    entry = SINGLE[attack.name]
    options = {**attack.params, "norm": attack.norm, "generator": g}
    options = {k: v for k, v in options.items() if entry.takes(k)}
    distance = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    _, d = entry.fn(model, x[idx], y[idx], **options, return_norms=True)
    distance[idx] = d.double()
    return distance


def _min_norm_distances(model, attack: AttackSpec, eps: list[float], x, y, idx, g):
    """Per example, the smallest radius at which an adversarial point was found (0 if
    misclassified, inf if none). FMN gives the distances; then, unless ``verify_steps = 0``,
    each example's claim to be robust at the largest grid eps below its distance is checked
    with PGD at that eps (one batch, eps per sample), stepping down the grid while PGD
    succeeds: FMN alone stops in local minima on some examples and overstates robustness."""
    params = dict(attack.params)
    verify_steps = params.pop("verify_steps", VERIFY_STEPS)
    distance = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    _, d = attacks.min_norm(model, x[idx], y[idx], norm=attack.norm, return_norms=True, **params)
    distance[idx] = d.double()
    grid = torch.tensor(eps, dtype=torch.float64, device=x.device)  # exact grid values
    claimed = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    claimed[idx] = True
    for _ in range(len(eps) if verify_steps else 0):
        below = (grid[None] < distance[:, None]).sum(dim=1)  # grid points claimed robust
        todo = (claimed & (below > 0)).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        e = grid[below[todo] - 1]
        _, hit = attacks.pgd(model, x[todo], y[todo], eps=e.float(), norm=attack.norm,
                             steps=verify_steps, generator=g, early_stop=True,
                             return_success=True)  # fmt: skip
        distance[todo[hit]] = e[hit]
        claimed[todo[~hit]] = False  # verified at its largest claimed eps
    return distance


def _fooled(model, attack: AttackSpec, x, y, eps, g) -> torch.Tensor:
    """Whether ``attack`` finds an adversarial point for each sample (eps: float or per sample)."""
    options = {"eps": eps, **attack.params, "norm": attack.norm}
    if attack.name in PRESETS or SINGLE[attack.name].takes("generator"):
        options["generator"] = g
    fn = outcome_fn(attack.name, options)[0]
    if fn is None:  # eps 0: the clean outcome, nothing to attack
        return torch.zeros(len(x), dtype=torch.bool, device=x.device)
    return fn(model, x, y)[1]


def _sharing(requested: str, attack: AttackSpec, device: torch.device) -> str:
    if attack.name == "none" or attack.name in DISTANCE_ATTACKS:
        return attack.name if attack.name in ("none", "min-norm") else "distance"  # one run
    if requested == "auto":
        return "batch" if device.type == "cuda" else "cascade"
    return requested


def _record(store, sweep, cells, rows, y, seconds, share, device, world_size) -> None:
    clean, per_eps = rows
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    group_id = uuid.uuid4().hex
    labels = y.tolist()
    ok = clean.tolist()
    entries = []
    for cell, (dists, robust) in zip(cells, per_eps, strict=True):
        n = len(clean)
        row = {
            "config_hash": cell.hash,
            "sweep": str(sweep.path.resolve()),
            "model": cell.model.name,
            "attack": cell.attack.label,
            "attack_name": cell.attack.name,
            "norm": cell.attack.norm,
            "eps": cell.eps,
            "n": n,
            "clean_correct": int(clean.sum()),
            "robust_correct": int(robust.sum()),
            "clean_accuracy": clean.float().mean().item() if n else None,
            "robust_accuracy": robust.float().mean().item() if n else None,
            "config": cell.config,
            "code_version": code_version(),
            "torch_version": torch.__version__,
            "device": device_name(device),
            "world_size": world_size,
            "share": share,
            "group_id": group_id,
            "seconds": seconds,
            "started_at": now,
            "finished_at": now,
        }
        d = dists.tolist() if dists is not None else [None] * n
        outcomes = [(i, labels[i], int(ok[i]), int(r), d[i]) for i, r in enumerate(robust.tolist())]
        entries.append((row, outcomes))
    store.record(entries)


def _result_line(cell: Cell, clean: torch.Tensor, robust: torch.Tensor) -> str:
    what = f"{cell.model.name} | " + (
        "clean" if cell.attack.name == "none"
        else f"{cell.attack.label} {cell.attack.norm} eps {cell.eps:g}"
    )  # fmt: skip
    if not len(clean):
        return f"{what}: no examples"
    text = f"{what}: clean {100 * clean.float().mean().item():.1f} %"
    return (
        text
        if cell.attack.name == "none"
        else f"{text}, robust {100 * robust.float().mean().item():.1f} %"
    )


def _finished_cells(sweep: Sweep, rank: int) -> set[str]:
    """The store's finished cells, read by rank 0 and sent to every rank (a store that cannot
    be opened stops every rank with rank 0's message)."""
    message: list = [None]
    if rank == 0:
        try:
            with Store(sweep.store) as store:
                message[0] = store.finished()
        except (ValueError, OSError) as e:
            message[0] = f"{type(e).__name__}: {e}"
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(message, src=0)
    if isinstance(message[0], str):
        raise ValueError(message[0])
    return message[0]


def _device(device: str) -> torch.device:
    """ "auto": this rank's GPU when there is one, else the CPU; "cuda" is this rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)
