"""Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020), L-inf and L2, CE and DLR losses, untargeted and
targeted (towards the top-k other classes), on the fused step and projection ops; and L1-APGD
(Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image classifiers",
ICML 2021) on the fused L1 ops.

The published schedule: initial step 2 eps per sample; momentum 0.75 (none on the first step);
checkpoints at 22 %, then intervals shrinking by 3 % of the budget down to 6 % (22, 41, 57, 70,
80, 87, 93, 99 for 100 steps); at a checkpoint a sample's step is halved and it restarts from its
best point when its loss rose in at most rho = 0.75 of the interval's steps, or when its step was
not halved at the previous checkpoint and its best loss has not improved since. Every sample
keeps its best (highest-loss) point and the last adversarial point found. The step loop never
synchronises with the host; the schedule is fixed by ``steps``.

L1 (the paper's adaptive sparsity): no momentum; initial step eps; each step moves the top
20 % of the coordinates by |grad| that can still move inside the box (``l1_step_``). Every
4 % of the budget the fraction becomes the best point's sparsity / 1.5 and the step is reset to
eps (and the sample restarts from its best point) where the sparsity fell by more than 5 %,
else divided by 1.5 (never below eps / 10). With ``large_eps`` the run spends 30 %, 30 % and
40 % of its steps at 3, 2 and 1 times eps, each stage starting from the previous one's best
point: the wider ball finds the few coordinates worth spending the budget on.
"""

from __future__ import annotations

import math

import torch

from robustkern import ops
from robustkern.attacks.gradients import loss_and_grad
from robustkern.attacks.losses import dlr, is_adversarial
from robustkern.attacks.pgd import NORMS
from robustkern.attacks.results import finish
from robustkern.attacks.steps import broadcast, l1_start
from robustkern.checks import check_choice, check_eps, check_inputs, check_logits
from robustkern.types import Bounds, PerSample

APGD_LOSSES = ("ce", "dlr")


def apgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: PerSample,
    norm: str = "linf",
    loss: str = "ce",
    targeted: bool = False,
    steps: int = 100,
    restarts: int = 1,
    n_targets: int = 9,
    rho: float = 0.75,
    momentum: float = 0.75,
    large_eps: bool = True,
    eot: int = 1,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    return_success: bool = False,
    return_norms: bool = False,
    return_queries: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Auto-PGD (Croce & Hein 2020): step size halved at checkpoints where progress stalls,
    momentum, the best point kept; APGD-CE, APGD-DLR and, targeted, APGD-T.

    Args:
        model: a classifier returning logits (N, classes); its train/eval mode and its
            parameters' ``.grad`` are left as they are (only the input's gradient is taken).
        x: the images (N, C, H, W), or any (N, ...) batch, within ``bounds``.
        y: int64 true labels (N,) (also when targeted: the targets are chosen from the logits).
        eps: the radius in the inputs' units, a number or (N,) per-sample radii.
        norm: "linf", "l2" or "l1".
        loss: "ce" or "dlr" (Croce & Hein's difference of logits ratio: at least 3 classes,
            4 when targeted).
        targeted: run once per target class, the 2nd, 3rd, ... highest clean logits
            (AutoAttack's APGD-T), each on the samples still classified correctly.
        steps: iterations per run; restarts: runs per sample (and target).
        n_targets: target classes when targeted (capped at the classes - 1).
        rho, momentum: the step-size rule's threshold and the momentum (the paper's 0.75;
            L-inf and L2).
        large_eps: L1 only: the 3x, 2x, 1x eps schedule (AutoAttack's L1 setting).
        eot: gradient passes averaged per step (expectation over transformation) for a model
            whose forward is random; each counts as a query.
        bounds: (lo, hi) of valid inputs. generator: the random starts' generator.
        early_stop: a sample leaves the batch once adversarial (evaluation use: the same
            outcome for less work, one host sync per step); without it the loop never syncs.
        return_success, return_norms, return_queries: the extras every attack returns after
            ``x_adv`` in this order (``robustkern.attacks.results``).

    Returns:
        x_adv: an adversarial point where one was found, else the highest-loss point; only
        correctly classified samples are attacked (the others are returned as x). Then the
        extras asked for.
    """
    labels = check_inputs(x, y, bounds, model=model)
    n = x.shape[0]
    check_choice(norm, NORMS, "norm")
    check_choice(loss, APGD_LOSSES, "loss")
    if min(steps, restarts, n_targets, eot) < 1:
        raise ValueError(
            f"steps, restarts, n_targets and eot must be >= 1, got {steps}, {restarts}, "
            f"{n_targets}, {eot}"
        )
    if not (0 < rho <= 1 and 0 <= momentum <= 1):
        raise ValueError(f"rho must be in (0, 1] and momentum in [0, 1], got {rho}, {momentum}")
    eps = check_eps(eps, n, finite=True)
    x_nat = x.detach()
    with torch.no_grad():
        logits = model(x_nat)
    check_logits(logits, n, labels)
    classes = logits.shape[1]
    if loss == "dlr" and classes < (4 if targeted else 3):
        raise ValueError(
            f"the DLR loss needs at least {4 if targeted else 3} classes, the model has {classes}"
        )
    success = is_adversarial(logits, y, False)
    result = x_nat.clone()
    queries = torch.zeros(n, dtype=torch.int64, device=x.device)
    targets = [None]
    if targeted:
        order = logits.argsort(dim=1)
        targets = [order[:, -k] for k in range(2, min(n_targets + 2, classes + 1))]
    for target in targets:
        for _ in range(restarts):
            idx = (~success).nonzero().squeeze(1)  # one sync per restart, none per step
            if idx.numel() == 0:
                break
            run = _Run(model, norm, loss, steps, rho, momentum, bounds, generator, labels,
                       early_stop, large_eps, eot)  # fmt: skip
            e = eps[idx] if isinstance(eps, torch.Tensor) else eps
            xa, fooled, used = run(x_nat[idx], y[idx], None if target is None else target[idx], e)
            result[idx], success[idx], queries[idx] = xa, fooled, queries[idx] + used
    return finish(model, x_nat, result, y, (return_success, return_norms, return_queries),
                  norm=norm, success=success, queries=queries)  # fmt: skip


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based) after which APGD checks its step size."""
    first, smallest = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    out, at, interval = [], 0, first
    while at + interval <= steps:
        at += interval
        out.append(at)
        interval = max(interval - shrink, smallest)
    return out


def l1_stages(steps: int) -> list[tuple[int, int]]:
    """(eps multiple, steps) of L1-APGD's large-eps schedule: 30 %, 30 %, the rest."""
    first = math.ceil(0.3 * steps)
    if steps < 3:
        return [(1, steps)]
    return [(3, first), (2, first), (1, steps - 2 * first)]


class _Run:
    """One APGD run on a batch: ``__call__(x_nat, y, target, eps) -> (x_adv, fooled, passes)``,
    passes: int64 (N,) gradient passes each sample went through.

    The per-sample state lives in one dict so that, with ``early_stop``, samples that became
    adversarial leave every tensor at once (one host sync per step to learn which)."""

    def __init__(self, model, norm, loss, steps, rho, momentum, bounds, generator, labels,
                 early_stop, large_eps=False, eot=1):  # fmt: skip
        self.model, self.norm, self.loss, self.steps = model, norm, loss, steps
        self.rho, self.momentum, self.generator = rho, momentum, generator
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.labels, self.early_stop = labels, early_stop
        self.large_eps, self.eot = large_eps and norm == "l1", eot
        self.step_op = ops.step_op(norm)
        self.project_op = ops.project_op(norm)

    def _loss(self, logits, y, target):
        if self.loss == "dlr":
            return dlr(logits, y, target)
        ce = torch.nn.functional.cross_entropy(
            logits.float(), y if target is None else target, reduction="none"
        )
        return ce if target is None else -ce

    def _evaluate(self, s):
        """Gradient, loss and "fooled" at s["x"] (eot more passes for each row still here)."""
        self.passes[s["row"]] += self.eot
        grad, logits, value = loss_and_grad(
            self.model,
            s["x"],
            lambda z: self._loss(z, s["y"], s.get("target")),
            self.labels,
            self.eot,
        )
        return grad, value, is_adversarial(logits, s["y"], False)

    def _project(self, x, s):  # onto the eps-ball around x_nat, then the bounds, in place
        self.project_op(x, s["x_nat"], 0.0, s["eps"], *self.bounds)

    def __call__(self, x_nat, y, target, eps):
        n, device = x_nat.shape[0], x_nat.device
        eps_t = torch.as_tensor(eps, dtype=torch.float32, device=device).expand(n).clone()
        self.passes = torch.zeros(n, dtype=torch.int64, device=device)
        if not self.large_eps:
            out, found, _ = self._single(x_nat, y, target, eps_t, self.steps, None)
            return out, found, self.passes
        noise = torch.empty_like(x_nat).normal_(generator=self.generator)
        start = None
        for scale, steps in l1_stages(self.steps):
            if start is None:
                start = l1_start(x_nat, noise, scale * eps_t, self.bounds)
            self.project_op(start, x_nat, 0.0, scale * eps_t, *self.bounds)
            # A point found at a wider eps is no answer: only the last stage's count.
            out, found, start = self._single(x_nat, y, target, scale * eps_t, steps, start,
                                             self.early_stop and scale == 1)  # fmt: skip
        return out, found, self.passes

    def _single(self, x_nat, y, target, eps_t, steps, start, early_stop=None):
        """One run of ``steps`` from ``start`` (None: a random start): (x_adv, fooled, best),
        best the highest-loss points (meaningful without early stopping)."""
        early_stop = self.early_stop if early_stop is None else early_stop
        n, device = x_nat.shape[0], x_nat.device
        out, found = x_nat.clone(), torch.zeros(n, dtype=torch.bool, device=device)
        s = {"row": torch.arange(n, device=device), "x_nat": x_nat, "y": y, "eps": eps_t}
        if target is not None:
            s["target"] = target
        s["x"] = self._start(x_nat, eps_t) if start is None else start.clone()
        self._project(s["x"], s)
        s["grad"], value, fooled = self._evaluate(s)
        s.update(
            step=(1 if self.norm == "l1" else 2) * eps_t, adv=s["x"].clone(),
            found=fooled.clone(), x_best=s["x"].clone(), grad_best=s["grad"].clone(),
            loss_best=value.clone(), x_old=s["x"].clone(), loss_prev=value,
            rises=torch.zeros(n, device=device),
            halved_last=torch.ones(n, dtype=torch.bool, device=device),
            loss_best_last=value.clone(),
        )  # fmt: skip
        if self.norm == "l1":
            self._sparsity_init(s, start)
            every = max(int(0.04 * steps), 1)
            check_at = list(range(every, steps + 1, every))
        else:
            check_at = checkpoints(steps)
        interval_start = 0
        for i in range(steps):
            if early_stop and not self._drop_fooled(s, out, found):
                break
            self._iterate(s, self.momentum if i > 0 else 1.0)
            if i + 1 in check_at:
                if self.norm == "l1":
                    self._checkpoint_l1(s)
                else:
                    self._checkpoint(s, i + 1 - interval_start)
                interval_start = i + 1
        if early_stop:
            self._drop_fooled(s, out, found)
        rows, keep = s["row"], broadcast(s["found"], s["x"])
        out[rows] = torch.where(keep, s["adv"], s["x_best"])
        found[rows] = s["found"]
        best = x_nat.clone()
        best[rows] = s["x_best"]
        return out, found, best

    def _step(self, s):
        """The fused step from s["x"] (L1: the sparse step at s["sparsity"])."""
        z = s["x"].clone()
        args = (0.0, 0.0, s["step"], s["eps"], *self.bounds)
        if self.norm == "l1":
            args = (*args, 0.0, s["sparsity"])
        self.step_op(z, s["x_nat"], s["grad"], *args)
        return z

    def _iterate(self, s, a):
        """One momentum step, then the gradient and the best-point bookkeeping at the new x."""
        x = s["x"]
        x_new = self._step(s)
        if self.norm != "l1":  # L1-APGD takes no momentum
            x_new = x + a * (x_new - x) + (1 - a) * (x - s["x_old"])
            self._project(x_new, s)
        s["x_old"], s["x"] = x, x_new
        s["grad"], value, fooled = self._evaluate(s)
        s["adv"] = torch.where(broadcast(fooled, x_new), x_new, s["adv"])
        s["found"] = s["found"] | fooled
        s["rises"] = s["rises"] + (value > s["loss_prev"])
        s["loss_prev"] = value
        better = value > s["loss_best"]
        s["x_best"] = torch.where(broadcast(better, x_new), x_new, s["x_best"])
        s["grad_best"] = torch.where(broadcast(better, x_new), s["grad"], s["grad_best"])
        s["loss_best"] = torch.where(better, value, s["loss_best"])

    def _checkpoint(self, s, interval):
        """Halve the step and go back to the best point where progress stalled."""
        halve = (s["rises"] <= interval * self.rho) | (
            ~s["halved_last"] & (s["loss_best_last"] >= s["loss_best"])
        )
        s["step"] = torch.where(halve, s["step"] / 2, s["step"])
        self._back_to_best(s, halve)
        s["halved_last"], s["loss_best_last"] = halve, s["loss_best"].clone()
        s["rises"] = torch.zeros_like(s["rises"])

    def _back_to_best(self, s, where):
        s["x"] = torch.where(broadcast(where, s["x"]), s["x_best"], s["x"])
        s["grad"] = torch.where(broadcast(where, s["x"]), s["grad_best"], s["grad"])

    def _sparsity_init(self, s, start):
        """The moved fraction: 20 % from a random start, the start's sparsity / 1.5 else."""
        d = s["x"][0].numel()
        if start is None:
            s["sparsity"] = torch.full_like(s["eps"], 0.2)
            s["nonzero"] = torch.full_like(s["eps"], float(d))
        else:
            s["nonzero"] = _nonzero(s["x"] - s["x_nat"])
            s["sparsity"] = (s["nonzero"] / d / 1.5).clamp(1 / d, 1)

    def _checkpoint_l1(self, s):
        """The paper's adaptive sparsity: follow the best point's sparsity; reset the step where
        it fell by more than 5 % (and go back to the best point), else shrink it."""
        d = s["x"][0].numel()
        nonzero = _nonzero(s["x_best"] - s["x_nat"])
        fell = nonzero / s["nonzero"].clamp_min(1) < 0.95
        s["sparsity"] = (nonzero / d / 1.5).clamp(1 / d, 1)
        s["step"] = torch.where(fell, s["eps"], s["step"] / 1.5)
        s["step"] = torch.minimum(torch.maximum(s["step"], s["eps"] / 10), s["eps"])
        s["nonzero"] = nonzero
        self._back_to_best(s, fell)

    @staticmethod
    def _drop_fooled(s, out, found) -> bool:
        """Writes the fooled samples' adversarial points to ``out`` and removes them from the
        state; False when none is left. One host sync."""
        fooled = s["found"]
        if not bool(fooled.any()):
            return True
        rows = s["row"][fooled]
        out[rows], found[rows] = s["adv"][fooled], True
        keep = ~fooled
        for key, value in s.items():
            s[key] = value[keep]
        return bool(keep.any())

    def _start(self, x_nat, eps_t):
        """x_nat + eps * t / ||t|| (uniform t, L-inf; Gaussian t, L2), as AutoAttack; L1:
        Gaussian noise projected onto the ball (``steps.l1_start``)."""
        t = torch.empty_like(x_nat)
        if self.norm == "linf":
            t.uniform_(-1.0, 1.0, generator=self.generator)
            scale = t.flatten(1).abs().amax(1)
        else:
            t.normal_(generator=self.generator)
            if self.norm == "l1":
                return l1_start(x_nat, t, eps_t, self.bounds)
            scale = t.flatten(1).norm(dim=1)
        return x_nat + t * broadcast(eps_t / scale.clamp_min(1e-12), t).to(t.dtype)


def _nonzero(delta: torch.Tensor) -> torch.Tensor:
    """Per sample: how many coordinates of delta are not 0 (float32)."""
    return delta.flatten(1).ne(0).sum(1).float()
