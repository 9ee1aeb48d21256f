"""What one example costs a model, measured: the base of every time budget (the suite's plan,
a sweep's number of examples)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustkern.modes import eval_mode, model_device

MEASURE_BATCH = 64  # examples per timed call: small, but past most per-call overhead
QUICK_SECONDS = 0.2  # timed calls that add up to less are repeated (up to five)
PROBE_SECONDS = 0.25  # the longest timed gradient call wanted: fewer examples on large models


@dataclass(frozen=True)
class ModelCost:
    """One model's measured seconds: per example ``forward`` (no gradient) and ``gradient``
    (forward and backward to the input), and ``call``, the fixed cost of one forward call
    (Python and dispatch: what dominates small models at small batches)."""

    forward: float
    gradient: float
    call: float = 0.0

    def seconds(self, forwards: float, gradients: float) -> float:
        """Per-example passes, in seconds (the fixed per-call cost left out)."""
        return forwards * self.forward + gradients * self.gradient


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> ModelCost:
    """Seconds of a forward and of a forward with the input's gradient, per example on the first
    MEASURE_BATCH examples and for one example alone (the difference is the per-call cost), in
    eval mode on the model's device."""
    device = model_device(model)
    xb, yb = x[:MEASURE_BATCH].to(device), y[:MEASURE_BATCH].to(device)
    with eval_mode(model):
        one = _pass_seconds(model, xb[:1], yb[:1], device)
        # a large model measures on fewer examples: a timed call stays near a quarter second
        batch = max(2, min(len(xb), int(PROBE_SECONDS / max(one[1], 1e-9))))
        xb, yb = xb[:batch], yb[:batch]
        many = _pass_seconds(model, xb, yb, device)
    # per example: the batch's time beyond one example's (at least half the batch's mean)
    forward, gradient = (
        max((m - o) / max(batch - 1, 1), m / batch / 2) for o, m in zip(one, many, strict=True)
    )
    return ModelCost(forward, gradient, call=max(0.0, one[0] - forward))


def _pass_seconds(model, xb, yb, device) -> tuple[float, float]:
    """(a forward, a forward with the input's gradient) on the batch xb, in seconds."""

    def forward():
        with torch.no_grad():
            model(xb)

    def gradient():
        xg = xb.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg).float(), yb), xg)

    seconds_forward, seconds_gradient = timed(forward, device), timed(gradient, device)
    # a gradient pass includes a forward: a forward timed slower was disturbed
    return min(seconds_forward, seconds_gradient), seconds_gradient


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds of one call: the best of two after a warm-up call, or of up to five while the
    calls are quick (one scheduler stall on shared CPU cores would swamp a quick call); CUDA
    work is synchronised before and after."""
    device = torch.device(device)
    fn()
    times: list[float] = []
    while len(times) < 2 or (len(times) < 5 and sum(times) < QUICK_SECONDS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)
