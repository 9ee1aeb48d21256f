"""The evaluation presets, as data: AutoAttack's versions by name, with the attacks, budgets,
restarts and target counts its ``AutoAttack.set_version`` sets per norm (Croce & Hein, ICML
2020; the L1 settings from "Mind the box", ICML 2021), and our quick "fast".

Each preset maps a norm to its stages, run as a cascade (each stage attacks only the points
every earlier one left robust): ``(name shown, attack, options)``. Every APGD and FAB stage runs
100 iterations, as AutoAttack's do.
"""

from __future__ import annotations

from robustkern.attacks import NORMS

_APGD, _FAB = {"steps": 100, "restarts": 1}, {"steps": 100, "restarts": 1}
_SQUARE = ("square", "square", {"queries": 5000, "restarts": 1, "p_init": 0.8})


def _standard(norm: str) -> tuple:
    if norm == "l1":  # 5 restarts of APGD-CE and 5 targets, both on the 3/2/1 eps schedule
        apgd_ce = {**_APGD, "loss": "ce", "restarts": 5, "large_eps": True}
        apgd_t = {**_APGD, "loss": "dlr", "targeted": True, "n_targets": 5, "large_eps": True}
    else:
        apgd_ce = {**_APGD, "loss": "ce"}
        apgd_t = {**_APGD, "loss": "dlr", "targeted": True, "n_targets": 9}
    return (
        ("apgd-ce", "apgd", apgd_ce),
        ("apgd-t", "apgd", apgd_t),
        ("fab-t", "fab", {**_FAB, "targeted": True, "n_targets": 9}),
        _SQUARE,
    )


def _plus(norm: str) -> tuple:
    plain = {"large_eps": False} if norm == "l1" else {}  # AutoAttack sets it for "standard" only
    return (
        ("apgd-ce", "apgd", {**_APGD, **plain, "loss": "ce", "restarts": 5}),
        ("apgd-dlr", "apgd", {**_APGD, **plain, "loss": "dlr", "restarts": 5}),
        ("fab", "fab", {**_FAB, "restarts": 5}),
        _SQUARE,
        ("apgd-t", "apgd", {**_APGD, **plain, "loss": "dlr", "targeted": True, "n_targets": 9}),
        ("fab-t", "fab", {**_FAB, "targeted": True, "n_targets": 9}),
    )


def _rand(norm: str) -> tuple:
    plain = {"large_eps": False} if norm == "l1" else {}
    return (
        ("apgd-ce", "apgd", {**_APGD, **plain, "loss": "ce", "eot": 20}),
        ("apgd-dlr", "apgd", {**_APGD, **plain, "loss": "dlr", "eot": 20}),
    )


def _fast(norm: str) -> tuple:
    return (
        ("apgd-ce", "apgd", {"loss": "ce"}),
        ("apgd-t", "apgd", {"loss": "dlr", "targeted": True, "n_targets": 3}),
    )


PRESETS: dict[str, dict[str, tuple]] = {
    name: {norm: build(norm) for norm in NORMS}
    for name, build in (("standard", _standard), ("plus", _plus), ("rand", _rand), ("fast", _fast))
}
ABOUT = {
    "standard": "AutoAttack's standard version: the reliable evaluation papers report",
    "plus": "AutoAttack's plus version: more restarts and both targeted and untargeted FAB",
    "rand": "AutoAttack's rand version, for randomised models: the expectation over 20 passes",
    "fast": "robustkern's quick check during development (not AutoAttack's)",
}


def stages(preset: str, norm: str) -> tuple:
    """The (name, attack, options) stages of ``preset`` for ``norm``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return PRESETS[preset][norm]


def describe() -> str:
    """The presets as a table a person can read (``robustkern evaluate --list-presets``)."""
    lines = []
    for name, per_norm in PRESETS.items():
        lines.append(f"{name}: {ABOUT[name]}")
        for norm, table in per_norm.items():
            lines.append(f"  {norm}:")
            for stage, _, options in table:
                text = ", ".join(f"{k}={v}" for k, v in options.items())
                lines.append(f"    {stage:<9} {text}")
    return "\n".join(lines)
