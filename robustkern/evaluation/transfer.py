"""Transfer of adversarial examples across models (Szegedy et al., Table 2): craft on each
source model, measure the error of every target model, next to Gaussian noise of the same
per-sample L2 size, which a robust-looking but merely noisy perturbation would match."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustkern import attacks
from robustkern.attacks.min_norm import average_distortion
from robustkern.modes import eval_mode, model_device

TRANSFER_ATTACKS = ("apgd", "pgd", "fgsm", "mi_fgsm", "di_fgsm", "min_norm", "lbfgs")


@dataclass
class TransferTable:
    sources: list[str]
    targets: list[str]
    error: torch.Tensor  # (S, T): target's error on the examples crafted on the source
    noise_error: torch.Tensor  # (S, T): target's error under noise of the same size
    distortion: list[float]  # per source: Szegedy's average distortion of its examples
    clean_error: torch.Tensor  # (T,)
    fooled: torch.Tensor | None = None  # bool (S, T, N): per image, for paired comparisons

    def __str__(self) -> str:
        head = "| examples | distortion | " + " | ".join(self.targets) + " |"
        lines = [head, "|" + "---|" * (len(self.targets) + 2)]
        pct = lambda row: " | ".join(f"{100 * v:.1f} %" for v in row.tolist())  # noqa: E731
        lines.append(f"| clean | 0 | {pct(self.clean_error)} |")
        for i, name in enumerate(self.sources):
            d = f"{self.distortion[i]:.4f}"
            lines.append(f"| adversarial from {name} | {d} | {pct(self.error[i])} |")
            lines.append(f"| Gaussian noise, same size | {d} | {pct(self.noise_error[i])} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "sources": self.sources,
            "targets": self.targets,
            "error": self.error.tolist(),
            "noise_error": self.noise_error.tolist(),
            "distortion": self.distortion,
            "clean_error": self.clean_error.tolist(),
        }


def transfer_matrix(
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    targets: dict[str, torch.nn.Module] | None = None,
    attack: str | Callable = "apgd",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    **attack_kwargs,
) -> TransferTable:
    """Error of every target model (default: the same models) on adversarial examples crafted
    on each source model in ``models``, and on Gaussian noise with each example's L2 size.

    attack: one of ``TRANSFER_ATTACKS`` (``attack_kwargs`` go to it, e.g. ``eps=0.1``; the
    transfer-boosting ``mi_fgsm`` and ``di_fgsm`` are made for this table, and ``di_fgsm``'s
    random transforms are drawn from ``seed`` unless a ``generator`` is given) or a callable
    ``(model, x, y) -> x_adv``. Models run in eval mode; their modes are restored."""
    if not models:
        raise ValueError("models must name at least one source model")
    targets = targets if targets is not None else models
    craft = _attack(attack, bounds, seed, attack_kwargs)
    g = torch.Generator(x.device).manual_seed(seed)
    adversarial, noisy, distortion = [], [], []
    for model in models.values():
        with eval_mode(model):
            x_adv = craft(model, x.to(model_device(model)), y.to(model_device(model))).to(x.device)
        adversarial.append(x_adv)
        noisy.append(same_size_noise(x, x_adv, bounds, g))
        distortion.append(average_distortion(x, x_adv))
    fooled = torch.stack(
        [torch.stack([_wrong(t, xa, y) for t in targets.values()]) for xa in adversarial]
    ).view(len(models), len(targets), len(x))
    noise_rows = [[_error(t, xn, y) for t in targets.values()] for xn in noisy]
    return TransferTable(
        list(models),
        list(targets),
        fooled.double().mean(-1).float() if len(x) else torch.full(fooled.shape[:2], math.nan),
        torch.tensor(noise_rows).view(len(models), len(targets)),
        distortion,
        torch.tensor([_error(t, x, y) for t in targets.values()]),
        fooled,
    )


def _attack(attack, bounds, seed, kwargs) -> Callable:
    if callable(attack):
        return lambda m, x, y: attack(m, x, y, **kwargs)
    if attack not in TRANSFER_ATTACKS:
        raise ValueError(f"attack must be one of {TRANSFER_ATTACKS} or a callable, got {attack!r}")
    if attack == "min_norm":
        kwargs = {"norm": "l2", **kwargs}
    fn = getattr(attacks, attack)
    if attack == "di_fgsm" and "generator" not in kwargs:

        def seeded(m, x, y):  # each source's transforms drawn from seed, on its model's device
            g = torch.Generator(x.device).manual_seed(seed)
            return fn(m, x, y, bounds=bounds, generator=g, **kwargs)

        return seeded
    return lambda m, x, y: fn(m, x, y, bounds=bounds, **kwargs)


def same_size_noise(x, x_adv, bounds, g) -> torch.Tensor:
    """x plus Gaussian noise scaled to ||x_adv - x||_2 per sample, clipped to the bounds."""
    size = (x_adv - x).flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(size)
    return (x + noise * size).clamp(float(bounds[0]), float(bounds[1]))


def _wrong(model, x, y) -> torch.Tensor:
    """bool (N,) on the CPU: misclassified by ``model``."""
    with eval_mode(model), torch.no_grad():
        device = model_device(model)
        return (model(x.to(device)).argmax(1) != y.to(device)).cpu()


def _error(model, x, y) -> float:
    return _wrong(model, x, y).float().mean().item() if len(x) else float("nan")
