"""Fused linf_step_/l2_step_ against torchattacks' eager step chain, the eager reference and
torch.compile of the reference; and the fraction of measured copy bandwidth."""

import pytest
import torch

from bench.timing import blocked_medians, median_seconds
from robustkern import ops, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TITLE = "Projected step, 512x3x32x32 float32 (time per call; speed-up of the fused op)"


def torchattacks_linf_chain(x_adv, x, grad, alpha, eps):
    """The ops torchattacks.PGD runs after the gradient (add, sign, mul, sub, clamp, add, clamp)."""
    x_adv = x_adv.detach() + alpha * grad.sign()
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1).detach()


def torchattacks_l2_chain(x_adv, x, grad, alpha, eps):
    """The ops torchattacks.PGDL2 runs after the gradient."""
    n = len(x)
    grad_norms = torch.norm(grad.view(n, -1), p=2, dim=1) + 1e-10
    x_adv = x_adv.detach() + alpha * grad / grad_norms.view(n, 1, 1, 1)
    delta = x_adv - x
    factor = torch.min(
        eps / torch.norm(delta.view(n, -1), p=2, dim=1), torch.ones(n, device=x.device)
    )
    return torch.clamp(x + delta * factor.view(-1, 1, 1, 1), min=0, max=1).detach()


@pytest.mark.parametrize(("norm", "alpha", "eps"), [("linf", 2 / 255, 8 / 255), ("l2", 0.1, 0.5)])
def test_step_ops(report, norm, alpha, eps):
    x = torch.rand(512, 3, 32, 32, device=DEVICE)
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    grad = torch.randn_like(x)
    fused = getattr(ops, f"{norm}_step_")
    ref = getattr(reference, f"{norm}_step")
    chain = torchattacks_linf_chain if norm == "linf" else torchattacks_l2_chain
    compiled = torch.compile(lambda a, b, c: ref(a, b, c, alpha=alpha, eps=eps))
    work = x_adv.clone()
    fns = {
        "torchattacks eager chain": lambda: chain(x_adv, x, grad, alpha, eps),
        "eager reference": lambda: ref(x_adv, x, grad, alpha=alpha, eps=eps),
        "torch.compile(reference)": lambda: compiled(x_adv, x, grad),
        f"fused {norm}_step_ (in place)": lambda: fused(work, x, grad, alpha=alpha, eps=eps),
    }
    times = blocked_medians(fns)
    ours = times[f"fused {norm}_step_ (in place)"]
    report.table(TITLE, ["op", "path", "ms", "fused speed-up"])
    for path, t in times.items():
        report.row(TITLE, [f"{norm}_step", path, f"{t * 1e3:.3f}", f"{t / ours:.2f}x"])


def test_bandwidth(report):
    """64M float32 elements: linf_step_ moves 16 B/element (3 reads + 1 write)."""
    n = 64 * 2**20
    src, dst = torch.rand(n, device=DEVICE), torch.empty(n, device=DEVICE)
    copy_s = median_seconds(lambda: dst.copy_(src))
    copy_bw = 8 * n / copy_s
    x_adv, x, grad = dst.view(1, -1), src.view(1, -1), torch.randn(1, n, device=DEVICE)
    title = "Bandwidth, 64M float32 elements (bytes read + written / time)"
    report.table(title, ["op", "ms", "GB/s", "fraction of copy"])
    report.row(title, ["copy_ (8 B/elem)", f"{copy_s * 1e3:.2f}", f"{copy_bw / 1e9:.1f}", "1.00"])
    for name, moved, fn in [
        ("linf_step_", 16, lambda: ops.linf_step_(x_adv, x, grad, alpha=0.01, eps=0.03)),
        ("l2_step_", 28, lambda: ops.l2_step_(x_adv, x, grad, alpha=0.01, eps=0.03)),
    ]:
        t = median_seconds(fn)
        bw = moved * n / t
        report.row(
            title,
            [
                f"{name} ({moved} B/elem)",
                f"{t * 1e3:.2f}",
                f"{bw / 1e9:.1f}",
                f"{bw / copy_bw:.2f}",
            ],
        )


L1_TITLE = (
    "L1 ops, 512x3x32x32 float32, eps=10, sparsity 5 % (time per call; speed-up of the fused op). "
    "CPU: the threshold by a sample-sort search over breakpoints (16 pivots a round, vectorised "
    "double sums), the top-k by nth_element over the elements above a sampled estimate; "
    "CUDA: one block per sample, bisection on the threshold with breakpoint counting, radix select"
)


@pytest.mark.parametrize("name", ["l1_project", "l1_step"])
def test_l1_ops(report, name):
    x = torch.rand(512, 3, 32, 32, device=DEVICE)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)  # ||x_adv - x||_1 ~ 120 > eps
    grad = torch.randn_like(x)
    kw = {"eps": 10.0, **({"alpha": 5.0, "sparsity": 0.05} if name == "l1_step" else {})}
    args = (x, grad) if name == "l1_step" else (x,)
    ref = getattr(reference, name)
    compiled = torch.compile(lambda *a: ref(*a, **kw))
    fused = getattr(ops, f"{name}_")
    work = x_adv.clone()

    def ours():  # from the same start every call: x_adv is rewritten in place
        work.copy_(x_adv)
        fused(work, *args, **kw)

    fns = {
        "eager reference": lambda: ref(x_adv, *args, **kw),
        "torch.compile(reference)": lambda: compiled(x_adv, *args),
        f"fused {name}_ (copy_ + in place)": ours,
    }
    times = blocked_medians(fns)
    mine = times[f"fused {name}_ (copy_ + in place)"]
    report.table(L1_TITLE, ["op", "path", "ms", "fused speed-up"])
    for path, t in times.items():
        report.row(L1_TITLE, [name, path, f"{t * 1e3:.3f}", f"{t / mine:.2f}x"])
