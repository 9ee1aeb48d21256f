"""The single attacks that ``evaluate``, the command line and sweep files run by name, with the
norms each attacks in and what eps means to it.

Three kinds, by how an eps bounds them:

* "bounded": the attack takes eps and stays within it (PGD, APGD, Square, RayS, ...).
* "minimum": a minimum-norm attack (CW, DDN, DeepFool, FMN, HopSkipJump) runs unbounded and
  its point counts only where its distance is within eps (the rest keep x): one run answers
  every eps, which is how sweeps use it.
* "pixels": Sparse-RS reads eps as its budget of changed pixels (an integer).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustkern import attacks
from robustkern.attacks.deepfool import DEEPFOOL_NORMS
from robustkern.attacks.fab import FAB_NORMS
from robustkern.attacks.min_norm import MIN_NORMS
from robustkern.attacks.steps import broadcast
from robustkern.checks import check_eps


@dataclass(frozen=True)
class Single:
    fn: Callable
    norms: tuple[str, ...]  # the first is the default
    kind: str = "bounded"  # "bounded", "minimum" or "pixels" (the module's docstring)
    early_stop: bool = False  # takes early_stop (evaluate turns it on: same outcome, less work)

    def takes(self, option: str) -> bool:
        return option in inspect.signature(self.fn).parameters


SINGLE: dict[str, Single] = {
    "pgd": Single(attacks.pgd, attacks.NORMS, early_stop=True),
    "apgd": Single(attacks.apgd, attacks.NORMS, early_stop=True),
    "fab": Single(attacks.fab, FAB_NORMS),
    "adam": Single(attacks.adam_pgd, ("linf", "l2")),
    "square": Single(attacks.square, attacks.NORMS),
    "fgsm": Single(attacks.fgsm, ("linf",)),
    "mi_fgsm": Single(attacks.mi_fgsm, ("linf", "l2")),
    "di_fgsm": Single(attacks.di_fgsm, ("linf", "l2")),
    "rays": Single(attacks.rays, ("linf",)),
    "cw": Single(attacks.cw, ("l2",), "minimum"),
    "ddn": Single(attacks.ddn, ("l2",), "minimum"),
    "deepfool": Single(attacks.deepfool, DEEPFOOL_NORMS, "minimum"),
    "min_norm": Single(attacks.min_norm, MIN_NORMS, "minimum"),
    "hop_skip_jump": Single(attacks.hop_skip_jump, ("l2", "linf"), "minimum"),
    "sparse_rs": Single(attacks.sparse_rs, ("l0",), "pixels"),
}


def norm_for(name: str, norm: str | None) -> str:
    """The norm attack ``name`` runs in: ``norm`` checked against its norms, or its default."""
    entry = SINGLE[name]
    if norm is None:
        return entry.norms[0]
    if norm not in entry.norms:
        raise ValueError(f"{name} attacks in {' or '.join(entry.norms)}, not {norm!r}")
    return norm


def single_outcome(name: str, options: dict) -> Callable:
    """Attack ``name`` with ``options`` (eps in its kind's meaning, norm, the attack's own) as
    ``(model, x, y, **own) -> (x_adv, fooled)``; ``own`` replaces options for one call."""
    entry = SINGLE[name]
    norm = norm_for(name, options.get("norm"))
    options = {k: v for k, v in options.items() if k != "norm"}
    if entry.takes("norm"):
        options["norm"] = norm
    if entry.early_stop:
        options = {"early_stop": True, **options}
    if entry.kind != "bounded" and "eps" not in options:
        raise ValueError(f"{name} needs eps= (a radius; sparse_rs: pixels) to judge its points")
    if entry.kind == "minimum":
        return _within_eps(entry.fn, options)
    if entry.kind == "pixels":
        return _pixel_budget(entry.fn, options)
    return lambda model, x, y, **own: entry.fn(model, x, y, **(options | own), return_success=True)


def _within_eps(fn: Callable, options: dict) -> Callable:
    """A minimum-norm attack at a radius: its point where the distance is within eps, else x."""

    def run(model, x, y, **own):
        kwargs = options | own
        eps = check_eps(kwargs.pop("eps"), len(x))
        x_adv, dist = fn(model, x, y, **kwargs, return_norms=True)
        fooled = dist <= torch.as_tensor(eps, dtype=dist.dtype, device=dist.device)
        return torch.where(broadcast(fooled, x), x_adv, x), fooled

    return run


def _pixel_budget(fn: Callable, options: dict) -> Callable:
    """Sparse-RS with eps as its pixel budget."""
    pixels = options.pop("eps")
    if isinstance(pixels, bool) or not isinstance(pixels, (int, float)) or pixels != int(pixels):
        raise ValueError(
            f"{fn.__name__} reads eps as its number of changed pixels: one whole number, got "
            f"{pixels!r}"
        )
    options["pixels"] = int(pixels)
    return lambda model, x, y, **own: fn(model, x, y, **(options | own), return_success=True)
