"""conv_singular_values and robustkern.spectral against oracles that do not use our code: the
dense matrix of small layers built with F.conv2d on basis images, analytic norms, and the
reference twin; plus the Lipschitz table, the penalty's gradient, opcheck and bad input."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkern import models, reference, spectral
from robustkern.cli import main
from robustkern.nn import Normalize
from robustkern.spectral import penalty, pooling
from robustkern.suite import inspection
from robustkern.suite.core import Suite, Threat
from tests._real_models import ResNet
from tests.conftest import DEVICES

OP = torch.ops.robustkern.conv_singular_values


def dense_matrix(weight, n, stride, padding, dilation, groups, transposed=False):
    """The layer's explicit matrix: its output for every basis image, one column each."""
    c_in = weight.shape[0] if transposed else weight.shape[1] * groups
    basis = torch.eye(c_in * n * n, dtype=torch.float64).view(-1, c_in, n, n)
    if transposed:
        out = F.conv_transpose2d(basis, weight, None, stride, padding, 0, groups, dilation)
    elif padding == "circular":
        extent = dilation * (weight.shape[-1] - 1)
        out = F.conv2d(F.pad(basis, (0, extent, 0, extent), mode="circular"), weight, None,
                       stride, 0, dilation, groups)  # fmt: skip
    else:
        out = F.conv2d(basis, weight, None, stride, padding, dilation, groups)
    return out.flatten(1).T


def dense_norm(*args, **kwargs):
    return torch.linalg.matrix_norm(dense_matrix(*args, **kwargs), ord=2).item()


# (n, C_in, C_out, k, stride, dilation, groups)
LAYERS = [
    (8, 3, 4, 3, 1, 1, 1),
    (9, 2, 5, 3, 1, 1, 1),
    (12, 4, 6, 3, 2, 1, 2),
    (12, 6, 6, 5, 3, 1, 3),
    (10, 3, 2, 2, 2, 1, 1),
    (11, 1, 3, 3, 1, 2, 1),
    (12, 6, 6, 3, 1, 1, 6),  # depthwise
    (12, 2, 4, 5, 2, 2, 2),
    (6, 5, 3, 1, 2, 1, 1),  # 1x1, strided
]
# Circular layers whose taps wrap around the torus (the kernel's extent reaches n)
WRAPPING = [(4, 2, 3, 5, 2, 1, 1), (4, 2, 3, 3, 1, 2, 1)]


@pytest.mark.parametrize("layer", LAYERS + WRAPPING, ids=str)
@pytest.mark.parametrize("method", ["exact", "gram"])
def test_circular_norm_matches_the_dense_matrix(layer, method):
    n, c_in, c_out, k, s, d, g = layer
    if n % s:
        pytest.skip("circular layers need n divisible by the stride")
    w = torch.randn(c_out, c_in // g, k, k, dtype=torch.float64)
    truth = dense_norm(w, n, s, "circular", d, g)
    ours = spectral.conv_operator_norm(w, n, s, "circular", d, g, method=method, tol=1e-10).item()
    assert ours == pytest.approx(truth, rel=1e-5)
    if method == "gram":
        assert ours >= truth * (1 - 1e-12)


@pytest.mark.parametrize("layer", LAYERS, ids=str)
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_zero_padding_is_bracketed(layer, padding):
    n, c_in, c_out, k, s, d, g = layer
    w = torch.randn(c_out, c_in // g, k, k, dtype=torch.float64)
    truth = dense_norm(w, n, s, padding, d, g)
    upper = spectral.conv_operator_norm(w, n, s, padding, d, g).item()
    lower = spectral.conv_lower_bound(w, n, s, padding, d, g, iters=50).item()
    assert lower <= truth * (1 + 1e-9)
    assert upper >= truth * (1 - 1e-12)
    assert lower > 0.5 * truth  # power iteration did converge somewhere near


@pytest.mark.parametrize("layer", LAYERS[:5], ids=str)
def test_conv_transpose_has_the_conv_norm(layer):
    n, c_in, c_out, k, s, d, g = layer
    w = torch.randn(c_in, c_out // g, k, k, dtype=torch.float64)  # ConvTranspose2d layout
    truth = dense_norm(w, n, s, 1, d, g, transposed=True)
    upper = spectral.conv_operator_norm(w, n, s, 1, d, g, transposed=True).item()
    lower = spectral.conv_lower_bound(w, n, s, 1, d, g, transposed=True, iters=50).item()
    assert lower <= truth * (1 + 1e-9) <= upper * (1 + 2e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer", LAYERS + WRAPPING, ids=str)
def test_per_frequency_values_match_the_reference(layer, dtype):
    n, c_in, c_out, k, s, d, g = layer
    n = n - n % s
    w = torch.randn(3, c_out, c_in // g, k, k, dtype=dtype)  # a batch of equal layers
    want, want_max = reference.conv_singular_values(w.double(), (n, n + s), (s, s), (d, d), g)
    exact, _ = OP(w, [n, n + s], [s, s], [d, d], g, "exact", 16, 1e-6, False)
    gram, gram_max = OP(w, [n, n + s], [s, s], [d, d], g, "gram", 30, 0.0, False)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(exact.double(), want, rtol=tol, atol=tol * want.max().item())
    assert (gram.double() >= want * (1 - 1e-12)).all()  # certified, margin included
    torch.testing.assert_close(gram_max.double(), want_max, rtol=1e-4, atol=0)
    assert exact.dtype == gram.dtype == dtype


@pytest.mark.parametrize(
    "layout",
    [
        lambda w: w.contiguous(memory_format=torch.channels_last_3d),
        lambda w: w.transpose(3, 4).contiguous().transpose(3, 4),  # strided
        lambda w: w[:, :, :, ::2, ::2],  # a sliced view
        lambda w: w.half(),
        lambda w: w.bfloat16(),
    ],
    ids=["channels_last", "strided", "sliced", "float16", "bfloat16"],
)
def test_layouts_and_low_precision_weights(layout):
    w = layout(torch.randn(2, 6, 4, 5, 5))
    want = reference.conv_singular_values(w.double(), (8, 8), (2, 2), (1, 1), 2)[0]
    for method in ("exact", "gram"):
        got = OP(w, [8, 8], [2, 2], [1, 1], 2, method, 16, 1e-6, False)[0]
        assert got.dtype == torch.float32  # half inputs are computed and returned in float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_pruned_max_equals_the_unpruned_max():
    w = torch.randn(4, 16, 8, 3, 3, dtype=torch.float64)
    sigma_p, norm_p = OP(w, [16, 16], [1, 1], [1, 1], 1, "gram", 16, 1e-9, True)
    sigma, norm = OP(w, [16, 16], [1, 1], [1, 1], 1, "gram", 16, 1e-9, False)
    torch.testing.assert_close(norm_p, norm, rtol=1e-8, atol=0)
    assert (sigma_p >= sigma * (1 - 1e-12)).all()  # pruned frequencies keep looser bounds


def test_gram_bound_decreases_with_iterations_and_stays_above_the_exact_value():
    w = torch.randn(1, 12, 12, 3, 3)
    exact = OP(w.double(), [8, 8], [1, 1], [1, 1], 1, "exact", 1, 0.0, False)[0]
    previous = None
    for iters in range(1, 9):
        sigma = OP(w, [8, 8], [1, 1], [1, 1], 1, "gram", iters, 0.0, False)[0].double()
        assert (sigma >= exact).all()
        if previous is not None:
            assert (sigma <= previous * (1 + 1e-6)).all()
        previous = sigma
    assert previous.max() / exact.max() - 1 < 1e-4


def test_float32_gram_bounds_are_certified_over_many_layers():
    worst = math.inf
    for c, k, s in [(32, 3, 1), (64, 3, 2), (16, 5, 1), (48, 1, 1), (8, 7, 2)]:
        w = torch.randn(8, c, c, k, k)
        n = 16
        exact = reference.conv_singular_values(w.double(), (n, n), (s, s))[1]
        bound = OP(w, [n, n], [s, s], [1, 1], 1, "gram", 16, 1e-6, True)[1].double()
        worst = min(worst, (bound / exact - 1).min().item())
        assert ((bound / exact - 1) < 1e-4).all()
    assert worst >= 0


def assert_norm(want, *args, **kwargs):
    """exact: to 1e-12; the default certified Gram bound: at or above, within 1e-5."""
    exact = spectral.conv_operator_norm(*args, method="exact", **kwargs).item()
    gram = spectral.conv_operator_norm(*args, **kwargs).item()
    assert exact == pytest.approx(want, rel=1e-12)
    assert want * (1 - 1e-12) <= gram <= want * (1 + 1e-5)


def test_analytic_norms():
    delta = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    delta[0, 0, 1, 1] = -2.5
    assert_norm(2.5, delta, 9)
    w = torch.randn(7, 5, 1, 1, dtype=torch.float64)
    for s, p in [(1, "circular"), (2, 0), (3, 1)]:
        assert_norm(torch.linalg.matrix_norm(w[..., 0, 0], ord=2).item(), w, 12, s, p)
    assert_norm(1.0, torch.full((1, 1, 3, 3), 1 / 9, dtype=torch.float64), 10)
    lap = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float64)[None, None]
    for n in (8, 10):
        assert_norm(8.0, lap, n)
    for n in (9, 12):
        dirichlet = 4 + 4 * math.cos(math.pi / (n + 1))  # the zero-padded layer's exact norm
        assert spectral.conv_operator_norm(lap, n, padding=1).item() >= dirichlet
        assert spectral.conv_lower_bound(lap, n, padding=1, iters=3000).item() <= dirichlet
    # the circular norm at n is NOT an upper bound of the zero-padded layer (the case)
    assert spectral.conv_operator_norm(lap, 9).item() < 4 + 4 * math.cos(math.pi / 10)
    patch = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    assert_norm(torch.linalg.matrix_norm(patch.reshape(6, -1), ord=2).item(), patch, 16, 4, 0)


def test_heat_map_shape_and_constant_spectrum():
    w = torch.randn(4, 3, 3, 3)
    assert spectral.conv_singular_values(w, (12, 10), stride=2).shape == (6, 3)
    one = spectral.conv_singular_values(torch.randn(4, 3, 1, 1), 8)
    assert one.shape == (8, 5) and torch.allclose(one, one[0, 0].expand_as(one))


def test_matrices_at_one_frequency_agree_with_the_reference():
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    a = reference.conv_spectrum_matrices(w[None], (12, 12), (2, 2), (1, 1), 3)[0]
    for freq in [(0, 0), (1, 2), (5, 3)]:
        ours = penalty._matrices_at(w, (12, 12), (2, 2), (1, 1), 3, freq)
        torch.testing.assert_close(
            torch.linalg.svdvals(ours), torch.linalg.svdvals(a[freq]), rtol=1e-10, atol=1e-12
        )


def test_full_precision_even_when_onednn_is_allowed_bf16():
    w = torch.randn(1, 32, 32, 3, 3)
    want = OP(w, [16, 16], [1, 1], [1, 1], 1, "gram", 16, 1e-6, True)[1]
    backend = torch.backends.mkldnn.matmul
    before = backend.fp32_precision
    try:
        backend.fp32_precision = "bf16"
        got = OP(w, [16, 16], [1, 1], [1, 1], 1, "gram", 16, 1e-6, True)[1]
        assert backend.fp32_precision == "bf16"  # the op restores what it found
    finally:
        backend.fp32_precision = before
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    w = torch.randn(2, 4, 3, 3, 3, device=device)
    args = (w, [8, 8], [2, 2], [1, 1], 1, "gram", 16, 1e-6, True)
    torch.library.opcheck(OP.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    w = torch.randn(3, 32, 16, 3, 3)
    for method in ("gram", "exact"):
        cpu = OP(w, [16, 16], [2, 2], [1, 1], 2, method, 16, 1e-6, False)[0]
        gpu = OP(w.cuda(), [16, 16], [2, 2], [1, 1], 2, method, 16, 1e-6, False)[0]
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def op_call(weight, fft=(8, 8), stride=(1, 1), groups=1, method="gram"):
    return lambda: OP(weight, list(fft), list(stride), [1, 1], groups, method, 8, 0.0, True)


BAD = [
    ("weight must be", op_call(torch.randn(4, 3, 3, 3))),
    ("multiple of the stride", op_call(torch.randn(1, 4, 3, 3, 3), (9, 9), (2, 2))),
    ("must be >= 1 and divide", op_call(torch.randn(1, 4, 3, 3, 3), groups=3)),
    ("NaN or inf", op_call(torch.full((1, 2, 2, 3, 3), math.nan))),
    ("method must be", op_call(torch.randn(1, 2, 2, 3, 3), method="svd")),
    ("fft_size must be two positive", op_call(torch.randn(1, 2, 2, 3, 3), (0, 8))),
    ("floating", op_call(torch.ones(1, 2, 2, 3, 3, dtype=torch.int64))),
]


@pytest.mark.parametrize(("message", "call"), BAD, ids=[b[0] for b in BAD])
def test_op_bad_input_is_a_clear_error(message, call):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_python_bad_input_is_a_clear_error():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="divisible by the stride"):
        spectral.conv_operator_norm(w, 9, stride=2)
    with pytest.raises(ValueError, match="padding must be"):
        spectral.conv_operator_norm(w, 8, padding="reflect")
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        spectral.conv_operator_norm(w, 8, padding=-1)
    with pytest.raises(ValueError, match="weight must be a conv weight"):
        spectral.conv_operator_norm(torch.randn(4, 3), 8)
    with pytest.raises(ValueError, match="method must be"):
        spectral.conv_operator_norm(w, 8, method="power")
    with pytest.raises(ValueError, match="2-D"):
        spectral.linear_operator_norm(torch.randn(2, 3, 4))


def empirical_lipschitz(model, x, trials=64):
    """max ||f(x) - f(x')|| / ||x - x'|| over random nearby pairs: a lower bound of L."""
    with torch.no_grad():
        best = 0.0
        for _ in range(trials):
            d = 1e-3 * torch.randn_like(x)
            ratio = (model(x + d) - model(x)).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1)
            best = max(best, ratio.max().item())
    return best


def randomise_batchnorm(model):
    """Non-trivial BatchNorm statistics and scales, to fold in."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.small_cnn(1, 10),
        lambda: models.small_resnet(1, 10),
        lambda: models.fc(64, 10, hidden=(32,), activation="sigmoid"),
    ],
    ids=["small_cnn", "small_resnet", "fc"],
)
def test_table_bounds_the_model(build):
    model = randomise_batchnorm(build().eval())
    shape = (64,) if isinstance(model[0], nn.Flatten) else (1, 12, 12)
    table = spectral.lipschitz_table(model, shape, lower_bound=True)
    x = torch.rand(16, *shape)
    assert math.isfinite(table.product)
    assert table.product >= empirical_lipschitz(model, x)
    for row in table.rows:
        assert row.upper >= 0
        if row.lower is not None:
            assert row.lower <= row.upper * (1 + 1e-6)
    names = {r.name for r in table.rows}
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(n in names for n in convs)
    assert "product" in str(table)
    assert json.loads(table.to_json())["product"] == pytest.approx(table.product)


class PlainCNN(nn.Module):
    def __init__(self, c_in=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class MobileNetBlock(nn.Module):
    """A stem, then a depthwise-separable inverted-residual block (ReLU6), pool and head."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU6())  # fmt: skip
        self.depthwise = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn2(self.pointwise(F.relu6(self.bn1(self.depthwise(x)))))
        x = x + y
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Normalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        self.net = PlainCNN(3)

    def forward(self, x):
        return self.net(self.normalize(x))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = F.gelu(self.fc1(x.view(x.size(0), -1)))
        return self.fc3(torch.tanh(self.fc2(x)) * 0.5)


USER_MODELS = [
    (ResNet, (3, 16, 16)),  # torchvision's ResNet-18 layout, narrow
    (PlainCNN, (1, 12, 12)),
    (MobileNetBlock, (3, 8, 8)),
    (Normalized, (3, 12, 12)),
    (MLP, (1, 8, 8)),
]


@pytest.mark.parametrize(("build", "shape"), USER_MODELS, ids=[m[0].__name__ for m in USER_MODELS])
def test_users_models_are_bounded_through_their_forward(build, shape):
    torch.manual_seed(0)
    model = randomise_batchnorm(build()).eval()
    table = spectral.lipschitz_table(model, shape)
    assert math.isfinite(table.product) and not table.unbounded(), str(table)
    assert table.product >= empirical_lipschitz(model, torch.rand(8, *shape), trials=16)
    names = {r.name for r in table.rows}
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert set(weighted) <= names
    assert not any(r.kind == "BatchNorm2d" for r in table.rows)  # each folded into its conv
    joins = [r for r in table.rows if r.note.startswith("residual addition")]
    assert len(joins) == {ResNet: 8, MobileNetBlock: 1}.get(build, 0)  # one per block
    assert all(r.upper > 1 for r in joins)  # 1 + L_branch, or L_shortcut + L_branch


def test_a_torch_export_program_gets_the_eager_bound():
    model = randomise_batchnorm(models.small_resnet(1, 10)).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    exported = spectral.lipschitz_table(models.ExportedModel(program.module()), (1, 8, 8))
    eager = spectral.lipschitz_table(model, (1, 8, 8))
    assert exported.product == pytest.approx(eager.product, rel=1e-6)  # aten ops, BN folded


class Joins(nn.Module):
    """A linear map whose norm the bound must meet exactly: [2x + x, x / 4, -2x]."""

    def __init__(self):
        super().__init__()
        self.twice = nn.Linear(3, 3, bias=False)
        self.twice.weight.data = 2 * torch.eye(3)

    def forward(self, x):
        return torch.cat([self.twice(x) + x, x / 4, x * -2], 1)


def test_residual_additions_add_and_concatenations_add_in_quadrature():
    table = spectral.lipschitz_table(Joins(), (3,))
    assert table.product == pytest.approx(math.sqrt(3**2 + 0.25**2 + 2**2), rel=1e-6)
    add = next(r for r in table.rows if r.kind == "add")
    assert add.upper == pytest.approx(3.0) and "L_a + L_b = 2 + 1" in add.note


def test_batchnorm_is_folded_into_the_conv_before_it():
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
    bn.running_var.uniform_(0.1, 3.0)
    table = spectral.lipschitz_table(nn.Sequential(conv, bn), (3, 8, 8))
    folded = conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
    want = spectral.conv_operator_norm(folded.detach(), 8, padding=1).item()
    assert len(table.rows) == 1 and table.product == pytest.approx(want, rel=1e-5)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_unknown_layers_are_listed_not_skipped():
    table = spectral.lipschitz_table(nn.Sequential(nn.Linear(4, 4), Square()), (4,))
    assert table.product == math.inf
    assert "cannot bound" in table.rows[-1].note


class DataDependent(nn.Module):
    def __init__(self, features=4):
        super().__init__()
        self.fc = nn.Linear(features, 4)

    def forward(self, x):
        x = x.flatten(1)
        if x.sum() > 0:  # control flow on the input's values: torch.fx cannot trace it
            return self.fc(x)
        return -self.fc(x)


def test_an_untraceable_model_is_one_row_that_says_why():
    table = spectral.lipschitz_table(DataDependent(), (4,))
    assert table.product == math.inf
    (row,) = table.rows
    assert row.upper == math.inf and table.unbounded() == [row]
    assert "DataDependent" in row.note and "control flow" in row.note
    with pytest.raises(ValueError, match="does not fit"):
        spectral.lipschitz_table(DataDependent(), (5,))


def test_suite_check_warns_and_names_what_it_could_not_bound(tmp_path):
    threat = Threat("linf", 0.1, "test")
    suite = Suite({}, torch.rand(4, 1, 4, 4), torch.zeros(4), threat, [threat], tmp_path)
    bounded = inspection.lipschitz(suite, "cnn", models.small_cnn(1, 10, width=2), {})
    assert bounded.verdict == "info" and math.isfinite(bounded.figures["product"])
    # all bounds inf (the log axis had nothing to show), then finite, inf and 0 bounds together
    untraceable = inspection.lipschitz(suite, "untraceable", DataDependent(16), {})
    assert untraceable.verdict == "warn" and "(model)" in untraceable.summary
    assert "control flow" in untraceable.summary
    squares = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), Square(), Scale(0.0))
    mixed = inspection.lipschitz(suite, "mixed", squares, {})
    assert mixed.verdict == "info" and mixed.figures["product"] == 0  # times 0: a constant
    squares[-1] = Scale(2.0)
    unknown = inspection.lipschitz(suite, "unknown", squares, {})
    assert unknown.verdict == "warn" and unknown.figures["unbounded"] == ["2.mul"]
    assert "2.mul (product of input-dependent tensors" in unknown.summary
    for outcome in (untraceable, mixed, unknown):
        assert (tmp_path / outcome.images[0]["path"]).stat().st_size > 0


def test_an_input_shape_the_model_cannot_take_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    for shape in [(3, 8, 8), (8, 8), (1, 9, 9)]:
        with pytest.raises(ValueError, match=rf"input_shape \({shape[0]}, .* does not fit"):
            spectral.lipschitz_table(model, shape)


def test_pooling_bounds():
    overlapping = pooling._maxpool_bound(nn.MaxPool2d(3, stride=1), (1, 8, 8))
    assert overlapping == pytest.approx(3.0)  # an input sits in up to 9 windows
    assert pooling._maxpool_bound(nn.MaxPool2d(2), (1, 8, 8)) == pytest.approx(1.0)
    assert pooling._avgpool_bound(nn.AvgPool2d(2), (1, 8, 8)) == pytest.approx(0.5)
    pool = nn.AdaptiveAvgPool2d(3)
    bound = pooling._avgpool_bound(pool, (1, 7, 7))
    matrix = torch.stack([pool(e.view(1, 1, 7, 7)).flatten() for e in torch.eye(49)], 1)
    assert bound >= torch.linalg.matrix_norm(matrix, ord=2).item() - 1e-6


def test_penalty_gradient_through_the_winning_frequency():
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w: spectral.layer_penalty(w, 12, stride=2, padding=1, groups=3), (w,)
    )
    value = spectral.layer_penalty(w, 12, stride=2, padding=1, groups=3)
    want = spectral.conv_operator_norm(w.detach(), 12, 2, 1, groups=3, method="exact")
    assert value.item() == pytest.approx(want.item(), rel=1e-10)


def test_lipschitz_penalty_trains_the_bound_down():
    model = models.small_cnn(1, 10, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for _ in range(5):
        loss = spectral.lipschitz_penalty(model, (1, 8, 8))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert spectral.lipschitz_penalty(model, (1, 8, 8)).item() < first
    assert spectral.lipschitz_penalty(model, (1, 8, 8), "max").item() <= first
    with pytest.raises(ValueError, match="reduction"):
        spectral.lipschitz_penalty(model, (1, 8, 8), "mean")


def test_cli_spectral(tmp_path, capsys):
    out = tmp_path / "table.json"
    spec = "robustkern.models:fc"
    code = main([
        "spectral", "--data", "digits", "--model", spec, "--model-kwargs",
        '{"in_features": 64, "hidden": [16]}', "--input-shape", "64", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "product of the bounds" in text and "Linear" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["kind"] for r in rows] == ["Flatten", "Linear", "Sigmoid", "Linear"]
    assert main(["spectral", "--data", "digits", "--model", spec, "--input-shape", "x"]) == 2
    assert "cannot build" in capsys.readouterr().err
    kwargs = ["--model-kwargs", '{"in_features": 64}']
    assert (
        main(["spectral", "--data", "digits", "--model", spec, *kwargs, "--input-shape", "x"]) == 2
    )
    assert "--input-shape must be" in capsys.readouterr().err
