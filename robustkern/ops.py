"""Typed Python face of the compiled ops (``torch.ops.robustkern.*``) and their fake kernels.

The specification of every op is its twin in ``robustkern.reference``. The ops here work in
place, accept float16/bfloat16/float32/float64, contiguous, channels_last and strided inputs of
any trailing shape (a sample is one row of the leading dimension), and N = 0.

``alpha`` and ``eps`` are a number or a 1-D tensor with one value per sample (so one batch can
hold several eps values). Negative or NaN values are errors; eps may be ``inf`` (no projection).
Per-sample tensors on a GPU are checked with an asynchronous device assert, never a host sync.
"""

from __future__ import annotations

import math

import torch

from robustkern import _C  # noqa: F401  (registers torch.ops.robustkern)
from robustkern.types import Bounds, PerSample

__all__ = [
    "conv_singular_values",
    "fourier_perturb",
    "l1_project_",
    "l1_step_",
    "l2_project_",
    "l2_step_",
    "linf_project_",
    "linf_step_",
    "project_op",
    "step_args",
    "step_op",
]


def split_per_sample(
    value: PerSample, name: str, allow_inf: bool
) -> tuple[float, torch.Tensor | None]:
    """(scalar, None) for a number, (0.0, tensor) for per-sample values."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        if value.is_cuda:  # on the CPU the op itself checks the values
            ok = (value >= 0) & (value < math.inf if not allow_inf else ~value.isnan())
            torch._assert_async(ok.all(), f"every per-sample {name} must be >= 0")
        return 0.0, value
    if isinstance(value, torch.Tensor) and value.dim() > 1:
        raise ValueError(
            f"{name} must be a number or a 1-D tensor (one value per sample), "
            f"got shape {tuple(value.shape)}"
        )
    return float(value), None  # the op checks the range and names the argument


def _bounds(bounds: Bounds) -> tuple[float, float]:
    if len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def step_args(
    alpha: PerSample, eps: PerSample, bounds: Bounds, sparsity: PerSample | None = None
) -> tuple:
    """The step ops' trailing arguments (alpha, eps, alpha_per_sample, eps_per_sample, lo, hi),
    then, for ``l1_step_`` (``sparsity`` given), (sparsity, sparsity_per_sample). Attacks build
    them once and call torch.ops.robustkern.*_step_ with them in their loops."""
    a, a_t = split_per_sample(alpha, "alpha", allow_inf=False)
    e, e_t = split_per_sample(eps, "eps", allow_inf=True)
    args = (a, e, a_t, e_t, *_bounds(bounds))
    if sparsity is None:
        return args
    return (*args, *split_per_sample(sparsity, "sparsity", allow_inf=False))


def step_op(norm: str):
    """The raw in-place step op of ``norm`` ("linf", "l2" or "l1"), for an attack's hot loop:
    called as ``op(x_adv, x_nat, grad, *step_args(alpha, eps, bounds))`` (L1: with a sparsity)
    with the arguments built once (the wrappers below check and convert them on every call)."""
    return getattr(torch.ops.robustkern, f"{norm}_step_")


def project_op(norm: str):
    """The raw in-place projection op of ``norm``, called as ``op(x_adv, x_nat, eps, eps_per_
    sample, lo, hi)`` in a hot loop (``linf_project_`` etc. check on every call)."""
    return getattr(torch.ops.robustkern, f"{norm}_project_")


def conv_singular_values(
    weight: torch.Tensor,
    fft_size,
    stride,
    dilation,
    groups: int,
    method: str,
    max_iters: int,
    tol: float,
    prune: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-frequency largest singular value (B, Mh, Mw // 2 + 1), norm (B,)) of a batch of
    conv weights (B, C_out, C_in / groups, kh, kw) on the ``fft_size`` torus; the checked,
    padding-aware face is ``robustkern.spectral.conv_singular_values``."""
    return torch.ops.robustkern.conv_singular_values(
        weight, fft_size, stride, dilation, groups, method, max_iters, tol, prune
    )  # fmt: skip


def linf_step_(
    x_adv: torch.Tensor,
    x_nat: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: PerSample,
    eps: PerSample,
    bounds: Bounds = (0.0, 1.0),
) -> None:
    """In place: x_adv = clip(clip(x_adv + alpha*sign(grad), x_nat-eps, x_nat+eps), lo, hi)."""
    torch.ops.robustkern.linf_step_(x_adv, x_nat, grad, *step_args(alpha, eps, bounds))


def l2_step_(
    x_adv: torch.Tensor,
    x_nat: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: PerSample,
    eps: PerSample,
    bounds: Bounds = (0.0, 1.0),
) -> None:
    """In place: step alpha along grad/||grad|| (per sample), project onto the L2 eps-ball
    around x_nat, clip to bounds. A zero gradient moves nothing."""
    torch.ops.robustkern.l2_step_(x_adv, x_nat, grad, *step_args(alpha, eps, bounds))


def linf_project_(
    x_adv: torch.Tensor, x_nat: torch.Tensor, *, eps: PerSample, bounds: Bounds = (0.0, 1.0)
) -> None:
    """In place: x_adv = clip(clip(x_adv, x_nat-eps, x_nat+eps), lo, hi)."""
    e, e_t = split_per_sample(eps, "eps", allow_inf=True)
    torch.ops.robustkern.linf_project_(x_adv, x_nat, e, e_t, *_bounds(bounds))


def l2_project_(
    x_adv: torch.Tensor, x_nat: torch.Tensor, *, eps: PerSample, bounds: Bounds = (0.0, 1.0)
) -> None:
    """In place: project x_adv onto the L2 eps-ball around x_nat (per sample), clip to bounds."""
    e, e_t = split_per_sample(eps, "eps", allow_inf=True)
    torch.ops.robustkern.l2_project_(x_adv, x_nat, e, e_t, *_bounds(bounds))


def l1_project_(
    x_adv: torch.Tensor, x_nat: torch.Tensor, *, eps: PerSample, bounds: Bounds = (0.0, 1.0)
) -> None:
    """In place: the closest point (in L2) to x_adv in the L1 eps-ball around x_nat intersected
    with the bounds (per sample; Croce & Hein 2021's box-aware projection)."""
    e, e_t = split_per_sample(eps, "eps", allow_inf=True)
    torch.ops.robustkern.l1_project_(x_adv, x_nat, e, e_t, *_bounds(bounds))


def l1_step_(
    x_adv: torch.Tensor,
    x_nat: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: PerSample,
    eps: PerSample,
    sparsity: PerSample,
    bounds: Bounds = (0.0, 1.0),
) -> None:
    """In place: APGD-L1's sparse step, then ``l1_project_``. The step moves sign(grad) on the
    round(sparsity * d) largest |grad| (ties included) among the coordinates that can still move
    that way inside the bounds, scaled to L1 length alpha. ``sparsity`` in (0, 1], a number or
    one value per sample."""
    torch.ops.robustkern.l1_step_(x_adv, x_nat, grad, *step_args(alpha, eps, bounds, sparsity))


def fourier_perturb(
    x: torch.Tensor,
    freqs: torch.Tensor,
    *,
    eps: float,
    signs: torch.Tensor | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """Fourier-basis perturbations of a batch of images, frequency-major.

    Returns ``out`` of shape (F, N, C, H, W) in x's dtype with
    ``out[f, n, c] = clip(x[n, c] + eps * signs[f, n, c] * U(freqs[f]), lo, hi)``, where U(i, j)
    is the real basis image of unit L2 norm (per channel) whose spectrum lives at (i, j) and
    (-i, -j); see ``robustkern.fourier`` for the convention. ``freqs``: int64 (F, 2) offsets from
    the zero frequency (any integers, taken mod (H, W)); ``signs``: (F, N, C), usually +-1, or
    None for all +1. ``out.flatten(0, 1)`` is a model-ready batch (N images per frequency, in
    x's memory format: channels_last in, channels_last out). The basis is synthesised on the
    fly; no basis bank is built."""
    freqs = torch.as_tensor(freqs, device=x.device)
    if freqs.is_floating_point() or freqs.is_complex():  # 1.5 would be truncated to 1
        raise ValueError(f"freqs must be integer (i, j) offsets, got {freqs.dtype}")
    freqs = freqs.to(torch.int64)
    return torch.ops.robustkern.fourier_perturb(x, freqs, float(eps), signs, *_bounds(bounds))


def _fake_check(x_adv: torch.Tensor, *others: torch.Tensor) -> None:
    for t in others:
        torch._check(t.shape == x_adv.shape, lambda: "x_nat/grad must have x_adv's shape")
        torch._check(t.dtype == x_adv.dtype, lambda: "x_nat/grad must have x_adv's dtype")
        torch._check(t.device == x_adv.device, lambda: "x_nat/grad must be on x_adv's device")


@torch.library.register_fake("robustkern::linf_step_")
def _(x_adv, x_nat, grad, alpha, eps, alpha_ps, eps_ps, lo, hi):
    _fake_check(x_adv, x_nat, grad)


@torch.library.register_fake("robustkern::l2_step_")
def _(x_adv, x_nat, grad, alpha, eps, alpha_ps, eps_ps, lo, hi):
    _fake_check(x_adv, x_nat, grad)


@torch.library.register_fake("robustkern::linf_project_")
def _(x_adv, x_nat, eps, eps_ps, lo, hi):
    _fake_check(x_adv, x_nat)


@torch.library.register_fake("robustkern::l2_project_")
def _(x_adv, x_nat, eps, eps_ps, lo, hi):
    _fake_check(x_adv, x_nat)


@torch.library.register_fake("robustkern::l1_step_")
def _(x_adv, x_nat, grad, alpha, eps, alpha_ps, eps_ps, lo, hi, sparsity, sparsity_ps):
    _fake_check(x_adv, x_nat, grad)


@torch.library.register_fake("robustkern::l1_project_")
def _(x_adv, x_nat, eps, eps_ps, lo, hi):
    _fake_check(x_adv, x_nat)


@torch.library.register_fake("robustkern::conv_singular_values")
def _(weight, fft_size, stride, dilation, groups, method, max_iters, tol, prune):
    torch._check(weight.dim() == 5, lambda: "weight must be (B, C_out, C_in / groups, kh, kw)")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    mh, mw = fft_size[0] // stride[0], fft_size[1] // stride[1]
    sigma = weight.new_empty(weight.shape[0], mh, mw // 2 + 1, dtype=acc)
    return sigma, weight.new_empty(weight.shape[0], dtype=acc)


@torch.library.register_fake("robustkern::fourier_perturb")
def _(x, freqs, eps, signs, lo, hi):
    torch._check(x.dim() == 4, lambda: "x must be (N, C, H, W)")
    torch._check(freqs.dim() == 2 and freqs.shape[1] == 2, lambda: "freqs must be (F, 2)")
    n, c, h, w = x.shape
    f = freqs.shape[0]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and c > 1:
        return x.new_empty(f, n, h, w, c).permute(0, 1, 4, 2, 3)
    return x.new_empty(f, n, c, h, w)
