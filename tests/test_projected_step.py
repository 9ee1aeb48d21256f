"""The projected-step family (linf_step_, l2_step_, linf_project_, l2_project_) against its
reference twin, plus opcheck, torch.compile, NaN handling and bad-input errors."""

import math

import pytest
import torch

from robustkern import ops, reference
from tests._step_inputs import DTYPES, LAYOUTS, SHAPES, make
from tests.conftest import DEVICES

OPS = ["linf_step", "l2_step", "linf_project", "l2_project"]


def call(name, xa, x, g, **kw):
    """(op result, reference result); the op runs in place on a copy of xa with xa's strides."""
    out = torch.empty_strided(xa.shape, xa.stride(), dtype=xa.dtype, device=xa.device)
    out.copy_(xa)
    args = (x, g) if "step" in name else (x,)
    getattr(ops, name + "_")(out, *args, **kw)
    expected = getattr(reference, name)(xa, *args, **kw)
    return out, expected


def tolerance(name, dtype):
    if name.startswith("linf"):
        return {"atol": 0.0, "rtol": 0.0}  # one rounding per element: bitwise equal
    # L2 norms are summed in another order: allow a few ulps of the result.
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
    return {"atol": tol[dtype], "rtol": tol[dtype]}


def kwargs_for(name, n, device, per_sample):
    if per_sample:
        eps = torch.rand(n, device=device) * 0.3
        kw = {"eps": eps}
        if "step" in name:
            kw["alpha"] = torch.rand(n, device=device) * 0.1
    else:
        kw = {"eps": 0.1 if name.startswith("linf") else 0.5}
        if "step" in name:
            kw["alpha"] = 0.03 if name.startswith("linf") else 0.2
    return kw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_matches_reference(name, dtype, shape, layout, device):
    for per_sample in (False, True):
        xa, x, g = make(shape, dtype, device, layout)
        kw = kwargs_for(name, shape[0], device, per_sample)
        out, expected = call(name, xa, x, g, bounds=(0.0, 1.0), **kw)
        assert out.stride() == xa.stride() or out.numel() == 0  # the layout is kept
        torch.testing.assert_close(out, expected, **tolerance(name, dtype))
        assert not out.isnan().any()


@pytest.mark.parametrize("name", OPS)
def test_stays_in_ball_and_bounds(name):
    xa, x, g = make((16, 3, 6, 6), torch.float64, "cpu")
    x = 0.1 + 0.8 * x  # x_nat inside the bounds, so clipping to them keeps the ball
    eps = torch.linspace(0, 0.4, 16, dtype=torch.float64)
    kw = {"eps": eps, **({"alpha": 0.5} if "step" in name else {})}
    out, _ = call(name, xa, x, g, bounds=(0.1, 0.9), **kw)
    delta = (out - x).flatten(1)
    dist = delta.abs().amax(1) if name.startswith("linf") else delta.norm(dim=1)
    assert (dist <= eps + 1e-12).all()
    assert out.min() >= 0.1 and out.max() <= 0.9


def test_linf_step_moves_by_sign():
    x = torch.full((2, 4), 0.5)
    g = torch.tensor([[1.0, -2.0, 0.0, math.nan], [3.0, -1e-30, math.inf, -math.inf]])
    out = x.clone()
    ops.linf_step_(out, x, g, alpha=0.1, eps=1.0)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.4, 0.5, 0.5], [0.6, 0.4, 0.5, 0.5]]))


def test_l2_step_direction_length_and_zero_grad():
    x = torch.full((3, 2), 0.5, dtype=torch.float64)
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [math.nan, 2.0]], dtype=torch.float64)
    out = x.clone()
    ops.l2_step_(out, x, g, alpha=0.1, eps=10.0)
    expected = torch.tensor([[0.56, 0.58], [0.5, 0.5], [0.5, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)  # zero grad: no move; NaN entry counts as 0


def test_l2_tiny_gradient_keeps_direction():
    # |g|^2 underflows float32 but not the float64 accumulator: the step still moves.
    x = torch.full((1, 4), 0.5)
    g = torch.tensor([[1e-30, 0.0, 0.0, 0.0]])
    out = x.clone()
    ops.l2_step_(out, x, g, alpha=0.1, eps=1.0)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.5, 0.5, 0.5]]))


def test_infinite_eps_means_no_projection():
    x = torch.zeros(2, 3)
    out = torch.full((2, 3), 5.0)
    ops.l2_project_(out, x, eps=math.inf, bounds=(-math.inf, math.inf))
    assert (out == 5).all()


def test_result_does_not_depend_on_threads():
    xa, x, g = make((3, 200_000), torch.float32, "cpu")
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = xa.clone()
        ops.l2_step_(out, x, g, alpha=0.3, eps=0.7)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.skipif(
    "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info(),
    reason="torch's intra-op threads are not OpenMP here",
)
def test_cpu_kernels_run_on_torchs_threads():
    """at::parallel_for is inline: an extension compiled without OpenMP runs it on one thread."""
    from robustkern import _C

    assert _C.intra_op_parallel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPS)
def test_opcheck(name, device):
    xa, x, g = make((3, 2, 5, 5), torch.float32, device)
    eps_t = torch.rand(3, device=device)
    if "step" in name:
        cases = [
            (xa, x, g, 0.1, 0.3, None, None, 0.0, 1.0),
            (xa, x, g, 0.0, 0.0, eps_t, eps_t, 0.0, 1.0),
        ]
    else:
        cases = [(xa, x, 0.3, None, 0.0, 1.0), (xa, x, 0.0, eps_t, 0.0, 1.0)]
    for args in cases:
        torch.library.opcheck(getattr(torch.ops.robustkern, name + "_").default, args)


def test_torch_compile_fullgraph():
    def pgd_step(xa, x, g):
        ops.linf_step_(xa, x, g, alpha=0.01, eps=0.03)
        ops.l2_project_(xa, x, eps=0.5)
        return xa

    xa, x, g = make((4, 3, 8, 8), torch.float32, "cpu")
    g = g.nan_to_num()
    compiled = torch.compile(pgd_step, fullgraph=True, backend="aot_eager")
    expected = reference.l2_project(reference.linf_step(xa, x, g, alpha=0.01, eps=0.03), x, eps=0.5)
    torch.testing.assert_close(compiled(xa.clone(), x, g), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_cuda_matches_cpu(name, dtype):
    for shape in SHAPES:
        for layout in LAYOUTS:
            xa, x, g = make(shape, dtype, "cpu", layout)
            kw = kwargs_for(name, shape[0], "cpu", per_sample=True)
            cpu, _ = call(name, xa, x, g, **kw)
            cuda_kw = {k: v.cuda() for k, v in kw.items()}
            gpu, _ = call(name, xa.cuda(), x.cuda(), g.cuda(), **cuda_kw)
            torch.testing.assert_close(gpu.cpu(), cpu, **tolerance(name, dtype))


BAD = [
    ("x_nat must have x_adv's shape", lambda xa, x, g: (xa, x[:1], g), {}),
    ("grad must have x_adv's dtype", lambda xa, x, g: (xa, x, g.double()), {}),
    (
        "x_adv must be float16, bfloat16, float32 or float64",
        lambda xa, x, g: (xa.int(), x.int(), g.int()),
        {},
    ),
    ("eps must be >= 0", lambda xa, x, g: (xa, x, g), {"eps": -0.1}),
    ("alpha must be finite and >= 0", lambda xa, x, g: (xa, x, g), {"alpha": math.nan}),
    ("needs lo <= hi", lambda xa, x, g: (xa, x, g), {"bounds": (1.0, 0.0)}),
    (
        "per-sample eps must be a 1-D tensor of length N=4",
        lambda xa, x, g: (xa, x, g),
        {"eps": torch.ones(3)},
    ),
    ("every per-sample eps must be >= 0", lambda xa, x, g: (xa, x, g), {"eps": -torch.ones(4)}),
    ("must not have overlapping memory", lambda xa, x, g: (xa[:1].expand(4, 3), x, g), {}),
]


@pytest.mark.parametrize("name", ["linf_step", "l2_step"])
@pytest.mark.parametrize(("message", "mangle", "override"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(name, message, mangle, override):
    xa, x, g = (torch.rand(4, 3) for _ in range(3))
    kw = {"alpha": 0.1, "eps": 0.3, "bounds": (0.0, 1.0), **override}
    before = xa.clone()
    with pytest.raises((RuntimeError, ValueError), match=message):
        getattr(ops, name + "_")(*mangle(xa, x, g), **kw)
    assert torch.equal(xa, before)  # nothing written


def test_device_mismatch_is_a_clear_error():
    xa = torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="must be on x_adv's device"):
        ops.linf_project_(xa, torch.rand(2, 3, device="meta"), eps=0.1)
