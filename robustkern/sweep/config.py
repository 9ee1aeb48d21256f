"""The sweep file (TOML): data, models, attacks, store and run settings, checked in full
before any work starts, and its expansion into cells (one model x attack x eps each) with a
configuration hash that identifies a cell in the store."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from robustkern import data as datasets
from robustkern import resume
from robustkern.attacks import NORMS
from robustkern.evaluation.presets import PRESETS
from robustkern.evaluation.single import SINGLE
from robustkern.timebudget import parse_budget

SPLITS = ("test", "train", "all")
SHARING = ("auto", "cascade", "batch", "none")
_POSITIVE_INT = ("int", 1)
# Per attack: the options a sweep may set and what each must be. Everything else is a mistake
# the user should hear about before the sweep starts.
ATTACK_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "fgsm": {},
    "pgd": {
        "steps": _POSITIVE_INT,
        "restarts": _POSITIVE_INT,
        "loss": ("ce", "margin"),
        "random_start": ("bool",),
        "sparsity": ("number", lambda v: 0 < v <= 1, "in (0, 1]"),
        "eot": _POSITIVE_INT,
    },
    "apgd": {
        "steps": _POSITIVE_INT,
        "restarts": _POSITIVE_INT,
        "loss": ("ce", "dlr"),
        "targeted": ("bool",),
        "n_targets": _POSITIVE_INT,
        "large_eps": ("bool",),
        "eot": _POSITIVE_INT,
    },
    "fab": {
        "steps": _POSITIVE_INT,
        "restarts": _POSITIVE_INT,
        "targeted": ("bool",),
        "n_targets": _POSITIVE_INT,
    },
    "adam": {
        "steps": _POSITIVE_INT,
        "lr": ("number", lambda v: v > 0, "> 0"),
        "random_start": ("number", lambda v: 0 <= v <= 1, "in [0, 1]"),
        "loss": ("ce", "margin"),
    },
    "square": {
        "queries": _POSITIVE_INT,
        "restarts": _POSITIVE_INT,
        "p_init": ("number", lambda v: 0 < v <= 1, "in (0, 1]"),
    },
    "standard": {"steps": _POSITIVE_INT, "restarts": _POSITIVE_INT, "queries": _POSITIVE_INT},
    "plus": {"steps": _POSITIVE_INT, "restarts": _POSITIVE_INT, "queries": _POSITIVE_INT},
    "rand": {"steps": _POSITIVE_INT, "restarts": _POSITIVE_INT, "eot": _POSITIVE_INT},
    "fast": {"steps": _POSITIVE_INT, "restarts": _POSITIVE_INT},
    "mi_fgsm": {"steps": _POSITIVE_INT, "decay": ("number", lambda v: v >= 0, ">= 0")},
    "di_fgsm": {
        "steps": _POSITIVE_INT,
        "decay": ("number", lambda v: v >= 0, ">= 0"),
        "diversity_prob": ("number", lambda v: 0 <= v <= 1, "in [0, 1]"),
    },
    "rays": {"queries": _POSITIVE_INT},
    "cw": {
        "steps": _POSITIVE_INT,
        "binary_steps": _POSITIVE_INT,
        "confidence": ("number", lambda v: v >= 0, ">= 0"),
        "lr": ("number", lambda v: v > 0, "> 0"),
    },
    "ddn": {"steps": _POSITIVE_INT, "gamma": ("number", lambda v: 0 < v < 1, "in (0, 1)")},
    "deepfool": {
        "steps": _POSITIVE_INT,
        "overshoot": ("number", lambda v: v >= 0, ">= 0"),
        "candidates": ("int", 2),
    },
    "hop_skip_jump": {"queries": _POSITIVE_INT},
    "sparse_rs": {
        "queries": _POSITIVE_INT,
        "p_init": ("number", lambda v: 0 < v <= 1, "in (0, 1]"),
    },
    "min-norm": {"steps": _POSITIVE_INT, "verify_steps": ("int", 0)},
}
# Each entry's norms; a single attack's come from evaluation.single.SINGLE.
# min-norm checks its curve with PGD, which has no L0.
_NORMS = {"min-norm": NORMS, **dict.fromkeys(PRESETS, NORMS)}
SWEEP_ATTACKS = tuple(ATTACK_OPTIONS)
# The minimum-norm entries: one run gives every example's distance, hence every eps at once.
DISTANCE_ATTACKS = (
    "min-norm",
    *(n for n in SWEEP_ATTACKS if n in SINGLE and SINGLE[n].kind == "minimum"),
)


class SweepError(ValueError):
    """A sweep file that cannot run: the message names the file, the entry and the key."""


@dataclass(frozen=True)
class DataSpec:
    name: str  # an embedded dataset's name or the path (.npz, folder) as written
    path: Path | None  # the .npz file or data folder, resolved against the sweep file
    split: str = "test"
    limit: int | None = None
    test_fraction: float = 0.2
    image_size: int | tuple[int, int] | None = None  # image folders: resize to this (H, W)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else self.name


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)
    weights: Path | None = None
    file: Path | None = None  # a TorchScript or torch.export (.pt2) file instead of a factory
    trust_pickle: bool = False


@dataclass(frozen=True)
class AttackSpec:
    label: str  # how tables name it; defaults to the attack's name
    name: str
    norm: str  # "linf", "l2" or "l1" ("" for "none")
    eps: tuple[float, ...]  # ascending
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    path: Path
    data: DataSpec
    models: tuple[ModelSpec, ...]
    attacks: tuple[AttackSpec, ...]
    store: Path
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    share: str = "auto"
    budget: float | None = None  # seconds for the pending cells (sizes n, see sweep.budget)


def load(path: str | Path) -> Sweep:
    """Reads and checks the sweep file at ``path`` (TOML: ``[data]``, ``[[models]]``,
    ``[[attacks]]``, ``[store]``, ``[run]``; relative paths are relative to the file) and
    returns the ``Sweep``; every problem is a SweepError naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SweepError(f"{path} is not valid TOML: {e}") from None
    where = _Where(path)
    where.keys(raw, "the file", {"data", "models", "attacks", "store", "run"})
    base = path.resolve().parent
    run = _table(raw, "run", where)
    where.keys(run, "[run]", {"seed", "batch_size", "device", "share", "budget"})
    store = _table(raw, "store", where)
    where.keys(store, "[store]", {"path"})
    models = _array(raw, "models", where)
    attacks = _array(raw, "attacks", where)
    sweep = Sweep(
        path=path,
        data=_data(_table(raw, "data", where, required=True), base, where),
        models=tuple(_model(m, i, base, where) for i, m in enumerate(models)),
        attacks=tuple(_attack(a, i, where) for i, a in enumerate(attacks)),
        store=base / where.typed(store.get("path", "results.db"), str, "[store] path"),
        seed=where.typed(run.get("seed", 0), int, "[run] seed"),
        batch_size=where.positive(run.get("batch_size", 256), "[run] batch_size"),
        device=where.typed(run.get("device", "auto"), str, "[run] device"),
        share=where.choice(run.get("share", "auto"), SHARING, "[run] share"),
        budget=budget_seconds(run.get("budget"), "[run] budget", where),
    )
    where.unique([m.name for m in sweep.models], "model name", "[[models]]")
    where.unique(
        [(a.label, a.norm) for a in sweep.attacks],
        "attack label and norm",
        "[[attacks]] (give repeated attacks a distinct label =)",
    )
    return sweep


def cell_config(
    sweep: Sweep, model: ModelSpec, attack: AttackSpec, eps: float, fingerprints: dict[str, str]
) -> dict:
    """Everything that defines one cell's measurement; its hash identifies the cell. Files
    appear relative to the sweep file (a moved or copied sweep folder keeps its cells) and by
    content: ``fingerprints`` holds hashes of the data ("data") and of each model's parameters
    (by model name)."""
    base = sweep.path.resolve().parent

    def plain(spec) -> dict:
        return {k: Path(os.path.relpath(v, base)).as_posix() if isinstance(v, Path) else v
                for k, v in asdict(spec).items()}  # fmt: skip

    data, spec = plain(sweep.data), plain(model)
    if data["image_size"] is None:  # absent when unset: older stores keep their cell hashes
        del data["image_size"]
    return {
        "data": {**data, "sha256": fingerprints["data"]},
        "model": {**spec, "sha256": fingerprints[model.name]},
        "attack": {
            "label": attack.label,
            "name": attack.name,
            "norm": attack.norm,
            "eps": eps,
            "params": attack.params,
        },
        "seed": sweep.seed,
    }


def budget_seconds(value, what: str, where: _Where | None = None) -> float | None:
    """Seconds from a budget as written ("30m", "1h30m", 600, "none": no budget); a SweepError
    naming ``what`` (and the file, given ``where``) otherwise."""
    try:
        if isinstance(value, bool):
            raise ValueError(f"budget must look like 600, 90s, 10m or 1h30m, got {value!r}")
        return parse_budget(value)
    except (ValueError, TypeError) as e:
        message = f"{what}: {e}"
        raise (where.fail(message) if where else SweepError(message)) from None


def config_hash(config: dict) -> str:
    """A cell's identity: the digest of its configuration (``resume.digest``)."""
    return resume.digest(config)


class _Where:
    """Error messages that name the file and the entry."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str) -> SweepError:
        return SweepError(f"{self.path}: {message}")

    def keys(self, table: dict, what: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"unknown key(s) {unknown} in {what}; allowed: {sorted(allowed)}")

    def typed(self, value, kind: type, what: str):
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{what} must be a {kind.__name__}, got {value!r}")
        return value

    def positive(self, value, what: str) -> int:
        if self.typed(value, int, what) < 1:
            raise self.fail(f"{what} must be >= 1, got {value}")
        return value

    def choice(self, value, choices: tuple, what: str):
        if value not in choices:
            raise self.fail(f"{what} must be one of {list(choices)}, got {value!r}")
        return value

    def unique(self, values: list, what: str, where: str) -> None:
        seen = {v for v in values if values.count(v) > 1}
        if seen:
            raise self.fail(f"{where}: each {what} must be unique, repeated: {sorted(seen)}")


def _table(raw: dict, key: str, where: _Where, required: bool = False) -> dict:
    if key not in raw:
        if required:
            raise where.fail(f"missing the [{key}] table")
        return {}
    if not isinstance(raw[key], dict):
        raise where.fail(f"{key} must be a table ([{key}]), got {raw[key]!r}")
    return raw[key]


def _array(raw: dict, key: str, where: _Where) -> list[dict]:
    entries = raw.get(key)
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise where.fail(f"needs at least one [[{key}]] entry")
    return entries


def _data(table: dict, base: Path, where: _Where) -> DataSpec:
    where.keys(table, "[data]", {"name", "path", "split", "limit", "test_fraction", "image_size"})
    if ("name" in table) == ("path" in table):
        raise where.fail(
            "[data] needs exactly one of name = (digits, mnist-5k) or "
            "path = (.npz file, image folder or cifar-10-batches-bin directory)"
        )
    limit = table.get("limit")
    fraction = table.get("test_fraction", 0.2)
    if not isinstance(fraction, float) or not 0 < fraction < 1:
        raise where.fail(f"[data] test_fraction must be a number in (0, 1), got {fraction!r}")
    path = None
    if "path" in table:
        path = base / where.typed(table["path"], str, "[data] path")
        if not (path.is_dir() or (path.suffix == ".npz" and path.is_file())):
            raise where.fail(
                f"[data] path: {path} is not an existing .npz file, image folder or "
                "cifar-10-batches-bin directory"
            )
    image_size = _image_size(table.get("image_size"), path, where)
    return DataSpec(
        name=where.typed(table.get("name", table.get("path")), str, "[data] name"),
        path=path,
        split=where.choice(table.get("split", "test"), SPLITS, "[data] split"),
        limit=None if limit is None else where.positive(limit, "[data] limit"),
        test_fraction=fraction,
        image_size=image_size,
    )


def _image_size(value, path: Path | None, where: _Where) -> int | tuple[int, int] | None:
    """[data] image_size: N or [H, W] in pixels, for an image folder only."""
    if value is None:
        return None
    sizes = value if isinstance(value, list) else [value]
    if len(sizes) != (2 if isinstance(value, list) else 1) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes
    ):
        raise where.fail(f"[data] image_size must be a positive int or [H, W], got {value!r}")
    kind = datasets.source_kind(str(path)) if path is not None else "embedded"
    if kind != "image-folder":
        raise where.fail(f"[data] image_size resizes image folders only; this data is {kind}")
    return tuple(sizes) if len(sizes) == 2 else sizes[0]


def _model(table: dict, i: int, base: Path, where: _Where) -> ModelSpec:
    what = f"[[models]] entry {i + 1}"
    where.keys(table, what, {"name", "factory", "kwargs", "weights", "file", "trust_pickle"})
    name = where.typed(table.get("name"), str, f"{what}: name")
    what = f"[[models]] {name!r}"
    if ("factory" in table) == ("file" in table):
        raise where.fail(f"{what} needs exactly one of factory = 'module:function' or file =")
    if "file" in table and ("weights" in table or "kwargs" in table):
        raise where.fail(f"{what}: a model file carries its weights; drop weights and kwargs")
    factory = table.get("factory")
    if factory is not None and ":" not in where.typed(factory, str, f"{what}: factory"):
        raise where.fail(f"{what}: factory must be module:function, got {factory!r}")
    files = {}
    for key in ("weights", "file"):
        if key in table:
            files[key] = base / where.typed(table[key], str, f"{what}: {key}")
            if not files[key].is_file():
                raise where.fail(f"{what}: {key} file {files[key]} does not exist")
    return ModelSpec(
        name=name,
        factory=factory,
        kwargs=where.typed(table.get("kwargs", {}), dict, f"{what}: kwargs"),
        weights=files.get("weights"),
        file=files.get("file"),
        trust_pickle=where.typed(table.get("trust_pickle", False), bool, f"{what}: trust_pickle"),
    )


def _attack(table: dict, i: int, where: _Where) -> AttackSpec:
    name = table.get("name")
    what = f"[[attacks]] entry {i + 1}"
    if name not in ATTACK_OPTIONS:
        raise where.fail(f"{what}: unknown attack {name!r}; known: {list(SWEEP_ATTACKS)}")
    options = ATTACK_OPTIONS[name]
    what = f"[[attacks]] {table.get('label', name)!r}"
    where.keys(table, what, {"name", "label", "norm", "eps", *options})
    if name == "none":
        if "eps" in table or "norm" in table:
            raise where.fail(f"{what}: the clean-accuracy entry 'none' takes no eps or norm")
        norm, eps = "", (0.0,)
    else:
        norms = SINGLE[name].norms if name in SINGLE else _NORMS[name]
        norm = where.choice(table.get("norm"), (*NORMS, "l0"), f"{what}: norm")
        if norm not in norms:
            raise where.fail(f"{what}: {name} attacks in {' or '.join(norms)}, not {norm!r}")
        eps = _eps_list(table.get("eps"), f"{what}: eps", where)
        if name in SINGLE and SINGLE[name].kind == "pixels" and any(e != int(e) for e in eps):
            raise where.fail(f"{what}: eps counts {name}'s changed pixels: whole numbers")
    params = {
        key: _option(table[key], spec, f"{what}: {key}", where)
        for key, spec in options.items()
        if key in table
    }
    label = where.typed(table.get("label", name), str, f"{what}: label")
    return AttackSpec(label=label, name=name, norm=norm, eps=eps, params=params)


def _eps_list(values, what: str, where: _Where) -> tuple[float, ...]:
    """Numbers or "k/255"-style strings, each finite and >= 0, no repeats; sorted ascending."""
    if not isinstance(values, list) or not values:
        raise where.fail(f"{what} must be a non-empty list, e.g. [0.1, 0.2] or ['8/255']")
    out = []
    for v in values:
        try:
            e = float(Fraction(v)) if isinstance(v, str) else float(v)
        except (ValueError, ZeroDivisionError, TypeError):
            e = math.nan
        if isinstance(v, bool) or not math.isfinite(e) or e < 0:
            raise where.fail(f"{what}: {v!r} is not a finite number >= 0")
        out.append(e)
    if len(set(out)) != len(out):
        raise where.fail(f"{what}: repeated values in {values}")
    return tuple(sorted(out))


def _option(value, spec: tuple, what: str, where: _Where):
    kind = spec[0]
    if kind == "int":
        if where.typed(value, int, what) < spec[1]:
            raise where.fail(f"{what} must be >= {spec[1]}, got {value}")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec[1](value):
            raise where.fail(f"{what} must be a number {spec[2]}, got {value!r}")
        value = float(value)
    elif kind == "bool":
        where.typed(value, bool, what)
    elif value not in spec:
        raise where.fail(f"{what} must be one of {list(spec)}, got {value!r}")
    return value
