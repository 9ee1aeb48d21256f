"""Sparse-RS (Croce, Singh, Andriushchenko, Flammarion, Hein, "Sparse-RS: a versatile framework for
query-efficient sparse black-box adversarial attacks", AAAI 2022), the L0 threat model counted in
pixels: at most k pixels (h, w) of an image change, every channel of a changed pixel counting
once. Score-based: it reads the model's outputs only, under ``torch.no_grad``.

Random search over which k pixels change and to what: each pixel of the set takes a random
corner of the box (lo or hi in each channel), the extreme values a sparse change wants. Every
query swaps a share of the set for as many pixels outside it, with fresh random corners, and
keeps the swap when the margin ``z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``)
drops. The share follows the paper's L0 schedule: p_init of the set at first, then p_init / 2,
4, 5, 6, 8, 10, 12, 15 and 20 after 0, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000
queries (rescaled to the budget), at least one pixel.

Differences from the paper's code: every image draws its own swap (the code draws one set of
list positions for the batch); a pixel taken into the set always changes colour (the code makes
sure of it only when one pixel is swapped, so half the pixels it adds on a black MNIST background
stay black): a random corner that equals the pixel's value has one random channel flipped;
targeted runs score the margin too (the code switches to cross-entropy); with every pixel in the
set (k = H * W) a query recolours pixels instead of swapping.
"""

from __future__ import annotations

import math

import torch

from robustkern.attacks.losses import is_adversarial, search_margin
from robustkern.attacks.results import finish
from robustkern.attacks.steps import leave_batch
from robustkern.checks import check_inputs, check_logits
from robustkern.types import Bounds

_AFTER = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-query budget
_DIVISORS = (1, 2, 4, 5, 6, 8, 10, 12, 15, 20)  # p_init's divisor before, between and after them


def sparse_rs(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    pixels: int,
    queries: int = 10000,
    p_init: float = 0.3,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Sparse-RS in L0 (Croce et al. 2022): a black-box random search over which ``pixels``
    pixels change and which box corner each takes; the model only runs forward, its mode
    untouched. A sample leaves the search once fooled.

    Args:
        model: a classifier returning logits (N, classes) (read through its outputs only).
        x: the images (N, C, H, W) within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        pixels: k, the most pixels (h, w) changed per image, 1 <= k <= H * W; all C channels of
            a pixel count as one (``min_norm``'s L0 counts every channel apart).
        queries: forward passes per sample (the first scores the random start).
        p_init: the share of the k pixels the first queries swap (the paper's 0.3 for
            untargeted L0; it used 0.1 with 100,000 queries for targeted runs).
        targeted: move towards the classes in ``y``.
        bounds: (lo, hi) of valid inputs; changed pixels take these values.
        generator: draws the pixels and their colours.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``): norms are the number of
            pixels changed where fooled (0 where the model already misclassified x, inf where
            not fooled); queries are the forward passes each sample used (0 for a sample
            already misclassified).

    Returns:
        x_adv: a fooled sample's first adversarial point, the others' lowest-margin point;
        samples already misclassified (targeted: already the target) unchanged. Then the
        extras asked for.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(
            f"sparse_rs needs images (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}"
        )
    labels = check_inputs(x, y, bounds, model=model)
    n, _, h, w = x.shape
    if isinstance(pixels, bool) or not isinstance(pixels, int) or not 1 <= pixels <= h * w:
        raise ValueError(f"pixels must be an integer in [1, H * W = {h * w}], got {pixels!r}")
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    x_nat = x.detach()
    with torch.no_grad():
        logits = model(x_nat)
        check_logits(logits, n, labels)
        success = is_adversarial(logits, y, targeted)
        result = x_nat.clone()
        used = torch.zeros(n, dtype=torch.int64, device=x.device)
        idx = (~success).nonzero().squeeze(1)
        if idx.numel():
            search = _Search(model, pixels, queries, p_init, targeted, bounds, generator, x.device)
            result[idx], success[idx], used[idx] = search(x_nat[idx], y[idx])
    changed = (result != x_nat).any(1).flatten(1).sum(1).float()
    norms = torch.where(success, changed, torch.full_like(changed, math.inf))
    return finish(model, x_nat, result, y, (return_success, return_norms, return_queries),
                  norm="l0", targeted=targeted, success=success, norms=norms,
                  queries=used)  # fmt: skip


def p_schedule(i: int, queries: int, p_init: float) -> float:
    """The share of the pixel set swapped at query ``i`` (0 scores the start)."""
    scaled = int(i / queries * 10000)
    return p_init / _DIVISORS[sum(scaled > t for t in _AFTER)]


class _Search:
    """``__call__(x_nat, y) -> (x_adv, fooled, queries)`` for samples not yet fooled."""

    def __init__(self, model, pixels, queries, p_init, targeted, bounds, generator, device):
        self.model, self.k, self.queries, self.p_init = model, pixels, queries, p_init
        self.targeted, self.generator, self.device = targeted, generator, device
        self.lo, self.hi = float(bounds[0]), float(bounds[1])

    def _margin(self, x, y):
        """(margin to minimise, fooled) per sample: one query."""
        return search_margin(self.model(x), y, self.targeted)

    def __call__(self, x_nat, y):
        n, device = x_nat.shape[0], x_nat.device
        out, found = x_nat.clone(), torch.zeros(n, dtype=torch.bool, device=device)
        used = torch.ones(n, dtype=torch.int64, device=device)
        # order: each sample's pixels (h * W + w), the first k in the set, the rest outside it
        order = self._rand((n, x_nat.shape[2] * x_nat.shape[3])).argsort(1)
        x = x_nat.clone()
        _put(x, order[:, : self.k], self._colours(x_nat, order[:, : self.k]))
        s = {"row": torch.arange(n, device=device), "x_nat": x_nat, "y": y, "x": x, "o": order}
        s["m"], fooled = self._margin(x, y)
        for i in range(1, self.queries):
            if bool(fooled.any()):
                fooled = leave_batch(s, fooled, out, found, used, i)
                if s["row"].numel() == 0:
                    break
            share = max(int(p_schedule(i, self.queries, self.p_init) * self.k), 1)
            x_new, o_new = self._propose(s, share)
            m_new, fooled = self._margin(x_new, s["y"])
            better = (m_new < s["m"]) | fooled
            s["x"] = torch.where(better.view(-1, 1, 1, 1), x_new, s["x"])
            s["o"] = torch.where(better[:, None], o_new, s["o"])
            s["m"] = torch.where(better, m_new, s["m"])
        rows = s["row"]  # the samples that used the whole budget
        out[rows], found[rows], used[rows] = s["x"], fooled, self.queries
        return out, found, used

    def _propose(self, s, share):
        """(image, order) with ``share`` pixels of the set back at x_nat and as many from
        outside it at new corners; with no pixel outside, ``share`` pixels recoloured."""
        x_nat, order = s["x_nat"], s["o"]
        n, hw = order.shape
        x_new = s["x"].clone()
        outside = hw - self.k
        if outside == 0:
            pix = order.gather(1, self._pick(n, self.k, share))
            _put(x_new, pix, self._colours(x_nat, pix, x_new))
            return x_new, order
        share = min(share, outside)
        leave, enter = self._pick(n, self.k, share), self.k + self._pick(n, outside, share)
        left, entered = order.gather(1, leave), order.gather(1, enter)
        _put(x_new, left, _take(x_nat, left))
        _put(x_new, entered, self._colours(x_nat, entered))
        return x_new, order.scatter(1, leave, entered).scatter(1, enter, left)

    def _colours(self, x_nat, pix, current=None):
        """(N, e, C): a random box corner per pixel in ``pix`` (N, e), none equal to the pixel's
        value in ``current`` (default x_nat): where one is, a random channel flips."""
        old = _take(x_nat if current is None else current, pix)
        high = self._randint(2, old.shape).bool()
        same = (_corner(old, high, self.lo, self.hi) == old).all(2, keepdim=True)
        channel = self._randint(old.shape[2], (*old.shape[:2], 1))
        high ^= same & (torch.arange(old.shape[2], device=old.device) == channel)
        return _corner(old, high, self.lo, self.hi)

    def _pick(self, n, size, e):
        """(N, e): e distinct random positions in [0, size) per sample."""
        return self._rand((n, size)).topk(e, dim=1).indices

    def _rand(self, shape):
        return torch.rand(shape, device=self.device, generator=self.generator)

    def _randint(self, high, shape):
        return torch.randint(0, high, shape, device=self.device, generator=self.generator)


def _corner(like: torch.Tensor, high: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """hi where ``high``, lo elsewhere, in like's dtype (exactly the bounds, as clamp gives)."""
    return torch.full_like(like, lo).masked_fill_(high, hi)


def _pixel_index(x: torch.Tensor, pix: torch.Tensor):
    """Index tensors for x.permute(0, 2, 3, 1) (N, H, W, C) at pixels ``pix`` (N, e)."""
    w = x.shape[3]
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return rows, pix // w, pix % w


def _take(x: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """(N, e, C): the values of x (N, C, H, W) at pixels ``pix`` (N, e), any layout."""
    return x.permute(0, 2, 3, 1)[_pixel_index(x, pix)]


def _put(x: torch.Tensor, pix: torch.Tensor, values: torch.Tensor) -> None:
    """In place: x (N, C, H, W) at pixels ``pix`` (N, e) takes ``values`` (N, e, C)."""
    x.permute(0, 2, 3, 1)[_pixel_index(x, pix)] = values
