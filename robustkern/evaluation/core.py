"""Clean and robust accuracy of a model under an attack or a cascade of attacks, batch by batch."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from robustkern import modes
from robustkern._progress import progress_bar
from robustkern.certify.lipschitz import lipschitz_bound, lipschitz_verified
from robustkern.certify.propagation import METHODS as BOUND_METHODS
from robustkern.certify.propagation import verified as certify_verified
from robustkern.checks import (
    check_choice,
    check_finite,
    check_label_tensor,
    check_logits,
    label_range,
    warn_if_probabilities,
    warn_unusual_eps,
)
from robustkern.evaluation.presets import PRESETS, stages
from robustkern.evaluation.single import SINGLE, norm_for, single_outcome
from robustkern.modes import eval_mode, model_device
from robustkern.stats import interval, percent_with_interval
from robustkern.timebudget import Deadline, parse_budget

Data = tuple[torch.Tensor, torch.Tensor] | Dataset | DataLoader
AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# Built-in attacks also return which samples they fooled, so no second forward is needed.
_Outcome = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]
ATTACKS = (*SINGLE, "none", *PRESETS)
# Every single attack's function by name, for callers that read its options (the command line).
FUNCTIONS = {name: entry.fn for name, entry in SINGLE.items()}
# Cascades (``presets.PRESETS``): each attack runs only on the points every earlier one left
# robust (per-sample worst case).
_SHARED = ("eps", "norm", "bounds", "generator")  # options every stage of a cascade takes
_OWN = {
    "apgd": ("steps", "restarts", "eot"),
    "fab": ("steps", "restarts"),
    "square": ("queries", "restarts", "p_init"),
}
REPEATS = 10  # forwards that judge each final point of a randomised model
CERTIFY_METHODS = (*BOUND_METHODS, "lipschitz")
# A relative logit change above this between two identical forwards marks a randomised model.
RANDOM_DRIFT = 1e-4


@dataclass
class Evaluation:
    """Per-sample outcomes and their summary. ``robust_correct`` implies ``clean_correct``:
    a sample counts as robust only if it is classified correctly and the attack failed."""

    clean_correct: torch.Tensor  # bool (N,)
    robust_correct: torch.Tensor  # bool (N,)
    seconds: float
    attack: str
    params: dict = field(default_factory=dict)
    broken_by: dict[str, int] = field(default_factory=dict)  # cascades: points each attack broke
    of: int | None = None  # examples in the data (more than n when a time budget stopped it)
    # A randomised model: each final point judged over ``repeats`` forwards (robust only if
    # correct in all); repeat_accuracy[r] is the robust accuracy forward r alone would give.
    randomized: bool = False
    repeats: int = 1
    repeat_accuracy: tuple[float, ...] = ()
    note: str = ""  # which preset ran, and why, when it is not the one asked for
    certify: str = ""  # the certificate computed beside the attack, if any
    certified_correct: torch.Tensor | None = None  # bool (N,): verified at eps (implies robust)

    @property
    def stopped_early(self) -> bool:
        return self.of is not None and self.of > self.n

    @property
    def n(self) -> int:
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item() if self.n else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return self.robust_correct.float().mean().item() if self.n else float("nan")

    @property
    def success(self) -> torch.Tensor:
        """Per sample: correctly classified, and the attack found an adversarial example."""
        return self.clean_correct & ~self.robust_correct

    @property
    def certified_accuracy(self) -> float | None:
        """The certified lower bound beside the attack's upper bound (None without certify)."""
        if self.certified_correct is None:
            return None
        return self.certified_correct.float().mean().item() if self.n else float("nan")

    def sandwich(self) -> dict[str, int]:
        """Examples by status: "misclassified", "attacked" (an adversarial point found),
        "verified" (certified robust) and "open" (neither: the gap between the bounds)."""
        if self.certified_correct is None:
            raise ValueError("no certificate was computed: evaluate(..., certify=...)")
        verified = self.certified_correct
        return {
            "misclassified": int((~self.clean_correct).sum()),
            "attacked": int(self.success.sum()),
            "verified": int(verified.sum()),
            "open": int((self.robust_correct & ~verified).sum()),
        }

    def interval(self, which: str = "robust") -> tuple[float, float]:
        """The 95 % (Wilson) interval of the "clean" or "robust" accuracy."""
        return interval(self._count(which), self.n)

    def interval_text(self, which: str = "robust") -> str:
        """'94.2 % [92.0, 95.9]': the "clean" or "robust" accuracy with its 95 % interval."""
        return percent_with_interval(self._count(which), self.n, digits=2)

    def _count(self, which: str) -> int:
        if which not in ("clean", "robust", "certified"):
            raise ValueError(f"which must be 'clean', 'robust' or 'certified', got {which!r}")
        return int(getattr(self, f"{which}_correct").sum())

    def randomized_text(self) -> str:
        """How a randomised model was judged and the spread over its repeated forwards ("" for
        a deterministic model)."""
        if not self.randomized:
            return ""
        acc = [100 * a for a in self.repeat_accuracy]
        return (
            f"randomised model: each point judged over {self.repeats} forwards, robust only if "
            f"correct in all; one forward alone would give {min(acc):.2f} to {max(acc):.2f} % "
            f"(mean {sum(acc) / len(acc):.2f} %)"
        )

    def after_each_attack(self) -> list[tuple[str, float]]:
        """Cascades: (attack, robust accuracy once it and every earlier attack have run)."""
        correct, out = int(self.clean_correct.sum()), []
        for name, broken in self.broken_by.items():
            correct -= broken
            out.append((name, correct / self.n if self.n else float("nan")))
        return out

    def to_dict(self) -> dict:
        """The summary as plain JSON values: counts, accuracies with their intervals, the
        attack and its numeric options, the cascade's stages, seconds."""
        options = {k: v for k, v in self.params.items() if isinstance(v, (int, float, str))}
        return {
            "attack": self.attack, **options, "n": self.n, "of": self.of,
            "clean_accuracy": self.clean_accuracy, "clean_interval": list(self.interval("clean")),
            "robust_accuracy": self.robust_accuracy,
            "robust_interval": list(self.interval("robust")),
            "after_each_attack": self.after_each_attack(), "broken_by": dict(self.broken_by),
            "seconds": self.seconds, "randomized": self.randomized, "repeats": self.repeats,
            "repeat_accuracy": list(self.repeat_accuracy), "note": self.note,
            **({"certify": self.certify, "certified_accuracy": self.certified_accuracy,
                "certified_interval": list(self.interval("certified")),
                "sandwich": self.sandwich()} if self.certify else {}),
        }  # fmt: skip

    def __str__(self) -> str:
        text = (
            f"clean accuracy {self.interval_text('clean')}, robust accuracy "
            f"{self.interval_text('robust')} ({self.attack}, n={self.n}, {self.seconds:.1f} s; "
            "95 % intervals)"
        )
        if self.stopped_early:
            text += f"\n  the time budget stopped it after {self.n} of {self.of} examples"
        for line in (self.note, self.randomized_text()):
            text += f"\n  {line}" if line else ""
        if self.certify:
            s = self.sandwich()
            text += (
                f"\n  certified ({self.certify}) {self.interval_text('certified')}: "
                f"{s['verified']} verified, {s['open']} open, {s['attacked']} attacked"
            )
        for name, acc in self.after_each_attack():
            text += f"\n  after {name:<8} {100 * acc:6.2f} %  ({self.broken_by[name]} broken)"
        return text


def evaluate(
    model: torch.nn.Module,
    data: Data,
    attack: str | AttackFn = "pgd",
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
    autocast: torch.dtype | None = None,
    budget: float | str | None = None,
    repeats: int = REPEATS,
    certify: str | None = None,
    channels_last: bool | None = None,
    **attack_kwargs,
) -> Evaluation:
    """Clean and robust accuracy of ``model`` on ``data`` under ``attack``.

    Args:
        model: a classifier returning logits (N, classes); run in eval mode, its mode
            restored after.
        data: an ``(x, y)`` pair of tensors (images (N, C, H, W) in the attack's bounds, int64
            labels (N,)), a Dataset or a DataLoader of such ``(x, y)`` batches.
        attack: a single attack (``single.SINGLE``): bounded ones, "pgd" or "apgd" (early
            stopping: a sample leaves the batch once misclassified, which changes no outcome
            and saves the work), "fab", "adam" (``adam_pgd``), "square" (score-based black
            box), "rays" (hard-label black box), "fgsm", "mi_fgsm" and "di_fgsm" (momentum and
            input diversity, for transfer); minimum-norm ones, whose point counts
            where its distance is within eps: "cw", "ddn", "deepfool", "min_norm" (FMN),
            "hop_skip_jump" (hard-label); "sparse_rs" (L0: eps is its number of changed
            pixels); "none"; a callable ``(model, x, y) -> x_adv``; or a
            preset cascade (``presets.PRESETS``): AutoAttack's "standard", "plus" and "rand"
            versions with its settings for the norm, or our quick "fast"; cascades report how
            many points each attack broke.
        batch_size: examples per model batch.
        device: where the model runs (default: the model's device).
        progress: show a progress bar.
        autocast: e.g. ``torch.bfloat16`` runs the model under ``torch.autocast`` (faster;
            keep the float32 default for numbers meant to be compared).
        budget: seconds (or "10m"): batches are evaluated in order until the next one would
            not fit, and the result covers those examples (``Evaluation.of`` says how many the
            data held); None evaluates everything.
        repeats: a randomised model (two forwards of the first batch differ) has each final
            point judged over this many forwards, robust only if correct in all; "standard"
            and "plus" then run as "rand" (expectation over transformation), as the result's
            ``note`` says.
        certify: also a certified lower bound on the same examples at the same eps and norm
            (L-inf or L2): "ibp", "crown", "crown-ibp" (``certify.verified``) or "lipschitz"
            (the Lipschitz-margin radius); ``certified_correct`` then holds the verified ones,
            and ``robust_correct`` the attack's upper bound, with the per-example status in
            ``Evaluation.sandwich()``. A verified example the attack breaks is an error.
        channels_last: run a convolutional model with its 4-D weights in channels_last
            memory format, restored after (``modes.channels_last``): None does so on a CPU,
            where it is faster (about 2.5-3x a forward on max-pooling CNNs); True / False force
            it on / off.
        **attack_kwargs: go to the attack (e.g. ``eps=0.3, norm="linf", steps=40``, eps in the
            input's units; cascades take eps, norm, bounds, generator, steps, restarts and eot
            for APGD and FAB, queries and p_init for Square, overriding the preset's). A 1-D
            tensor option (eps, alpha) holds one value per example of ``data``, in its order.
            eps 0 scores the clean outcome, unattacked.

    Only correctly classified examples are attacked. Returns per-example outcomes and their
    summary, with 95 % intervals (``Evaluation``).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    outcome_fn(attack, attack_kwargs)  # a bad attack or option fails before any model work
    certifier = _certifier(certify, attack_kwargs) if certify is not None else None
    if isinstance(attack, str) and attack in SINGLE:  # the norm it runs in, for the record
        attack_kwargs = {**attack_kwargs, "norm": norm_for(attack, attack_kwargs.get("norm"))}
    device = torch.device(device) if device is not None else model_device(model)
    per_example = _per_example_options(attack_kwargs, data)
    deadline = Deadline(parse_budget(budget))
    clean, robust, per_repeat, certified, seen = [], [], [], [], 0
    amp = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)
    with eval_mode(model), amp, modes.channels_last(model, channels_last):
        batches, total = _batches(data, batch_size)
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            raise ValueError("data holds no examples")
        randomized = is_randomized(model, first[0].to(device))
        attack, note = _preset_for(attack, randomized)
        if note:  # the stages asked for were the other preset's
            attack_kwargs = {k: v for k, v in attack_kwargs.items() if k != "only"}
        attack_fn, name = outcome_fn(attack, attack_kwargs)
        judge = repeats if randomized else 1
        every = itertools.chain([first], batches)
        bar = progress_bar(every, total=total, desc=f"evaluate ({name})", disable=not progress,
                           unit="batch")  # fmt: skip
        for x, y in bar:
            if seen and not deadline.allows(deadline.elapsed / len(clean)):
                break  # the next batch would overrun the budget
            x, y = x.to(device), y.to(device)
            if certifier is not None:  # first: an unsupported layer stops before the attack
                eps = per_example.get("eps", attack_kwargs.get("eps"))
                eps = eps[seen : seen + len(x)].to(device) if isinstance(eps, torch.Tensor) and (
                    eps.dim() == 1) else eps  # fmt: skip
                certified.append(certifier(model, x, y, eps))
            ok, still, each = _evaluate_batch(model, x, y, attack_fn, seen, per_example,
                                              attack_kwargs, judge)  # fmt: skip
            if certifier is not None:
                _check_sandwich(certified[-1], still, seen)
                certified[-1] = certified[-1].cpu()
            seen += len(ok)
            clean.append(ok.cpu())
            robust.append(still.cpu())
            per_repeat.append(each.sum(0).cpu())
    if seen == 0:
        raise ValueError("data holds no examples")
    return Evaluation(
        torch.cat(clean), torch.cat(robust), deadline.elapsed, name, dict(attack_kwargs),
        dict(attack_fn.broken_by) if isinstance(attack_fn, Cascade) else {},
        of=_length(data), randomized=randomized, repeats=judge,
        repeat_accuracy=tuple((sum(per_repeat) / seen).tolist()) if randomized else (),
        note=note, certify=certify or "",
        certified_correct=torch.cat(certified) if certifier is not None else None,
    )  # fmt: skip


def _certifier(method: str, options: dict) -> Callable:
    """``(model, x, y, eps) -> bool (B,)`` verified at eps in the evaluation's norm, checked
    before any model work; the Lipschitz bound is computed once, for every batch."""
    check_choice(method, CERTIFY_METHODS, "certify")
    norm = options.get("norm", "linf")
    if norm not in ("linf", "l2"):
        raise ValueError(f"certify covers L-inf and L2 balls, not norm={norm!r}")
    if "eps" not in options:
        raise ValueError("certify needs the eps= the attack runs at")
    bounds = options.get("bounds", (0.0, 1.0))
    lipschitz = []

    def run(model, x, y, eps):
        with torch.autocast(x.device.type, enabled=False):
            if method != "lipschitz":
                return certify_verified(model, x, y, eps=eps, norm=norm, method=method,
                                        bounds=bounds)  # fmt: skip
            if not lipschitz:
                lipschitz.append(lipschitz_bound(model, tuple(x.shape[1:])))
            return lipschitz_verified(model, x, y, eps=eps, norm=norm, lipschitz=lipschitz[0],
                                      bounds=bounds)  # fmt: skip

    return run


def _check_sandwich(verified: torch.Tensor, robust: torch.Tensor, seen: int) -> None:
    """A certificate is a proof: an example both verified and broken means a bug."""
    broken = (verified & ~robust.to(verified.device)).nonzero().squeeze(1)
    if broken.numel():
        raise RuntimeError(
            f"examples {(broken + seen).tolist()[:10]} are certified robust but the attack broke "
            "them: the certificate is unsound (please report this with the model)"
        )


def is_randomized(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether two forwards of the same images (up to 64 of x) disagree: a prediction changes
    or a logit moves by more than ``RANDOM_DRIFT`` of the largest."""
    changed, drift = output_drift(model, x[:64])
    return changed > 0 or drift > RANDOM_DRIFT


def output_drift(
    model: torch.nn.Module, x: torch.Tensor, logits: torch.Tensor | None = None
) -> tuple[int, float]:
    """(predictions changed, largest logit change relative to the largest logit) between two
    forwards of x (``logits``: the first one's, when already computed)."""
    if len(x) == 0:
        return 0, 0.0
    with torch.no_grad():
        first = model(x) if logits is None else logits
        again = model(x)
    changed = int((again.argmax(1) != first.argmax(1)).sum())
    scale = first.float().abs().amax().clamp_min(1e-12)
    return changed, ((again.float() - first.float()).abs().amax() / scale).item()


class RandomizedModelWarning(UserWarning):
    """The model's outputs differ on identical input: a randomised defence."""


def _preset_for(attack, randomized: bool) -> tuple:
    """(the attack to run, a note saying why it is not the one asked for, or "")."""
    if not (randomized and isinstance(attack, str) and attack in ("standard", "plus")):
        return attack, ""
    note = (
        f"the model's outputs differ on identical input (a randomised model): {attack!r} "
        "would attack single noisy gradients, so the 'rand' preset ran instead (APGD-CE and "
        "APGD-DLR averaging 20 gradient passes per step, AutoAttack's version for randomised "
        "defences)"
    )
    warnings.warn(note, RandomizedModelWarning, stacklevel=3)
    return "rand", note


def _evaluate_batch(model, x, y, attack_fn, seen: int, per_example: dict, options: dict,
                    repeats: int = 1):  # fmt: skip
    """(clean correct, robust correct, correct per forward (B, repeats)) bool for one batch
    starting at example ``seen``. With repeats > 1 a point is robust only if every forward of
    it is correct."""
    check_label_tensor(x, y)
    # unchecked, a NaN image would just count as misclassified, never attacked
    check_finite(x, f"data (examples {seen} to {seen + len(x) - 1})", offset=seen)
    if seen == 0:
        _warn_unusual_eps(options, x)
    with torch.no_grad():
        logits = model(x)
    # unchecked, a label the model cannot output would just count as misclassified
    check_logits(logits, len(x), label_range(y))
    warn_if_probabilities(model, logits)
    ok = logits.argmax(dim=1) == y
    final = x
    still = ok.clone()
    idx = ok.nonzero().squeeze(1)
    if idx.numel() and attack_fn is not None:
        rows = idx + seen  # the attacked examples' positions in data
        own = {k: v[rows.to(v.device)].to(x.device) for k, v in per_example.items()}
        x_adv, fooled = attack_fn(model, x[idx], y[idx], **own)
        still[idx] = ~fooled
        final = x.clone()
        final[idx] = x_adv.to(x.dtype)
    if repeats == 1:
        return ok, still, still[:, None]
    each = judged(model, final, y, repeats) & ok[:, None]
    return ok, each.all(1), each


def judged(model, x: torch.Tensor, y: torch.Tensor, repeats: int) -> torch.Tensor:
    """bool (N, repeats): whether each of ``repeats`` forwards of x classifies it as y."""
    with torch.no_grad():
        return torch.stack([model(x).argmax(1) == y for _ in range(repeats)], 1)


def outcome_fn(attack: str | AttackFn, kwargs: dict) -> tuple[_Outcome | None, str]:
    """``attack`` (a name of ``ATTACKS`` or a callable) with its options, as a function
    ``(model, x, y, **own) -> (x_adv, fooled)`` (None for "none"), and its name; ``own``
    replaces options for one call (a batch's slice of per-example eps)."""
    if callable(attack):
        return _with_success(attack, kwargs), getattr(attack, "__name__", "custom")
    if attack == "none" or _zero_radius(kwargs.get("eps")):
        return None, attack  # eps 0: the clean outcome is the robust one, nothing to attack
    if attack in SINGLE:
        return single_outcome(attack, kwargs), attack
    if attack in PRESETS:
        return Cascade(attack, **kwargs), attack
    raise ValueError(f"attack must be one of {ATTACKS} or a callable, got {attack!r}")


class Cascade:
    """A preset's attacks for the norm (``presets.PRESETS``) in order, each on the points still
    robust; ``__call__(model, x, y) -> (x_adv, fooled)`` with every sample's worst case.
    ``broken_by`` counts, per attack, the points it broke (summed over calls). ``only``: run
    just these stages (by name, e.g. the white-box ones), in the preset's order.
    """

    def __init__(self, preset: str, *, only: tuple[str, ...] | None = None, **kwargs):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        if "eps" not in kwargs:
            raise ValueError(f"the {preset!r} evaluation needs eps=")
        known = set(_SHARED).union(*_OWN.values())
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for the {preset!r} evaluation; "
                f"it takes {sorted(known)}"
            )
        table = stages(preset, kwargs.get("norm", "linf"))
        if only is not None:
            missing = set(only) - {name for name, _, _ in table}
            if missing:
                raise ValueError(f"the {preset!r} preset has no stage(s) {sorted(missing)}")
        self.stages = tuple(s for s in table if only is None or s[0] in only)
        self.kwargs = kwargs
        self.broken_by = {name: 0 for name, _, _ in self.stages}

    def __call__(self, model, x, y, **own):
        kwargs = self.kwargs | own
        x_adv = x.detach().clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for name, family, options in self.stages:
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            stage = {k: v for k, v in kwargs.items() if k in _SHARED + _OWN[family]}
            stage = {**options, **stage}  # the user's budget overrides the preset's
            if isinstance(stage["eps"], torch.Tensor) and stage["eps"].ndim == 1:
                stage["eps"] = stage["eps"][idx]  # one radius per sample: the attacked ones'
            if family == "apgd":
                stage["early_stop"] = True  # the same outcome for less work
            xa, hit = FUNCTIONS[family](model, x[idx], y[idx], **stage, return_success=True)
            x_adv[idx], fooled[idx] = xa, hit
            self.broken_by[name] += int(hit.sum())
        return x_adv, fooled


def _zero_radius(eps) -> bool:
    if isinstance(eps, torch.Tensor):
        return eps.dim() == 0 and float(eps) == 0.0
    return isinstance(eps, (int, float)) and eps == 0


def _warn_unusual_eps(options: dict, x: torch.Tensor) -> None:
    """An eps far beyond the inputs' range (8 meant as 8/255) warns before the work starts."""
    if "eps" in options:
        bounds = options.get("bounds", (0.0, 1.0))
        warn_unusual_eps(options["eps"], options.get("norm", "linf"), bounds, x.shape[1:].numel())


def _with_success(attack_fn: AttackFn, kwargs: dict) -> _Outcome:
    """``attack_fn`` (returning x_adv) with its options, also returning "misclassified at
    x_adv"."""

    def run(model, x, y, **own):
        x_adv = attack_fn(model, x, y, **(kwargs | own))
        with torch.no_grad():
            return x_adv, model(x_adv).argmax(dim=1) != y

    return run


def _per_example_options(options: dict, data: Data) -> dict[str, torch.Tensor]:
    """The 1-D tensor options (one value per example of ``data``), checked against its length
    and order."""
    per_example = {k: v for k, v in options.items() if isinstance(v, torch.Tensor) and v.dim() == 1}
    if not per_example:
        return {}
    if isinstance(data, DataLoader) and not isinstance(data.sampler, SequentialSampler):
        raise ValueError(
            f"per-example {sorted(per_example)} need the data in a fixed order: pass an (x, y) "
            "pair, a Dataset, or a DataLoader that does not shuffle"
        )
    source = data.dataset if isinstance(data, DataLoader) else data
    n = len(source[0]) if isinstance(source, (tuple, list)) else len(source)
    for k, v in per_example.items():
        if len(v) != n:
            raise ValueError(f"per-example {k} must have one value per example ({n}), got {len(v)}")
    return per_example


def _length(data: Data) -> int | None:
    """How many examples ``data`` holds, where it says."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return len(data[0])
    source = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(source)
    except TypeError:  # iterable datasets may have no length
        return None


def _batches(data: Data, batch_size: int) -> tuple[Iterable, int | None]:
    """(batches of (x, y), their number if known)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        return zip(x.split(batch_size), y.split(batch_size), strict=True), -(-len(x) // batch_size)
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size)
    if isinstance(data, DataLoader):
        try:
            return data, len(data)
        except TypeError:  # iterable datasets may have no length
            return data, None
    raise ValueError("data must be an (x, y) pair of tensors, a Dataset or a DataLoader")
