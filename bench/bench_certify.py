"""The speed targets of robustkern.certify (issue 25) on ``models.cert_cnn`` (CROWN-IBP's
2-layer CNN: strided convolutions and ReLUs) trained on mnist-5k, beside a 3x32x32 twin and the
small CNN with average pooling for IBP (bound propagation has no rule for max pooling):

* IBP at <= 3x the cost of a forward pass. The target rows are IBP in float32 against the
  model's float32 forward run in the same chunks of images ``bounds`` uses (like for like); the
  ratios to the forward as one batch-256 call and the default float64 rows are shown beside
  them. The floor is the two affine maps per layer that IBP must do (the centre through W, the
  radius through |W|), without the interval arithmetic around them.
* CROWN >= 2x the ``auto-lirpa`` package (``auto_LiRPA``) on the same images and method, in
  float32; its rows skip, with the reason in the table, when it is missing or fails to import.
* Smoothing's ``certify`` at >= 90 % of the model's own throughput: ``smoothing`` against a bare
  loop of the model over the same number of noise rows in the same batch size.

The trained model is standard (not certifiably) trained: at eps 0.1 most of its ReLUs are
unstable, the expensive case for CROWN.
"""

import copy
import importlib
import importlib.util
import time

import pytest
import torch
from torch import nn

from bench.timing import blocked_medians, interleaved_medians, median_seconds
from robustkern import certify, data, models, training
from robustkern.certify import graph, interval
from robustkern.certify.inputs import InputSet
from robustkern.certify.propagation import MAX_ELEMENTS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, EPS = 256, 0.1  # the batch; its quality target's L-inf radius on mnist-5k
SMOOTH_IMAGES, SIGMA, N0, N = 4, 0.25, 100, 10_000
IBP_TITLE = (
    f"IBP against the forward pass, L-inf, batch {BATCH}, {DEVICE} (median ms; ratio to the "
    "float32 forward as one call, and to the forward in the same dtype and in the chunks of "
    "images bounds() uses: the target rows are IBP float32, <= 3x)"
)
CROWN_TITLE = (
    f"Bound propagation on the first {BATCH} mnist-5k test images, cert_cnn (standard-trained), "
    f"L-inf {EPS:g}, {DEVICE}, one run per row, the forward's median (target: CROWN >= 2x "
    "auto_LiRPA)"
)
CROWN_HEADER = ["implementation", "method", "dtype", "images", "seconds", "ms / image",
                "x forward float32", "mean bound width"]  # fmt: skip
SMOOTH_TITLE = (
    f"Randomised smoothing certify (sigma {SIGMA:g}, n0 {N0}, n {N:,}) on the first mnist-5k "
    f"test images, {DEVICE} float32, against a bare loop of the model over as many noise rows "
    "in the same batch size, with and without drawing the noise (median of 3 alternating runs; "
    "target >= 90 % of the model's throughput)"
)
# the trained cert_cnn, and a model >10x as costly a row (one image keeps its run short)
SMOOTH_CASES = [("cert_cnn, trained", SMOOTH_IMAGES), ("small_cnn (avg-pool), random weights", 1)]


def lirpa_unavailable() -> str | None:
    """Why auto_LiRPA cannot be compared against, or None when it imports. The package index's
    0.3 installs with --no-deps but imports numpy.lib.arraysetops, which numpy 2 removed."""
    if importlib.util.find_spec("auto_LiRPA") is None:
        return "auto_LiRPA is not installed"
    try:
        importlib.import_module("auto_LiRPA")
    except Exception as e:  # any import failure is a reason to skip, named in the table
        return f"auto_LiRPA does not import: {type(e).__name__}: {e}"
    return None


def avg_pool_cnn(in_channels: int) -> nn.Sequential:
    """models.small_cnn with each MaxPool2d replaced by an AvgPool2d of the same size."""
    net = models.small_cnn(in_channels, 10)
    return nn.Sequential(
        *(nn.AvgPool2d(m.kernel_size) if isinstance(m, nn.MaxPool2d) else m for m in net)
    )


@pytest.fixture(scope="module")
def mnist():
    """cert_cnn trained like conftest's mnist_cnn (10 epochs on mnist-5k), float32, and the
    first BATCH test images."""
    torch.manual_seed(0)
    x, y, xt, yt = data.load("mnist-5k")
    model = models.cert_cnn(1, 10)
    training.fit(model, (x, y), epochs=10, batch_size=64, progress=False, train_eval=0)
    return model.eval().to(DEVICE), xt[:BATCH].to(DEVICE), yt[:BATCH].to(DEVICE)


def chunk_size(model, x) -> int:
    """Images per chunk of bounds() (propagation._chunks): the backward matrices of
    2 x classes rows of the widest layer within MAX_ELEMENTS, applied to IBP too."""
    nodes = graph.build(model, x, x.dtype)
    widest = max(torch.Size(n.shape).numel() for n in nodes)
    return max(1, MAX_ELEMENTS // (2 * nodes[-1].shape[0] * widest))


def affine_floor(model, x, eps: float, dtype: torch.dtype, chunk: int):
    """The affine maps IBP must do, per chunk: every affine node's linear part on the lower
    bounds of its input and the absolute-weight part on the upper ones (IBP's own intervals),
    without the interval arithmetic around them."""
    nodes = graph.build(model, x, dtype)
    work = []
    for part in x.to(dtype).split(chunk):
        eps_ = torch.full((len(part),), eps, dtype=dtype, device=part.device)
        ibp = interval.propagate(nodes, InputSet.around(part, eps_, "linf", (0.0, 1.0)))
        work += [(n.op, *ibp.bounds[n.inputs[0]]) for n in nodes if n.kind == "affine"]
    return lambda: [(op.linear(lo), op.abs_linear(hi)) for op, lo, hi in work]


def ibp_fns(model, x, eps: float, chunk: int) -> dict:
    """Callables keyed "computation|dtype": the forwards, the floor and IBP, float32 and 64."""
    fns = {}
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        net, xd = copy.deepcopy(model).to(dtype), x.to(dtype)
        fns[f"forward, one call|{name}"] = lambda net=net, xd=xd: net(xd)
        fns[f"forward, chunks of {chunk}|{name}"] = lambda net=net, xd=xd: [
            net(part) for part in xd.split(chunk)
        ]
        floor = affine_floor(model, x, eps, dtype, chunk)
        fns[f"floor: 2 affine maps a layer, chunks of {chunk}|{name}"] = floor
        fns[f"certify.bounds(method='ibp')|{name}"] = lambda dtype=dtype: certify.bounds(
            model, x, eps=eps, method="ibp", dtype=dtype
        )
        fns[f"of which graph.build (trace cached per model, maps from the weights)|{name}"] = (
            lambda dtype=dtype: graph.build(model, x, dtype)
        )
    return fns


IBP_CASES = [
    "cert_cnn 1x28x28, trained, mnist-5k",
    "cert_cnn 3x32x32, random weights and images",
    "small_cnn (avg-pool) 1x28x28, random weights, mnist-5k",
]


@pytest.mark.parametrize("case", IBP_CASES)
def test_ibp_against_forward(report, mnist, case):
    torch.manual_seed(0)
    model, x, eps = mnist[0], mnist[1], EPS
    if "3x32x32" in case:
        model = models.cert_cnn(3, 10, image_size=32).eval().to(DEVICE)
        x, eps = torch.rand(BATCH, 3, 32, 32, device=DEVICE), 8 / 255
    elif "avg-pool" in case:
        model = avg_pool_cnn(1).eval().to(DEVICE)
    chunk = chunk_size(model, x)
    with torch.no_grad():
        times = blocked_medians(ibp_fns(model, x, eps, chunk), repeats=3, min_run_time=1.0)
    report.table(IBP_TITLE, ["model", "computation", "dtype", "ms", "x forward float32, one call",
                             "x forward same dtype, same chunks", "target"])  # fmt: skip
    one_call = times["forward, one call|float32"]
    for key, t in times.items():
        name, dtype = key.split("|")
        same = times[f"forward, chunks of {chunk}|{dtype}"]
        target = ""
        if name.startswith("certify") and dtype == "float32":
            target = f"<= 3x: {'met' if t <= 3 * same else 'missed'}"
        report.row(IBP_TITLE, [case, name, dtype, f"{1e3 * t:.1f}", f"{t / one_call:.2f}x",
                               f"{t / same:.2f}x", target])  # fmt: skip


def _width(bounds) -> str:
    lower, upper = bounds
    return f"{(upper - lower).double().mean().item():.3g}"


def timed_once(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _ours(model, x, method: str, dtype: torch.dtype):
    with torch.no_grad():
        return certify.bounds(model, x, eps=EPS, method=method, dtype=dtype)


def test_crown_methods(report, mnist):
    model, x, _ = mnist
    report.table(CROWN_TITLE, CROWN_HEADER)
    with torch.no_grad():
        forward = median_seconds(lambda: model(x), min_run_time=1.0)
    report.row(CROWN_TITLE, ["model forward (floor)", "-", "float32", len(x), f"{forward:.3f}",
                             f"{1e3 * forward / len(x):.2f}", "1.00x", "-"])  # fmt: skip
    for method in ("ibp", "crown-ibp", "crown"):
        for dtype in (torch.float32, torch.float64):
            _ours(model, x[:1], method, dtype)  # warm-up (tracing, kernels)
            seconds, out = timed_once(lambda m=method, d=dtype: _ours(model, x, m, d))
            report.row(CROWN_TITLE, ["robustkern certify.bounds", method,
                                     str(dtype).removeprefix("torch."), len(x), f"{seconds:.3f}",
                                     f"{1e3 * seconds / len(x):.2f}", f"{seconds / forward:.1f}x",
                                     _width(out)])  # fmt: skip


def test_crown_against_auto_lirpa(report, mnist):
    """auto_LiRPA's IBP, CROWN-IBP and CROWN in float32 on the images of the rows above; the
    speed-up is its time over ours (float32, same method and images: the target row is
    "crown")."""
    why = lirpa_unavailable()
    if why is not None:
        report.table(CROWN_TITLE, CROWN_HEADER)
        report.row(CROWN_TITLE, ["auto_LiRPA (skipped)", why, "-", "-", "-", "-", "-", "-"])
        pytest.skip(why)
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    model, x, _ = mnist
    title = "robustkern against auto_LiRPA, float32, same images, method and eps (one run each)"
    report.table(title, ["method", "images", "auto_LiRPA s", "robustkern s", "speed-up",
                         "width auto_LiRPA", "width robustkern", "target"])  # fmt: skip
    bounded = BoundedModule(model, torch.empty_like(x), device=DEVICE)
    box = PerturbationLpNorm(eps=EPS, x_L=(x - EPS).clamp(0, 1), x_U=(x + EPS).clamp(0, 1))
    inputs = (BoundedTensor(x, box),)
    for method, theirs_name in (("ibp", "IBP"), ("crown-ibp", "CROWN-IBP"), ("crown", "CROWN")):
        with torch.no_grad():
            bounded.compute_bounds(x=inputs, method=theirs_name)  # warm-up
            theirs_s, theirs = timed_once(
                lambda m=theirs_name: bounded.compute_bounds(x=inputs, method=m)
            )
        ours_s, ours = timed_once(lambda m=method: _ours(model, x, m, torch.float32))
        target = (
            f">= 2x: {'met' if theirs_s >= 2 * ours_s else 'missed'}" if method == "crown" else ""
        )
        report.row(title, [method, len(x), f"{theirs_s:.3f}", f"{ours_s:.3f}",
                           f"{theirs_s / ours_s:.2f}x", _width(theirs), _width(ours),
                           target])  # fmt: skip


@pytest.mark.parametrize("batch_size", [256, 1024])
@pytest.mark.parametrize(("case", "images"), SMOOTH_CASES)
def test_smoothing_throughput(report, mnist, case, images, batch_size):
    model, x, _ = mnist
    if "avg-pool" in case:
        torch.manual_seed(0)
        model = avg_pool_cnn(1).eval().to(DEVICE)
    x = x[:images]
    rows = images * (N0 + N)
    noisy = (x[:1] + SIGMA * torch.randn(batch_size, *x.shape[1:], device=DEVICE)).contiguous()
    sizes = [min(batch_size, rows - s) for s in range(0, rows, batch_size)]

    def bare(sample: bool = False):
        with torch.no_grad():
            for size in sizes:
                if sample:  # the Gaussian draws any smoothing must make, one row each
                    torch.randn(size, x[0].numel(), device=DEVICE)
                model(noisy[:size])

    def ours():
        seed = torch.Generator(DEVICE).manual_seed(0)
        certify.smoothing(model, x, sigma=SIGMA, n0=N0, n=N, batch_size=batch_size,
                          generator=seed)  # fmt: skip

    fns = {"bare": bare, "sampled": lambda: bare(sample=True), "ours": ours}
    times = interleaved_medians(fns, rounds=3)
    report.table(SMOOTH_TITLE, ["model", "images", "batch size", "noise rows", "model loop s",
                                "model + torch.randn loop s", "certify.smoothing s",
                                "rows/s (smoothing)", "share of the model's throughput",
                                "share of model + randn", "target"])  # fmt: skip
    share = times["bare"] / times["ours"]
    report.row(SMOOTH_TITLE, [case, images, batch_size, f"{rows:,}", f"{times['bare']:.3f}",
                              f"{times['sampled']:.3f}", f"{times['ours']:.3f}",
                              f"{rows / times['ours']:,.0f}", f"{100 * share:.1f} %",
                              f"{100 * times['sampled'] / times['ours']:.1f} %",
                              f">= 90 %: {'met' if share >= 0.9 else 'missed'}"])  # fmt: skip
