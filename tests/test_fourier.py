"""fourier_perturb against its torch.fft twin, the basis convention (orthonormality, Parseval,
conjugate symmetry), and robustkern.fourier's heat map against a brute-force map and a model
with a known answer; resume, band filters, the filtered-training experiment and the CLI."""

import json
import math

import pytest
import torch

from robustkern import data, fourier, models, ops, reference
from robustkern.cli import main
from tests.conftest import DEVICES

OP = torch.ops.robustkern.fourier_perturb
SIZES = [(1, 1), (1, 5), (4, 4), (5, 5), (7, 8), (8, 6), (28, 28)]


def all_freqs(h, w):
    return fourier.frequency_grid(h, w).view(-1, 2)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_basis_is_orthonormal_over_conjugate_pairs(h, w):
    freqs = all_freqs(h, w)[fourier.distinct_frequencies(h, w)]
    b = fourier.fourier_basis(h, w, freqs, dtype=torch.float64).flatten(1)
    assert len(freqs) == (h * w + sum(1 for f in all_freqs(h, w) if _self_conj(f, h, w))) // 2
    torch.testing.assert_close(b @ b.T, torch.eye(len(freqs), dtype=torch.float64))


def _self_conj(f, h, w):
    return (2 * int(f[0])) % h == 0 and (2 * int(f[1])) % w == 0


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_basis_spectrum_is_at_the_frequency_and_its_conjugate(h, w):
    freqs = all_freqs(h, w)
    b = fourier.fourier_basis(h, w, freqs, dtype=torch.float64)
    spectrum = torch.fft.fft2(b)
    # Parseval: the spectrum's energy / (h w) is the image's, 1.
    energy = spectrum.abs().pow(2).flatten(1).sum(1) / (h * w)
    torch.testing.assert_close(energy, torch.ones(len(freqs), dtype=torch.float64))
    for f, s in zip(freqs.tolist(), spectrum, strict=True):
        support = s.abs() > 1e-9
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[f[0] % h, f[1] % w] = expected[-f[0] % h, -f[1] % w] = True
        assert torch.equal(support, expected), f


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_conjugate_frequencies_give_the_same_image_exactly(h, w):
    freqs = all_freqs(h, w)
    b = fourier.fourier_basis(h, w, freqs)
    assert torch.equal(b, b[fourier.conjugate_index(h, w)])
    # offsets are taken mod (h, w)
    shifted = freqs + torch.tensor([h, -3 * w])
    assert torch.equal(fourier.fourier_basis(h, w, shifted), b)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_basis_matches_the_fft_reference_and_the_stated_cosine(h, w):
    freqs = all_freqs(h, w)
    ours = fourier.fourier_basis(h, w, freqs, dtype=torch.float64)
    torch.testing.assert_close(ours, reference.fourier_basis(h, w, freqs), rtol=0, atol=1e-12)
    u = torch.arange(h, dtype=torch.float64)[:, None]
    v = torch.arange(w, dtype=torch.float64)[None, :]
    for (i, j), b in zip(freqs.tolist(), ours, strict=True):
        c = math.sqrt((1 if _self_conj((i, j), h, w) else 2) / (h * w))
        torch.testing.assert_close(b, c * torch.cos(2 * math.pi * (i * u / h + j * v / w)))


def _layouts(x):
    n, c, h, w = x.shape
    wide = torch.empty(n, c, h, 2 * w, dtype=x.dtype)
    wide[..., ::2] = x
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide[..., ::2],
        "permuted": x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2),
    }


TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(3, 3, 7, 8), (2, 1, 5, 5), (0, 3, 4, 4), (4, 2, 1, 6)])
@pytest.mark.parametrize("signs", ["none", "pm1", "real"])
def test_kernel_matches_reference(device, dtype, shape, signs):
    x = torch.rand(shape, dtype=torch.float64).to(dtype)
    h, w = shape[2:]
    freqs = torch.cat([all_freqs(h, w), torch.tensor([[h + 1, -w - 2]])])
    s = None
    if signs != "none":
        s = torch.randint(0, 2, (len(freqs), *shape[:2])).double() * 2 - 1
        s = s * torch.rand_like(s) * 2 if signs == "real" else s
    want = reference.fourier_perturb(x, freqs, eps=1.5, signs=s, bounds=(0.1, 0.9))
    for name, xl in _layouts(x).items():
        got = ops.fourier_perturb(
            xl.to(device), freqs, eps=1.5, signs=None if s is None else s.to(device),
            bounds=(0.1, 0.9),
        )  # fmt: skip
        assert got.shape == (len(freqs), *shape) and got.dtype == dtype, name
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=TOL[dtype], msg=name)
        assert got.min() >= 0.1 and got.max() <= 0.9 if got.numel() else True


def test_output_follows_the_input_memory_format():
    x = torch.rand(2, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    out = ops.fourier_perturb(x, all_freqs(5, 6)[:4], eps=1.0).flatten(0, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert ops.fourier_perturb(x.contiguous(), all_freqs(5, 6)[:4], eps=1.0).is_contiguous()


def test_unbounded_perturbation_has_norm_eps_per_channel():
    x = torch.rand(3, 2, 6, 7, dtype=torch.float64)
    out = ops.fourier_perturb(x, all_freqs(6, 7), eps=2.5, bounds=(-math.inf, math.inf))
    norms = (out - x).flatten(3).norm(dim=3)
    torch.testing.assert_close(norms, torch.full_like(norms, 2.5))


def test_no_frequencies_gives_an_empty_batch():
    out = ops.fourier_perturb(torch.rand(2, 3, 4, 4), torch.zeros(0, 2, dtype=torch.long), eps=1.0)
    assert out.shape == (0, 2, 3, 4, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.rand(2, 3, 5, 6, device=device)
    freqs = all_freqs(5, 6)[:7].to(device)
    signs = (torch.randint(0, 2, (7, 2, 3), device=device) * 2 - 1).float()
    for args in [(x, freqs, 1.0, signs, 0.0, 1.0), (x, freqs, 0.5, None, -1.0, 2.0)]:
        torch.library.opcheck(OP.default, args)


def test_works_under_torch_compile():
    x = torch.rand(2, 1, 6, 6)
    freqs = all_freqs(6, 6)[:5]
    fn = torch.compile(lambda t: ops.fourier_perturb(t, freqs, eps=1.0).sum(), fullgraph=True)
    torch.testing.assert_close(fn(x), ops.fourier_perturb(x, freqs, eps=1.0).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", list(TOL))
def test_cuda_matches_cpu(dtype):
    x = torch.rand(5, 3, 32, 32).to(dtype)
    freqs = all_freqs(32, 32)
    s = torch.randint(0, 2, (len(freqs), 5, 3)).float() * 2 - 1
    cpu = ops.fourier_perturb(x, freqs, eps=4.0, signs=s)
    for xl in _layouts(x).values():
        gpu = ops.fourier_perturb(xl.cuda(), freqs, eps=4.0, signs=s.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=TOL[dtype] * 10)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.rand(3, 4, 4), None, 1.0, None, 0.0, 1.0), "x must be a batch of images"),
        ((torch.ones(1, 1, 4, 4, dtype=torch.int32), None, 1.0, None, 0.0, 1.0), "x must be float"),
        ((torch.rand(1, 1, 4, 4), torch.zeros(2, 2), 1.0, None, 0.0, 1.0), "int64"),
        ((torch.rand(1, 1, 4, 4), torch.zeros(2, 3).long(), 1.0, None, 0.0, 1.0), r"\(F, 2\)"),
        ((torch.rand(1, 1, 4, 4), None, -1.0, None, 0.0, 1.0), "eps"),
        ((torch.rand(1, 1, 4, 4), None, math.nan, None, 0.0, 1.0), "eps"),
        ((torch.rand(1, 1, 4, 4), None, 1.0, None, 1.0, 0.0), "lo <= hi"),
        ((torch.rand(1, 1, 4, 4), None, 1.0, torch.ones(2, 1, 2), 0.0, 1.0), "signs must have"),
        ((torch.rand(1, 1, 4, 4), None, 1.0, torch.ones(2, 1, 1).long(), 0.0, 1.0), "floating"),
    ],
)
def test_bad_input_names_the_problem(args, match):
    x, freqs, *rest = args
    freqs = torch.zeros(2, 2, dtype=torch.long) if freqs is None else freqs
    with pytest.raises(RuntimeError, match=match):
        OP(x, freqs, *rest)


def test_wrapper_refuses_fractional_frequencies():  # int64 conversion would truncate 1.5 to 1
    with pytest.raises(ValueError, match="integer"):
        ops.fourier_perturb(torch.rand(1, 1, 4, 4), torch.tensor([[1.5, 0.0]]), eps=1.0)


# ---- heat map ----------------------------------------------------------------------------


class OneFrequency(torch.nn.Module):
    """Class 0 unless the image's component along U(i, j) exceeds 1 in magnitude: a heat map
    with eps > 1 must show errors at (i, j) and its conjugate only."""

    def __init__(self, h, w, freq):
        super().__init__()
        self.register_buffer("u", fourier.fourier_basis(h, w, torch.tensor([freq]))[0])

    def forward(self, x):
        s = (x[:, 0] * self.u).sum((1, 2)).abs()
        return torch.stack([1 - s, s - 1], dim=1)


@pytest.mark.parametrize(("h", "w", "freq"), [(7, 8, (2, 3)), (8, 8, (-4, 1)), (9, 5, (0, -2)),
                                              (6, 6, (-3, -3)), (5, 5, (0, 0))])  # fmt: skip
def test_heatmap_fails_exactly_at_the_frequency_a_model_reads(h, w, freq):
    x = 0.01 * torch.randn(6, 1, h, w)  # every component well below the threshold 1
    y = torch.zeros(6, dtype=torch.long)
    m = fourier.heatmap(OneFrequency(h, w, freq), x, y, eps=2.0, bounds=(-9, 9), progress=False)
    expected = torch.zeros(h, w)
    i, j = freq
    expected[(i + h // 2) % h, (j + w // 2) % w] = 1
    expected[(-i + h // 2) % h, (-j + w // 2) % w] = 1
    assert torch.equal(m, expected)


def _small_model(seed=0):
    torch.manual_seed(seed)
    return models.small_cnn(1, 10, width=4)


def _brute_force_heatmap(model, x, y, eps, seed):
    """Every one of the H*W frequencies evaluated on its own, with the torch.fft basis."""
    n, c, h, w = x.shape
    conj = fourier.conjugate_index(h, w)
    basis = reference.fourier_basis(h, w, all_freqs(h, w), torch.float32)
    errors = torch.zeros(h * w)
    for k in range(h * w):
        signs = fourier.heatmap_signs(seed, torch.tensor([min(k, int(conj[k]))]), n, c)[0]
        xp = (x + eps * signs[..., None, None] * basis[k]).clamp(0, 1)
        errors[k] = (model(xp).argmax(1) != y).float().mean()
    return errors.view(h, w)


def test_heatmap_equals_the_brute_force_map_for_any_batch_size():
    x, y = data.load("digits")[2:]
    x, y = x[:40], y[:40]
    model = _small_model().eval()
    with torch.no_grad():
        want = _brute_force_heatmap(model, x, y, 3.0, seed=5)
    for batch_size in (1, 7, 40, 10_000):
        got = fourier.heatmap(model, x, y, eps=3.0, seed=5, batch_size=batch_size, progress=False)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert want.std() > 0  # the map is not trivially flat


def test_heatmap_returns_counts_and_restores_the_model_mode():
    x, y = data.load("digits")[2:]
    model = _small_model().train()
    m, counts = fourier.heatmap(model, x[:30], y[:30], eps=2.0, progress=False, return_counts=True)
    assert model.training
    assert counts.dtype == torch.int64 and torch.equal(counts.float() / 30, m)


class Interrupt(Exception):
    pass


class DiesAfter(torch.nn.Module):
    """Wraps a model and raises after `calls` forward passes (a simulated kill)."""

    def __init__(self, model, calls):
        super().__init__()
        self.model, self.calls, self.seen = model, calls, 0

    def forward(self, x):
        self.seen += 1
        if self.calls is not None and self.seen > self.calls:
            raise Interrupt
        return self.model(x)


def test_heatmap_resumes_after_a_kill(tmp_path):
    x, y = data.load("digits")[2:]
    x, y = x[:20], y[:20]
    ckpt = tmp_path / "map.ckpt"
    full = fourier.heatmap(_small_model(), x, y, eps=2.0, batch_size=40, progress=False)
    dying = DiesAfter(_small_model(), calls=5)
    with pytest.raises(Interrupt):
        fourier.heatmap(dying, x, y, eps=2.0, batch_size=40, checkpoint=ckpt, progress=False)
    assert ckpt.is_file()
    resumed = DiesAfter(_small_model(), calls=None)
    got = fourier.heatmap(resumed, x, y, eps=2.0, batch_size=40, checkpoint=ckpt, progress=False)
    assert torch.equal(got, full)
    batches = math.ceil(len(fourier.distinct_frequencies(8, 8)) / 2)
    # each run first checks the labels on one image; the killed run then did 4 batches
    assert resumed.seen == 1 + batches - 4  # only what was left


def test_heatmap_refuses_a_foreign_or_corrupt_checkpoint(tmp_path):
    x, y = data.load("digits")[2:]
    x, y = x[:10], y[:10]
    ckpt = tmp_path / "map.ckpt"
    fourier.heatmap(_small_model(0), x, y, eps=2.0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(model, data or settings\)"):
        fourier.heatmap(_small_model(1), x, y, eps=2.0, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(model, data or settings\)"):
        fourier.heatmap(_small_model(0), x, y, eps=3.0, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        fourier.heatmap(_small_model(0), x, y, eps=2.0, checkpoint=ckpt, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": -1.0}, "eps"), ({"eps": 1.0, "batch_size": 0}, "batch_size")],
)
def test_heatmap_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fourier.heatmap(_small_model(), torch.rand(2, 1, 8, 8), torch.zeros(2).long(), **kwargs)
    with pytest.raises(ValueError, match="y must have shape"):
        fourier.heatmap(_small_model(), torch.rand(2, 1, 8, 8), torch.zeros(3).long(), eps=1.0)
    with pytest.raises(ValueError, match="x must be"):
        fourier.heatmap(_small_model(), torch.rand(2, 8, 8), torch.zeros(2).long(), eps=1.0)
    x = torch.rand(2, 1, 8, 8)
    for y, match in [(torch.zeros(2, 1).long(), "shape"), (torch.zeros(2).int(), "int64"),
                     (torch.tensor([0, 99]), "labels must lie in")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):  # else: silently counted as errors
            fourier.heatmap(_small_model(), x, y, eps=1.0, progress=False)


def test_radial_profile_averages_rings_from_low_to_high():
    h = w = 5
    radius = fourier.frequency_grid(h, w).double().norm(dim=-1)
    profile = fourier.radial_profile(radius.float())
    assert profile[0] == 0 and len(profile) == 4  # radii 0, 1, 2 (incl. sqrt 2 -> 1), 3 (2.83)
    assert (profile.diff() > 0).all()


def test_plot_heatmap_writes_a_png(tmp_path):
    path = fourier.plot_heatmap(torch.rand(7, 8), tmp_path / "m.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- band filters and the filtered-training experiment ---------------------------------


def test_low_and_high_pass_split_the_spectrum():
    x = torch.rand(3, 2, 9, 8, dtype=torch.float64)
    low, high = fourier.band_filter(x, 2, "low"), fourier.band_filter(x, 2, "high")
    mean = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(low + high, x + mean)  # both keep the zero frequency
    torch.testing.assert_close(high.mean((2, 3), keepdim=True), mean)
    spectrum = torch.fft.fftshift(torch.fft.fft2(low)).abs()
    inside = fourier.frequency_grid(9, 8).abs().amax(-1) <= 2
    assert spectrum[..., ~inside].max() < 1e-10
    torch.testing.assert_close(fourier.band_filter(x, 5, "low"), x)
    with pytest.raises(ValueError, match="kind"):
        fourier.band_filter(x, 2, "band")


def test_filtered_training_experiment_on_digits():
    x_train, y_train, x_test, y_test = data.load("digits")
    result = fourier.filtered_training_experiment(
        lambda: models.small_cnn(1, 10, width=8), (x_train, y_train), (x_test, y_test),
        epochs=8, progress=False,
    )  # fmt: skip
    assert set(result.accuracy) == {"clean", "low-pass", "high-pass"}
    assert all(set(row) == {"clean", "low-pass", "high-pass"} for row in result.accuracy.values())
    # each model learns its own kind of image well above chance (10 %)
    for kind in result.accuracy:
        assert result.accuracy[kind][kind] > 0.5, (kind, result.accuracy)
    assert "trained on" in str(result)


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_fourier_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "fourier"
    code = main(["fourier", "--data", "digits", "--limit", "30", "--epochs", "1", "--eps", "3",
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "heatmap.json").read_text())
    assert report["n"] == 30 and len(report["error"]) == 8 and len(report["error"][0]) == 8
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "heatmap.ckpt").exists()
    assert "radial profile" in capsys.readouterr().out


def test_a_strided_heat_map_evaluates_the_coarse_grid_exactly(tmp_path):
    """A large image's map on every s-th frequency: the same errors there as the full map, NaN
    (counts -1) elsewhere; the profile and the plot skip what was not evaluated."""
    torch.manual_seed(0)
    model = models.small_cnn(1, 10, width=4).eval()
    x, y = torch.rand(6, 1, 12, 12), torch.randint(0, 10, (6,))
    full, full_counts = fourier.heatmap(model, x, y, eps=2.0, progress=False, return_counts=True)
    coarse, counts = fourier.heatmap(model, x, y, eps=2.0, progress=False, return_counts=True,
                                     stride=3)  # fmt: skip
    on_grid = (fourier.frequency_grid(12, 12) % 3 == 0).all(-1)
    assert torch.equal(counts[on_grid], full_counts[on_grid])
    assert (counts[~on_grid] == -1).all() and coarse[~on_grid].isnan().all()
    profile = fourier.radial_profile(coarse)
    assert profile[0] == full[6, 6] and profile.isnan().any()
    assert fourier.plot_heatmap(coarse, tmp_path / "coarse.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        fourier.heatmap(model, x, y, eps=2.0, progress=False, stride=0)
