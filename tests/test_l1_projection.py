"""The L1 family (l1_project_, l1_step_) against its reference twin and against what a
projection must be: feasible, idempotent, the closest feasible point (checked against random
feasible points and, on tiny dimensions, against Dykstra's alternating projections); plus
opcheck, torch.compile, per-sample values and bad-input errors."""

import math

import pytest
import torch

from robustkern import ops, reference
from tests._step_inputs import DTYPES, LAYOUTS, SHAPES, make
from tests.conftest import DEVICES

# The threshold sums d terms in another order than the reference: float64 allows for it.
TOL = {torch.float64: 1e-10, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def run(name, xa, x, g, **kw):
    """(op result, reference result); the op runs in place on a copy of xa with xa's strides."""
    out = torch.empty_strided(xa.shape, xa.stride(), dtype=xa.dtype, device=xa.device)
    out.copy_(xa)
    args = (x, g) if name == "l1_step" else (x,)
    getattr(ops, name + "_")(out, *args, **kw)
    return out, getattr(reference, name)(xa, *args, **kw)


def settings(name, n, device, per_sample):
    if per_sample:  # eps from 0 to more than the box allows
        kw = {"eps": torch.linspace(0, 40, n, device=device) if n else torch.zeros(0)}
        if name == "l1_step":
            kw["alpha"] = torch.rand(n, device=device) * 4
            kw["sparsity"] = torch.rand(n, device=device) * 0.9 + 0.05
        return kw
    kw = {"eps": 3.0}
    return {**kw, "alpha": 2.0, "sparsity": 0.1} if name == "l1_step" else kw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["l1_project", "l1_step"])
def test_matches_reference(name, dtype, shape, layout, device):
    for per_sample in (False, True):
        xa, x, g = make(shape, dtype, device, layout)
        xa = xa + 0.3 * (xa - x)  # partly outside the bounds: the box part of the projection
        out, expected = run(name, xa, x, g, **settings(name, shape[0], device, per_sample))
        assert out.stride() == xa.stride() or out.numel() == 0  # the layout is kept
        torch.testing.assert_close(out, expected, atol=TOL[dtype], rtol=TOL[dtype])
        assert not out.isnan().any()


def feasible_random(x, eps, bounds, count):
    """`count` random points per sample of the L1 eps-ball around x within the bounds."""
    lo, hi = bounds
    pts = []
    for scale in torch.logspace(-2, 1, count):
        z = (x + scale * torch.randn_like(x) * torch.rand_like(x).lt(0.3)).clamp(lo, hi)
        d = z - x
        size = d.abs().sum(1, keepdim=True)
        pts.append(x + torch.where(size > eps[:, None], d * eps[:, None] / size, d))
    return pts


def test_projection_is_feasible_idempotent_and_closest():
    n, d, bounds = 24, 40, (0.1, 0.9)
    x = 0.1 + 0.8 * torch.rand(n, d, dtype=torch.float64)
    xa = x + 0.4 * torch.randn(n, d, dtype=torch.float64)
    eps = torch.cat((torch.zeros(1), torch.logspace(-3, 1.5, n - 1))).double()
    out = xa.clone()
    ops.l1_project_(out, x, eps=eps, bounds=bounds)
    assert ((out - x).abs().sum(1) <= eps * (1 + 1e-12) + 1e-15).all()
    assert out.min() >= 0.1 and out.max() <= 0.9
    assert torch.equal(out[0], x[0])  # eps = 0
    again = out.clone()
    ops.l1_project_(again, x, eps=eps, bounds=bounds)
    torch.testing.assert_close(again, out, atol=1e-14, rtol=0)
    best = (out - xa).norm(dim=1)
    for z in feasible_random(x, eps, bounds, 200):
        assert ((z - xa).norm(dim=1) >= best - 1e-12).all()


def dykstra(v, x, eps, bounds, iters=20_000):
    """The projection of v onto (L1 eps-ball around x) cap (box) by Dykstra's algorithm, from
    the plain L1-ball projection (Duchi et al.'s sort) and the box clip alone."""

    def ball(z):
        d = z - x
        if d.abs().sum() <= eps:
            return z
        u = d.abs().sort(descending=True).values
        k = torch.arange(1, len(u) + 1, dtype=z.dtype)
        cs = u.cumsum(0) - eps
        rho = (u - cs / k > 0).nonzero().max()
        theta = cs[rho] / (rho + 1)
        return x + d.sign() * (d.abs() - theta).clamp_min(0)

    z, p, q = v.clone(), torch.zeros_like(v), torch.zeros_like(v)
    for _ in range(iters):
        y = ball(z + p)
        p = z + p - y
        z_next = (y + q).clamp(*bounds)
        q = y + q - z_next
        z = z_next
    return z


def test_projection_agrees_with_an_independent_solver():
    gen = torch.Generator().manual_seed(3)
    for trial in range(12):
        d = 2 + trial % 4
        x = torch.rand(1, d, generator=gen, dtype=torch.float64)
        v = x + torch.randn(1, d, generator=gen, dtype=torch.float64)
        eps = float(torch.rand(1, generator=gen)) * 1.5
        out = v.clone()
        ops.l1_project_(out, x, eps=eps)
        torch.testing.assert_close(out[0], dykstra(v[0], x[0], eps, (0.0, 1.0)), atol=1e-7, rtol=0)


def test_eps_beyond_what_the_box_allows_is_the_box_clip():
    x = torch.rand(3, 50, dtype=torch.float64)
    xa = x + torch.randn_like(x)
    out = xa.clone()
    ops.l1_project_(out, x, eps=torch.tensor([100.0, 1e9, math.inf]).double())
    assert torch.equal(out, xa.clamp(0, 1))


def test_step_moves_the_largest_movable_gradients():
    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    x[0, 0] = 1.0  # at the upper bound: a positive gradient cannot move it
    g = torch.tensor([[9.0, -3.0, 0.5, 2.0, math.nan, -0.1]], dtype=torch.float64)
    out = x.clone()
    ops.l1_step_(out, x, g, alpha=0.2, eps=math.inf, sparsity=2 / 6)
    expected = x.clone()
    expected[0, 1] -= 0.1  # the two largest movable |g|: -3 and 2, each by alpha / 2
    expected[0, 3] += 0.1
    torch.testing.assert_close(out, expected, atol=1e-15, rtol=0)


def test_step_sparsity_per_sample_and_projection():
    x = torch.full((2, 100), 0.5, dtype=torch.float64)
    g = torch.randn(2, 100, dtype=torch.float64)
    out = x.clone()
    ops.l1_step_(out, x, g, alpha=1.0, eps=0.6, sparsity=torch.tensor([0.05, 0.5]).double())
    moved = (out - x).ne(0).sum(1)
    assert moved.tolist()[0] <= 5 and moved.tolist()[1] > 5
    torch.testing.assert_close((out - x).abs().sum(1), torch.full((2,), 0.6).double())
    assert ((out - x).sign() == g.sign())[(out - x) != 0].all()


@pytest.mark.parametrize("name", ["l1_project", "l1_step"])
def test_ties_on_an_image_sized_sample(name):
    """Quantised moves and gradients: many equal breakpoints and |grad| values, on samples large
    enough (3x32x32) for the kernel's sampled pivots and its sampled top-k estimate."""
    torch.manual_seed(0)
    x = (torch.rand(6, 3, 32, 32, dtype=torch.float64) * 8).round() / 8
    xa = (x + (torch.randint(-3, 4, x.shape) / 16).double()).clamp(-0.1, 1.1)
    g = torch.randint(-4, 5, x.shape).double()
    kw = {"eps": torch.tensor([0.0, 0.5, 3.0, 10.0, 40.0, 1e4], dtype=torch.float64)}
    if name == "l1_step":
        kw |= {"alpha": 5.0, "sparsity": 0.05}
    out, expected = run(name, xa, x, g, **kw)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_result_does_not_depend_on_threads():
    xa, x, g = make((16, 3, 16, 16), torch.float32, "cpu")
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = xa.clone()
        ops.l1_step_(out, x, g, alpha=4.0, eps=5.0, sparsity=0.05)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    xa, x, g = make((3, 2, 5, 5), torch.float32, device)
    t = torch.rand(3, device=device) + 0.01
    for args in [(xa, x, 0.3, None, 0.0, 1.0), (xa, x, 0.0, t, 0.0, 1.0)]:
        torch.library.opcheck(torch.ops.robustkern.l1_project_.default, args)
    for args in [
        (xa, x, g, 0.5, 1.0, None, None, 0.0, 1.0, 0.2, None),
        (xa, x, g, 0.0, 0.0, t, t, 0.0, 1.0, 0.0, t.clamp(max=1)),
    ]:
        torch.library.opcheck(torch.ops.robustkern.l1_step_.default, args)


def test_torch_compile_fullgraph():
    def step(xa, x, g):
        ops.l1_step_(xa, x, g, alpha=1.0, eps=2.0, sparsity=0.1)
        ops.l1_project_(xa, x, eps=1.5)
        return xa

    xa, x, g = make((4, 3, 8, 8), torch.float32, "cpu")
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    ref = reference.l1_step(xa, x, g, alpha=1.0, eps=2.0, sparsity=0.1)
    expected = reference.l1_project(ref, x, eps=1.5)
    torch.testing.assert_close(compiled(xa.clone(), x, g), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["l1_project", "l1_step"])
def test_cuda_matches_cpu(name, dtype):
    for shape in SHAPES:
        for layout in LAYOUTS:
            xa, x, g = make(shape, dtype, "cpu", layout)
            kw = settings(name, shape[0], "cpu", per_sample=True)
            cpu, _ = run(name, xa, x, g, **kw)
            gpu, _ = run(
                name, xa.cuda(), x.cuda(), g.cuda(), **{k: v.cuda() for k, v in kw.items()}
            )
            torch.testing.assert_close(gpu.cpu(), cpu, atol=TOL[dtype], rtol=TOL[dtype])


BAD = [
    ("sparsity must be in \\(0, 1\\]", {"sparsity": 0.0}),
    ("sparsity must be in \\(0, 1\\]", {"sparsity": 1.5}),
    ("every per-sample sparsity must be in \\(0, 1\\]", {"sparsity": torch.tensor([0.5, 2.0])}),
    ("eps must be >= 0", {"eps": -1.0}),
    ("alpha must be finite and >= 0", {"alpha": math.inf}),
    ("needs lo <= hi", {"bounds": (1.0, 0.0)}),
]


@pytest.mark.parametrize(("message", "override"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(message, override):
    xa, x, g = (torch.rand(2, 5) for _ in range(3))
    before = xa.clone()
    kw = {"alpha": 0.5, "eps": 1.0, "sparsity": 0.2, **override}
    with pytest.raises((RuntimeError, ValueError), match=message):
        ops.l1_step_(xa, x, g, **kw)
    assert torch.equal(xa, before)
    with pytest.raises(RuntimeError, match="x_nat must have x_adv's shape"):
        ops.l1_project_(xa, x[:1], eps=1.0)
