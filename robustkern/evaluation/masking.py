"""Gradient-masking indicators: automated versions of the checks in "On Evaluating Adversarial
Robustness" (Carlini et al. 2019), AutoAttack's ``checks.py`` and "Indicators of Attack
Failure" (Pintor et al. 2022). Each returns a verdict, the figure behind it and one line.

Comparative checks ask whether a weaker attack (black-box, transfer, single step, random
sampling, a longer run) breaks a point that the white-box reference, APGD-CE followed by
targeted APGD-DLR, left robust. Both attacks run on the same images, so the verdict comes from
paired tests (``robustkern.stats.paired_verdict``): pass when no point; fail when the other
attack is significantly stronger (McNemar) or breaks significantly more than 1 % of the
attacked points; warn for a point or two within that 1 %; inconclusive when more points fell
but the sample is too small to tell a failing attack from noise.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustkern import attacks
from robustkern.attacks.gradients import GradientUnavailable, loss_and_grad
from robustkern.attacks.steps import box_diameter, random_in_ball
from robustkern.checks import check_choice, check_inputs
from robustkern.evaluation.core import RANDOM_DRIFT, REPEATS, Cascade, judged, output_drift
from robustkern.evaluation.single import single_outcome
from robustkern.modes import eval_mode, model_device
from robustkern.stats import ALPHA, exceeds, mcnemar, paired_verdict

WARN_FRACTION = 0.01  # comparative checks: up to this fraction of points is a warning
EOT = 20  # gradient passes per step against a randomised model (AutoAttack's rand version)
# The labels-only attack per norm (none is built for L1).
HARD_LABEL = {"linf": ("rays", "RayS"), "l2": ("hop_skip_jump", "HopSkipJump")}


@dataclass
class Indicator:
    name: str
    verdict: str  # one of GRADES
    value: float  # the figure behind the verdict (see detail)
    detail: str  # one line: what was measured and what it means

    def __str__(self) -> str:
        return f"[{self.verdict.upper():4}] {self.name}: {self.detail}"

    def to_dict(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "value": self.value,
                "detail": self.detail}  # fmt: skip


def indicators(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    bounds: tuple[float, float] = (0.0, 1.0),
    steps: int = 100,
    queries: int = 1000,
    samples: int = 32,
    surrogate: torch.nn.Module | None = None,
    seed: int = 0,
) -> list[Indicator]:
    """Runs every indicator on (x, y) (a few hundred points suffice) and returns the results.

    ``steps``: APGD iterations of the white-box reference; ``queries``: Square's budget;
    ``samples``: random points per input for the random-sampling check; ``surrogate``: a model
    to craft transfer attacks on (the transfer check runs only with one). The model runs in
    eval mode (its mode is restored) on its own device."""
    labels = check_inputs(x, y, bounds)
    check_choice(norm, attacks.NORMS, "norm")
    if not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    with eval_mode(model):  # before the first forward: train-mode BatchNorm would differ
        checks = _Checks(model, x, y, norm, float(eps), bounds, steps, queries, samples, seed,
                         labels)  # fmt: skip
        out = [checks.softmax_outputs(), checks.randomised_outputs(), checks.zero_gradients()]
        out += [checks.silent_success(), checks.black_box(), checks.single_step()]
        if norm in HARD_LABEL:
            out.append(checks.hard_label())
        out += [checks.random_sampling(), checks.more_steps(), checks.unbounded()]
        out.append(checks.eps_curve())
        if surrogate is not None:
            with eval_mode(surrogate):
                out.append(checks.transfer(surrogate))
    return out


def _grade(count: int, total: int) -> str:
    if count == 0:
        return "pass"
    return "warn" if count <= max(1.0, WARN_FRACTION * total) else "fail"


class _Checks:
    """The indicators on one batch; the white-box reference is computed once, on first use."""

    def __init__(self, model, x, y, norm, eps, bounds, steps, queries, samples, seed, labels):
        self.model, self.x, self.y, self.norm, self.eps = model, x, y, norm, eps
        self.bounds, self.steps, self.queries, self.samples = bounds, steps, queries, samples
        self.seed, self.labels = seed, labels
        with torch.no_grad():
            self.logits = model(x)
        self.correct = self.logits.argmax(1) == y
        self.n_correct = int(self.correct.sum())
        self._white = None
        self.white_error = None  # why the white-box reference could not run, if it could not

    def generator(self) -> torch.Generator:
        return torch.Generator(self.x.device).manual_seed(self.seed)

    @property
    def white(self) -> torch.Tensor:
        """bool (N,): misclassified at x or broken by APGD-CE then targeted APGD-DLR."""
        if self._white is None:
            fooled = ~self.correct
            cascade = Cascade(
                "standard",
                eps=self.eps,
                norm=self.norm,
                bounds=self.bounds,
                steps=self.steps,
                generator=self.generator(),
                only=("apgd-ce", "apgd-t"),
            )
            idx = self.correct.nonzero().squeeze(1)
            try:
                if idx.numel():
                    fooled[idx] = cascade(self.model, self.x[idx], self.y[idx])[1]
            except GradientUnavailable as e:
                self.white_error = str(e)
            self._white = fooled
        return self._white

    def _beats_white(self, name: str, fooled: torch.Tensor, what: str) -> Indicator:
        extra = int((fooled & self.correct & ~self.white).sum())
        missed = int((self.white & self.correct & ~fooled).sum())  # white-box only
        detail = (
            f"{what} broke {extra} of {self.n_correct} correctly classified points that the "
            f"white-box attack left robust"
        )
        if self.white_error:
            detail += " (the white-box attack could not run: no input gradient)"
            return Indicator(name, "fail", float(extra), detail)
        verdict, test = paired_verdict(extra, missed, self.n_correct, WARN_FRACTION)
        detail += "" if verdict == "pass" else f" ({test})"
        detail += {
            "fail": ": the white-box attack is failing (masked or obfuscated gradients)",
            "inconclusive": ": too few images to tell a failing white-box attack from noise; "
            "rerun on more images",
        }.get(verdict, "")
        return Indicator(name, verdict, float(extra), detail)

    def softmax_outputs(self) -> Indicator:
        z = self.logits.float()
        rows_sum_to_one = ((z >= 0).all(1) & ((z.sum(1) - 1).abs() < 1e-3)).float().mean().item()
        if rows_sum_to_one > 0.5:
            return Indicator(
                "softmax outputs",
                "fail",
                rows_sum_to_one,
                f"{100 * rows_sum_to_one:.0f} % of output rows are probabilities "
                "(non-negative, sum 1): attack the logits, not the softmax",
            )
        return Indicator(
            "softmax outputs",
            "pass",
            rows_sum_to_one,
            "outputs are not probability vectors (logits, as attacks expect)",
        )

    def randomised_outputs(self) -> Indicator:
        changed, drift = output_drift(self.model, self.x, self.logits)
        detail = (
            f"two identical forward passes: {changed} of {len(self.x)} predictions changed, "
            f"largest relative logit change {drift:.2g}"
        )
        if changed or drift > RANDOM_DRIFT:
            plain, eot = self._robust_under_eot(1), self._robust_under_eot(EOT)
            detail += (
                f": randomised model. APGD-CE leaves {plain} robust with single gradients, "
                f"{eot} with the expectation over {EOT} gradient passes (each point judged "
                f"over {REPEATS} forwards): report the latter (evaluate's 'rand' preset)"
            )
            return Indicator("randomised outputs", "fail" if changed else "warn", drift, detail)
        return Indicator("randomised outputs", "pass", drift, detail)

    def _robust_under_eot(self, eot: int) -> str:
        """'12 of 50 (24.0 %)': the points APGD-CE with ``eot`` gradient passes per step leaves
        correct in every one of REPEATS forwards."""
        final = self.x.clone()
        idx = self.correct.nonzero().squeeze(1)
        try:
            if idx.numel():
                final[idx] = attacks.apgd(self.model, self.x[idx], self.y[idx], eps=self.eps,
                                          norm=self.norm, steps=self.steps, eot=eot,
                                          bounds=self.bounds, generator=self.generator(),
                                          early_stop=True)  # fmt: skip
        except GradientUnavailable:
            return "(no input gradient)"
        robust = int((judged(self.model, final, self.y, REPEATS).all(1) & self.correct).sum())
        return f"{robust} of {len(self.x)} ({100 * robust / max(len(self.x), 1):.1f} %)"

    def zero_gradients(self) -> Indicator:
        try:
            grad, _, _ = loss_and_grad(
                self.model,
                self.x,
                lambda z: F.cross_entropy(z.float(), self.y, reduction="none"),
                self.labels,
            )
        except GradientUnavailable:
            return Indicator(
                "zero gradients",
                "fail",
                1.0,
                "the output has no gradient with respect to the input at all "
                "(detached or non-differentiable forward)",
            )
        zero = int((grad.flatten(1) == 0).all(1).sum())
        detail = f"{zero} of {len(self.x)} inputs have an all-zero loss gradient"
        if zero:
            detail += " (quantised input, saturated softmax or a non-differentiable layer)"
        return Indicator("zero gradients", _grade(zero, len(self.x)), float(zero), detail)

    def silent_success(self) -> Indicator:
        """An attack reported an adversarial point that a fresh forward does not confirm."""
        idx = self.correct.nonzero().squeeze(1)
        if idx.numel() == 0:
            return Indicator("silent success", "pass", 0.0, "no correctly classified point")
        try:
            x_adv, claimed = attacks.apgd(
                self.model,
                self.x[idx],
                self.y[idx],
                eps=self.eps,
                norm=self.norm,
                steps=self.steps,
                bounds=self.bounds,
                generator=self.generator(),
                return_success=True,
            )
        except GradientUnavailable:
            return Indicator(
                "silent success",
                "fail",
                float("nan"),
                "APGD could not run: the model gives no input gradient",
            )
        with torch.no_grad():
            confirmed = self.model(x_adv).argmax(1) != self.y[idx]
        lost = int((claimed & ~confirmed).sum())
        detail = (
            f"{lost} of {int(claimed.sum())} adversarial points APGD found are not adversarial "
            "when scored again"
        )
        if lost:
            detail += " (outputs depend on randomness or on the batch: results are unreliable)"
        grade = _grade(lost, max(self.n_correct, 1))
        return Indicator("silent success", grade, float(lost), detail)

    def black_box(self) -> Indicator:
        fooled = self._on_correct(
            lambda x, y: attacks.square(
                self.model,
                x,
                y,
                eps=self.eps,
                norm=self.norm,
                queries=self.queries,
                bounds=self.bounds,
                generator=self.generator(),
                return_success=True,
            )[1]
        )
        return self._beats_white(
            "black box beats white box", fooled, f"Square ({self.queries} queries)"
        )

    def hard_label(self) -> Indicator:
        name, title = HARD_LABEL[self.norm]
        options = {"eps": self.eps, "norm": self.norm, "bounds": self.bounds,
                   "queries": self.queries, "generator": self.generator()}  # fmt: skip
        run = single_outcome(name, options)
        fooled = self._on_correct(lambda x, y: run(self.model, x, y)[1])
        return self._beats_white(
            "hard-label black box beats white box", fooled, f"{title} ({self.queries} queries)"
        )

    def transfer(self, surrogate) -> Indicator:
        x_adv = attacks.apgd(
            surrogate,
            self.x,
            self.y,
            eps=self.eps,
            norm=self.norm,
            steps=self.steps,
            bounds=self.bounds,
            generator=self.generator(),
        )
        with torch.no_grad():
            fooled = self.model(x_adv).argmax(1) != self.y
        return self._beats_white(
            "transfer beats white box", fooled, "APGD-CE crafted on the surrogate"
        )

    def single_step(self) -> Indicator:
        def one_step(x, y):
            x_adv = attacks.pgd(
                self.model,
                x,
                y,
                eps=self.eps,
                norm=self.norm,
                steps=1,
                alpha=self.eps,
                random_start=False,
                bounds=self.bounds,
            )
            with torch.no_grad():
                return self.model(x_adv).argmax(1) != y

        fooled = self._guarded(one_step)
        what = "FGSM" if self.norm == "linf" else "one L2 gradient step of size eps"
        return self._beats_white("single step beats iterative", fooled, what)

    def random_sampling(self) -> Indicator:
        g = self.generator()

        def sample(x, y):
            fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            for _ in range(self.samples):
                with torch.no_grad():
                    fooled |= (
                        self.model(random_in_ball(x, self.eps, self.norm, self.bounds, g)).argmax(1)
                        != y
                    )
            return fooled

        fooled = self._on_correct(sample)
        return self._beats_white(
            "random sampling beats white box",
            fooled,
            f"{self.samples} random points in the eps-ball",
        )

    def more_steps(self) -> Indicator:
        fooled = self._apgd_fooled(self.eps, steps=4 * self.steps, restarts=2)
        return self._beats_white(
            "more steps lower robust accuracy",
            fooled,
            f"APGD-CE with {4 * self.steps} steps and 2 restarts",
        )

    def unbounded(self) -> Indicator:
        """With eps covering the whole box every point must become misclassified."""
        diameter = self._diameter()
        fooled = self._apgd_fooled(diameter)
        robust = int((self.correct & ~fooled).sum())
        detail = (
            f"APGD-CE with eps = {diameter:.3g} (the whole box) left {robust} of "
            f"{self.n_correct} points robust"
        )
        if robust:
            detail += ": an unbounded attack must reach 100 % error"
        return Indicator("unbounded attack", _grade(robust, self.n_correct), float(robust), detail)

    def eps_curve(self) -> Indicator:
        """Robust accuracy must fall as eps grows and reach chance once eps is half the box;
        both judged by tests on the same images, so a point or two is not a failure."""
        name, classes, half = "robust accuracy vs eps", self.logits.shape[1], self._diameter() / 2
        grid = [self.eps / 4, self.eps / 2]
        while grid[-1] < half:
            grid.append(min(grid[-1] * 2, half))
        robust = [self.correct & ~self._apgd_fooled(e) for e in grid]
        n = len(self.x)
        curve = ", ".join(
            f"{e:.3g}: {100 * r.float().mean().item():.1f} %"
            for e, r in zip(grid, robust, strict=True)
        )
        # per step of the grid: b points robust only at the larger eps, c only at the smaller
        steps = [(int((b & ~a).sum()), int((a & ~b).sum())) for a, b in itertools.pairwise(robust)]
        b, c = max(steps, key=lambda bc: bc[0] - bc[1], default=(0, 0))
        rise = (b - c) / n
        if b > c:
            p = mcnemar(b, c)
            verdict = "fail" if p < ALPHA else "inconclusive" if rise > WARN_FRACTION else "warn"
            detail = f"robust accuracy rises with eps ({curve}; McNemar p = {p:.2g})"
            return Indicator(name, verdict, rise, detail)
        left, chance = int(robust[-1].sum()), 1 / classes
        if left / n > chance + WARN_FRACTION:
            p = exceeds(left, n, chance + WARN_FRACTION)
            detail = (
                f"robust accuracy stays above chance ({100 * chance:.0f} %) at large eps "
                f"({curve}; p = {p:.2g})"
            )
            return Indicator(name, "fail" if p < ALPHA else "inconclusive", left / n, detail)
        return Indicator(name, "pass", left / n, f"falls with eps and reaches chance ({curve})")

    def _diameter(self) -> float:
        return box_diameter(self.x, self.norm, self.bounds)

    def _on_correct(self, attack) -> torch.Tensor:
        """bool (N,): attack(x, y) -> fooled, run on the correctly classified points only."""
        fooled = ~self.correct
        idx = self.correct.nonzero().squeeze(1)
        if idx.numel():
            fooled[idx] = attack(self.x[idx], self.y[idx])
        return fooled

    def _apgd_fooled(self, eps: float, steps: int | None = None, restarts: int = 1):
        """bool (N,): misclassified at x or broken by APGD-CE at eps (early stop: same result)."""
        return self._guarded(
            lambda x, y: attacks.apgd(self.model, x, y, eps=eps, norm=self.norm,
                                      steps=steps or self.steps, restarts=restarts,
                                      bounds=self.bounds, generator=self.generator(),
                                      early_stop=True, return_success=True)[1]
        )  # fmt: skip

    def _guarded(self, attack) -> torch.Tensor:
        """_on_correct for gradient attacks: without an input gradient nothing is broken."""
        try:
            return self._on_correct(attack)
        except GradientUnavailable:
            return ~self.correct
