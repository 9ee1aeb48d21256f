"""Randomised smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019): the smoothed classifier g(x) = argmax_c P(f(x + sigma e) = c),
e ~ N(0, I), judged by Monte Carlo with the paper's guarantees.

* ``smoothing`` is CERTIFY: n0 noise draws guess g's class c_A, n fresh draws give a one-sided
  Clopper-Pearson lower bound p_A on P(f(x + sigma e) = c_A) at level alpha; with p_A >= 1/2,
  g is constant within the L2 radius sigma * Phi^-1(p_A) of x (Theorem 1) with probability at
  least 1 - alpha over the draws; otherwise the sample abstains.
* ``smoothed_predict`` is PREDICT: the top class of n draws unless a two-sided binomial test of
  its count against the runner-up's cannot reject a tie at alpha (then it abstains).

The noise rows of all images form one stream (image-major, draw-minor), cut into model calls of
``batch_size`` rows, so a call holds the draws of many images when n is small and one image's
draws never wait for a full batch. The noise is not clipped to the bounds (as in the paper: the
theorem is about the Gaussian itself). Each row's noise is drawn as a whole number of 16-value
blocks, the unit in which torch's CPU sampler consumes its stream: on the CPU the answer for a
given generator state is then the same for every ``batch_size``. On CUDA each sampler call
consumes the Philox stream in launch-dependent steps, so there the answer depends on
``batch_size`` as well (each is still a valid draw).
"""

from __future__ import annotations

import math

import torch
from scipy import stats

from robustkern.checks import check_logits, nonfinite_message, out_of_bounds_hint
from robustkern.modes import eval_mode
from robustkern.types import Bounds

ABSTAIN = -1  # the prediction of a sample the smoothed classifier abstains on
_BLOCK = 16  # values torch's CPU normal sampler transforms together (Box-Muller on 16 lanes)


def smoothing(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1024,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY of Cohen et al.: the smoothed classifier's class and a certified L2 radius per
    sample, each correct with probability at least 1 - alpha over the noise.

    Args:
        model: the base classifier f, returning logits (rows, classes >= 2); run in eval mode
            under ``torch.no_grad``, its mode restored after.
        x: the inputs (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        sigma: the noise's standard deviation, in the inputs' units (> 0).
        n0: noise draws per sample that select the class (>= 1).
        n: further draws per sample that bound its probability (>= 1).
        alpha: the failure probability, in (0, 1).
        batch_size: noise rows per model call (rows of several samples share a call).
        bounds: (lo, hi) the inputs must lie in (only checked: the noise is not clipped).
        generator: the noise's generator, on x's device (default: torch's global one).

    Returns:
        prediction: int64 (N,), the selected class, or -1 (``ABSTAIN``) where the lower bound
            on its probability is below 1/2.
        radius: float64 (N,), sigma * Phi^-1(p_A) in the inputs' units, 0 where abstained.
    """
    _check(x, sigma, alpha, batch_size, bounds, n0=n0, n=n)
    counts = _tally(model, x, sigma, n0 + n, n0, batch_size, generator)
    guess = counts[:, 0].argmax(1)
    hits = counts[:, 1].gather(1, guess[:, None]).squeeze(1)
    p_lower = clopper_pearson_lower(hits, n, alpha)
    radius = sigma * torch.special.ndtri(p_lower)
    certified = p_lower >= 0.5
    prediction = torch.where(certified.to(x.device), guess, ABSTAIN)
    return prediction, torch.where(certified, radius, 0.0).to(x.device)


def smoothed_predict(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    sigma: float,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1024,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PREDICT of Cohen et al.: the smoothed classifier's class per sample, wrong with
    probability at most alpha, or -1 (``ABSTAIN``) where the top class's count does not beat
    the runner-up's by a two-sided binomial test at alpha.

    Args:
        model, x, sigma, alpha, batch_size, bounds, generator: as for ``smoothing``.
        n: noise draws per sample (>= 1).

    Returns:
        int64 (N,): the class, or -1.
    """
    _check(x, sigma, alpha, batch_size, bounds, n=n)
    counts = _tally(model, x, sigma, n, 0, batch_size, generator)[:, 1]
    top = counts.topk(2, dim=1)
    p_value = _tie_p_value(top.values.cpu())
    return torch.where((p_value <= alpha).to(x.device), top.indices[:, 0], ABSTAIN)


def clopper_pearson_lower(hits: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from
    ``hits`` (an int tensor) successes out of ``n``: the alpha quantile of Beta(k, n - k + 1),
    0 for k = 0. float64, on the CPU (scipy's incomplete-beta inverse)."""
    k = hits.detach().cpu().double().numpy()
    with_hits = k > 0
    bound = stats.beta.ppf(alpha, k.clip(min=1), n - k + 1)
    return torch.from_numpy(bound).where(torch.from_numpy(with_hits), 0.0)


def _tie_p_value(top2: torch.Tensor) -> torch.Tensor:
    """Two-sided exact binomial p-value of k = top2[:, 0] successes in m = top2.sum(1) trials
    against p = 1/2: 2 P(X >= k) (the test is symmetric; capped at 1), float64 on the CPU."""
    k, m = top2[:, 0].double().numpy(), top2.sum(1).double().numpy()
    return torch.from_numpy(stats.binom.sf(k - 1, m, 0.5) * 2).clamp(max=1.0)


def _tally(model, x, sigma: float, per_sample: int, first: int, batch_size: int, generator):
    """int64 counts (N, 2, classes): how often f(x_i + sigma e) predicts each class over
    ``per_sample`` draws per sample, split into its first ``first`` draws and the others. No
    host sync inside the loop (``index_add_`` is a bincount without bincount's sync on CUDA)."""
    count = x.shape[0]
    size = x[0].numel() if count else 0
    width = -(-size // _BLOCK) * _BLOCK  # whole blocks per row: see the module docstring
    total, counts = count * per_sample, None
    with eval_mode(model), torch.no_grad():
        for start in range(0, total, batch_size):
            rows = torch.arange(start, min(start + batch_size, total), device=x.device)
            sample, draw = rows.div(per_sample, rounding_mode="floor"), rows % per_sample
            noise = torch.randn(len(rows), width, generator=generator, dtype=x.dtype,
                                device=x.device)[:, :size]  # fmt: skip
            logits = model(x.index_select(0, sample) + sigma * noise.reshape(-1, *x.shape[1:]))
            if counts is None:
                counts = _new_counts(logits, len(rows), count)
            classes = logits.shape[1]
            which = (sample * 2 + (draw >= first)) * classes + logits.argmax(1)
            counts.index_add_(0, which, torch.ones_like(which))
    if counts is None:  # no samples: no model call, no classes
        return torch.zeros(0, 2, 2, dtype=torch.int64, device=x.device)
    return counts.view(count, 2, -1)


def _new_counts(logits: torch.Tensor, rows: int, count: int) -> torch.Tensor:
    check_logits(logits, rows, (0, 0))
    if logits.shape[1] < 2:
        raise ValueError(
            f"smoothing needs a classifier with >= 2 outputs, got {logits.shape[1]} (a single "
            "logit's argmax is always class 0)"
        )
    return torch.zeros(count * 2 * logits.shape[1], dtype=torch.int64, device=logits.device)


def _check(x, sigma: float, alpha: float, batch_size: int, bounds: Bounds, **draws: int):
    """The arguments every entry shares, before any model call; one host sync for x."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x must be a floating tensor (N, ...), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"sigma must be finite and > 0 (the noise's standard deviation), got {sigma}"
        )
    for name, value in draws.items():
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an int >= 1 (noise draws per sample), got {value!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (the failure probability), got {alpha}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo, hi = bounds
    if not lo <= hi:
        raise ValueError(f"bounds=(lo, hi) needs lo <= hi, got {bounds}")
    if x.numel() == 0:
        return
    x_lo, x_hi = torch.stack([x.min().double(), x.max().double()]).tolist()
    if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
        raise ValueError(nonfinite_message(x))
    if not (lo <= x_lo and x_hi <= hi):
        raise ValueError(
            f"x must lie within bounds=({lo}, {hi}), got values in [{x_lo:.6g}, {x_hi:.6g}]: "
            + out_of_bounds_hint(x_lo, x_hi, bounds)
        )
