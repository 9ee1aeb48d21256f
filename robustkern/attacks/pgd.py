"""Projected gradient descent (Madry et al. 2018), L-inf, L2 and L1, on the fused step ops.

L1 steps are sparse (``l1_step_``): sign(grad) on the ``sparsity`` fraction of coordinates with
the largest |grad| that can still move inside the box, as in Tramer & Boneh's sparse L1 descent
and L1-APGD; a dense L1 step would spread the budget over every pixel and find little."""

from __future__ import annotations

import torch

from robustkern import ops
from robustkern.attacks.gradients import input_grad
from robustkern.attacks.losses import LOSSES, attack_loss, is_adversarial
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast, keep_best, l1_start, noise_like
from robustkern.checks import (
    check_choice,
    check_eps,
    check_inputs,
    check_labels,
    check_logits,
    warn_if_probabilities,
)
from robustkern.types import Bounds, PerSample, Shard

NORMS = ("linf", "l2", "l1")
L1_SPARSITY = 0.05  # the fraction of coordinates an L1 step moves by default


def pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    steps: int = 10,
    alpha: PerSample | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    sparsity: float = L1_SPARSITY,
    eot: int = 1,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
    shard: Shard | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``eps``
    (Madry et al.), on the fused step ops; works under ``torch.autocast`` and channels_last.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 labels (N,); with ``targeted`` the target classes.
        eps: the radius in the inputs' units, a number or a 1-D tensor (N,) of per-sample radii.
        norm: "linf", "l2" or "l1".
        steps: gradient steps per restart.
        alpha: the step size (input units; number or (N,)); default 2.5 * eps / steps.
        random_start: start from a random point of the ball (L-inf: uniform; L2: uniform
            radius and direction; L1: Gaussian noise projected onto the ball), else from x.
        restarts: runs per sample; each keeps its best point (adversarial first, then the
            highest loss).
        targeted: move towards the classes in ``y`` instead of away from them.
        loss: "ce" (cross-entropy) or "margin" (the logit margin).
        bounds: (lo, hi) of valid inputs; every step is clipped to them.
        generator: the random starts' generator.
        early_stop: a sample leaves the batch once adversarial and keeps that point
            (evaluation use: one host sync per step); without it the loop never syncs
            (training use, CUDA-graph friendly).
        sparsity: L1 only: the fraction of coordinates each step moves, in (0, 1].
        eot: gradient passes averaged per step (expectation over transformation) for a model
            whose forward is random; each counts as a query.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``); success is already known
            with early stopping or restarts.
        shard: (offset, total): x is rows offset.. of a batch of ``total`` split over
            data-parallel ranks; random starts are drawn as for the whole batch.

    Returns:
        x_adv (N, ...) in x's dtype and layout, then the extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    n = x.shape[0]
    eps, alpha = _checked_settings(norm, loss, steps, restarts, eps, alpha, n)
    if not 0 < sparsity <= 1 or eot < 1:
        raise ValueError(f"sparsity must be in (0, 1] and eot >= 1, got {sparsity}, {eot}")
    x_nat = x.detach()
    run = _Run(model, norm, steps, random_start, targeted, loss, bounds, generator, labels, shard,
               sparsity, eot)  # fmt: skip
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    if n == 0:
        x_adv, success = x_nat.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    elif early_stop:
        x_adv, success = run.early_stop(x_nat, y, eps, alpha, restarts, queries)
    else:
        x_adv, success = run.fixed(x_nat, y, eps, alpha, restarts, return_success or return_norms)
        # the forward that keeps each restart's best point is part of the attack; the one that
        # only reports success (one restart) is not
        queries += steps * restarts * eot + (restarts if restarts > 1 else 0)
    return finish(model, x_nat, x_adv, y, (return_success, return_norms, return_queries),
                  norm=norm, targeted=targeted, success=success, queries=queries)  # fmt: skip


class _Run:
    """One attack's settings; `fixed` and `early_stop` are the two loops over them."""

    def __init__(self, model, norm, steps, random_start, targeted, loss, bounds, generator,
                 labels, shard, sparsity=L1_SPARSITY, eot=1):  # fmt: skip
        self.model, self.norm, self.steps, self.random_start = model, norm, steps, random_start
        self.targeted, self.loss, self.bounds, self.generator = targeted, loss, bounds, generator
        self.labels, self.shard, self.sparsity, self.eot = labels, shard, sparsity, eot

    def _grad(self, x_adv, y):
        return input_grad(self.model, x_adv, y, self.loss, self.targeted, self.labels, self.eot)

    def fixed(self, x_nat, y, eps, alpha, restarts, want_success):
        """(x_adv, success or None); success costs one forward when restarts == 1."""
        step = self._step_fn(alpha, eps)
        best = None
        for _ in range(restarts):
            x_adv = self._start(x_nat, eps)
            for _ in range(self.steps):
                grad, _ = self._grad(x_adv, y)
                step(x_adv, x_nat, grad)
            if restarts > 1 or want_success:
                best = self._keep_best(best, x_adv, y)
        return (best[0], best[1]) if best is not None else (x_adv, None)

    def early_stop(self, x_nat, y, eps, alpha, restarts, queries):
        """(x_adv, fooled): each sample leaves once adversarial; ``queries`` counts each
        sample's passes (no host sync for it)."""
        result, done = (
            x_nat.clone(),
            torch.zeros(x_nat.shape[0], dtype=torch.bool, device=x_nat.device),
        )
        for _ in range(restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xn, yy, e, a = x_nat[idx], y[idx], _take(eps, idx), _take(alpha, idx)
            # Starts drawn for the whole batch, as the fixed loop does: a sample's start does
            # not depend on which others are done, nor, under shard=, on the rank count.
            xa, step = self._start(x_nat, eps)[idx], self._step_fn(a, e)
            for i in range(self.steps + 1):
                if i < self.steps:
                    grad, logits = self._grad(xa, yy)
                    queries[idx] += self.eot
                else:
                    with torch.no_grad():
                        logits = self.model(xa)
                    queries[idx] += 1
                fooled = is_adversarial(logits, yy, self.targeted)
                hit, keep = fooled.nonzero().squeeze(1), (~fooled).nonzero().squeeze(1)
                result[idx[hit]] = xa[hit]  # the first adversarial point of each sample
                done[idx[hit]] = True
                if i == self.steps:  # the rest keep this restart's last point
                    result[idx[keep]] = xa[keep]
                if keep.numel() == 0 or i == self.steps:
                    break
                if hit.numel():
                    idx, xa, xn, yy, grad = idx[keep], xa[keep], xn[keep], yy[keep], grad[keep]
                    e, a = _take(e, keep), _take(a, keep)
                    step = self._step_fn(a, e)
                step(xa, xn, grad)
        return result, done

    def _step_fn(self, alpha, eps):
        """The fused step with its scalars split once (and CUDA values checked once)."""
        op = ops.step_op(self.norm)
        args = ops.step_args(alpha, eps, self.bounds, self.sparsity if self.norm == "l1" else None)
        return lambda x_adv, x_nat, grad: op(x_adv, x_nat, grad, *args)

    def _start(self, x_nat, eps):
        """x_nat plus uniform noise in the L-inf ball, or a uniform-radius random direction for
        L2 (as in Madry et al. and torchattacks), projected and clipped to bounds."""
        x_adv = x_nat.clone()
        if not self.random_start:
            return x_adv
        g, e = self.generator, broadcast(eps, x_nat)
        if self.norm == "linf":
            noise = noise_like(x_nat, lambda t: t.uniform_(-1.0, 1.0, generator=g), self.shard)
            x_adv += noise * e
            ops.linf_project_(x_adv, x_nat, eps=eps, bounds=self.bounds)
        elif self.norm == "l1":
            noise = noise_like(x_nat, lambda t: t.normal_(generator=g), self.shard)
            return l1_start(x_nat, noise, eps, self.bounds)
        else:
            noise = noise_like(x_nat, lambda t: t.normal_(generator=g), self.shard)
            per_sample = x_nat.new_empty(x_nat.shape[0])
            radius = noise_like(per_sample, lambda t: t.uniform_(generator=g), self.shard)
            norms = noise.flatten(1).norm(dim=1).clamp_min(1e-12)
            x_adv += noise * broadcast(radius / norms, x_nat) * e
            ops.l2_project_(x_adv, x_nat, eps=eps, bounds=self.bounds)
        return x_adv

    def _keep_best(self, best, x_adv, y):
        """Per sample, keep the adversarial point, else the highest-loss one (no host sync)."""
        with torch.no_grad():
            logits = self.model(x_adv)
        fooled = is_adversarial(logits, y, self.targeted)
        return keep_best(best, x_adv, fooled, attack_loss(logits, y, self.loss, self.targeted))


class GraphedPGD:
    """PGD with fixed steps whose whole step loop (``steps`` x forward, input-backward and fused
    step) is captured once as a CUDA graph and replayed for each batch: no kernel launches or
    Python work per step, which is what small batches on a large GPU pay for.

    ``x`` and ``y`` are an example batch: every later call takes tensors of the same shape,
    dtype and device. eps, alpha, norm, loss, bounds and the model's train/eval mode are fixed
    at capture; the model's weights are read at each replay (in-place updates are seen). The
    random start is drawn per call, outside the graph, from ``generator``. ``autocast``: e.g.
    ``torch.bfloat16`` captures the model under autocast. Returns x_adv only: the captured graph
    has fixed outputs, so there are no return_success/norms/queries flags (score x_adv with the
    model). CUDA only::

        attack = GraphedPGD(model, x, y, eps=8 / 255)
        for x, y in loader:  # same batch shape each time
            x_adv = attack(x, y)
    """

    def __init__(
        self,
        model,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        eps: PerSample,
        norm: str = "linf",
        steps: int = 10,
        alpha: PerSample | None = None,
        random_start: bool = True,
        targeted: bool = False,
        loss: str = "ce",
        bounds: Bounds = (0.0, 1.0),
        autocast: torch.dtype | None = None,
        warmup: int = 3,
    ):
        if not x.is_cuda:
            raise ValueError(
                f"GraphedPGD captures a CUDA graph: x must be on a GPU, got {x.device}"
            )
        labels = check_inputs(x, y, bounds, model=model)
        n = x.shape[0]
        self.eps, alpha = _checked_settings(norm, loss, steps, 1, eps, alpha, n)
        self.x_nat, self.y = x.detach().clone(), y.clone()
        self.x_adv = self.x_nat.clone()
        with torch.no_grad():
            logits = model(self.x_nat)
        check_logits(logits, n, labels)
        warn_if_probabilities(model, logits)  # its host sync must not fall inside the capture
        self.classes = logits.shape[1]
        self.labels = (0, self.classes - 1)  # any label a later batch may bring
        self.autocast = autocast
        self._run = _Run(model, norm, steps, random_start, targeted, loss, bounds, None,
                         self.labels, None)  # fmt: skip
        self._step = self._run._step_fn(alpha, self.eps)
        side = torch.cuda.Stream(x.device)  # warm-up (lazy handles, autotuning) off the graph
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.x_adv.copy_(self.x_nat)
                self._loop()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._loop()

    def _loop(self) -> None:
        """The captured work; autocast's weight cache must be off while capturing."""
        run = self._run
        with torch.autocast("cuda", self.autocast or torch.bfloat16, enabled=bool(self.autocast),
                            cache_enabled=False):  # fmt: skip
            for _ in range(run.steps):
                grad, _ = input_grad(run.model, self.x_adv, self.y, run.loss, run.targeted,
                                     self.labels)  # fmt: skip
                self._step(self.x_adv, self.x_nat, grad)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_adv for this batch (a fresh tensor; the graph's buffers are reused)."""
        if (
            x.shape != self.x_nat.shape
            or x.dtype != self.x_nat.dtype
            or x.device != self.x_nat.device
        ):
            raise ValueError(
                f"GraphedPGD was captured for x of shape {tuple(self.x_nat.shape)}, "
                f"{self.x_nat.dtype} on {self.x_nat.device}; got {tuple(x.shape)}, {x.dtype} "
                f"on {x.device}: build one GraphedPGD per batch shape"
            )
        check_labels(check_inputs(x, y, self._run.bounds), self.classes)
        self.x_nat.copy_(x)
        self.y.copy_(y)
        self._run.generator = generator
        self.x_adv.copy_(self._run._start(self.x_nat, self.eps))
        self.graph.replay()
        return self.x_adv.clone()


def _checked_settings(norm, loss, steps, restarts, eps, alpha, n) -> tuple:
    """(eps, alpha) checked, alpha defaulting to 2.5 * eps / steps, after the other options."""
    check_choice(norm, NORMS, "norm")
    check_choice(loss, LOSSES, "loss")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    eps = check_eps(eps, n)
    if alpha is not None:
        return eps, check_eps(alpha, n, "alpha", finite=True)
    unbounded = bool(eps.isinf().any()) if isinstance(eps, torch.Tensor) else eps == float("inf")
    if unbounded:
        raise ValueError("eps=inf needs a finite alpha (the default is 2.5 * eps / steps)")
    return eps, 2.5 * eps / steps


def _take(v: PerSample, idx: torch.Tensor) -> PerSample:
    return v[idx] if isinstance(v, torch.Tensor) else v
