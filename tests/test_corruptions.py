"""robustkern.corruptions: bounds, determinism, severity monotonicity, fidelity to the reference
code's operations (scipy's Gaussian filter, matplotlib's HSV conversion, box pooling), the
severity tables, and the corruption report with mCE."""

import itertools
import json

import numpy as np
import pytest
import torch

from robustkern import corruptions as C
from robustkern import data, models, training
from robustkern.cli import main
from robustkern.corruptions import filtering
from tests.conftest import DEVICES


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = data.load("digits")
    return x_train, y_train, x_test[:120], y_test[:120]


@pytest.fixture(scope="module")
def model(digits):
    x_train, y_train, *_ = digits
    torch.manual_seed(0)
    m = models.small_cnn(1, 10, width=8)
    training.fit(m, (x_train, y_train), epochs=8, batch_size=64, progress=False)
    return m.eval()


def colour_images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size + 4, size + 4, generator=g), 5, 1)
    return smooth.clamp(0, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_every_severity_stays_in_bounds_and_is_deterministic(name, device):
    x = colour_images().to(device)
    for severity in C.SEVERITIES:
        a = C.corrupt(x, name, severity, generator=torch.Generator(device).manual_seed(1))
        b = C.corrupt(x, name, severity, generator=torch.Generator(device).manual_seed(1))
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, b)
        assert not torch.equal(a, x), (name, severity)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_odd_shapes_and_dtypes(name):
    """Empty batches, grey, four channels, tiny and non-square images; half, bfloat16 and
    double inputs keep their dtype."""
    g = torch.Generator().manual_seed(0)
    for shape, dtype in [((0, 3, 16, 16), torch.float32), ((2, 1, 8, 8), torch.float32),
                         ((2, 4, 20, 28), torch.float64), ((2, 3, 24, 24), torch.float16),
                         ((1, 3, 12, 12), torch.bfloat16)]:  # fmt: skip
        x = torch.rand(shape, generator=g).to(dtype)
        out = C.corrupt(x, name, 4, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == dtype, (shape, dtype)
        assert torch.isfinite(out).all() and ((out >= 0) & (out <= 1)).all(), (shape, dtype)


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_other_bounds_map_through_the_unit_range(name):
    x = colour_images()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    unit = C.corrupt(x, name, 3, generator=g())
    scaled = C.corrupt(x * 2 - 1, name, 3, generator=g(), bounds=(-1, 1))
    torch.testing.assert_close(scaled, unit * 2 - 1, rtol=0, atol=1e-5)


# Steps s -> s + 1 where the reference's own parameters change images less (each severity is
# pinned to the reference in test_corruptions_reference.py): glass blur's stronger blur with
# the same shuffle (CIFAR) or 3 passes of offset 2 before 2 of offset 3 (ImageNet); frost's
# image weight falling faster than its frost weight rises; elastic's severities trading a
# large affine jitter for small local displacements; spatter's water before mud; saturate's
# 90 % desaturation before a 1.5x saturation.
CHANGE_SHRINKS = {
    ("glass_blur", "cifar"): {2, 4},
    ("glass_blur", "imagenet"): {3},
    ("frost", "cifar"): {3, 4},
    ("frost", "imagenet"): {3},
    ("elastic_transform", "cifar"): {1, 2, 3, 4},
    ("elastic_transform", "imagenet"): {2},
    ("spatter", "cifar"): {3},
    ("saturate", "cifar"): {2},
}


@pytest.mark.parametrize(("table", "size"), [("cifar", 32), ("imagenet", 96)])
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_mean_absolute_change_grows_with_severity(name, table, size):
    x = colour_images(n=16, size=size)
    change = [
        (C.corrupt(x, name, s, generator=torch.Generator().manual_seed(0)) - x).abs().mean()
        for s in C.SEVERITIES
    ]
    shrinks = CHANGE_SHRINKS.get((name, table), set())
    for s, (a, b) in enumerate(itertools.pairwise(change), start=1):
        assert (b < a) if s in shrinks else (b >= a * 0.97), (s, change)
    if not shrinks:
        assert change[-1] > 1.1 * change[0] > 0, change


def test_accuracy_does_not_rise_with_severity_on_average(digits, model):
    *_, x, y = digits
    report = C.corruption_report(model, x, y, progress=False)
    by_severity = np.array(list(report.accuracy.values())).mean(axis=0)
    assert all(b <= a + 0.01 for a, b in itertools.pairwise(by_severity)), by_severity
    assert by_severity[-1] < by_severity[0] < report.clean_accuracy + 0.01


def test_gaussian_blur_matches_scipy_nearest_mode():
    from scipy.ndimage import gaussian_filter

    x = colour_images(n=2)
    for severity, sigma in enumerate(C.PARAMETERS["gaussian_blur"]["cifar"], start=1):
        want = gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest",
                               truncate=4.0)  # fmt: skip
        got = C.corrupt(x, "gaussian_blur", severity)
        np.testing.assert_allclose(got.numpy(), want.clip(0, 1), atol=1e-6)


def test_brightness_matches_an_hsv_round_trip():
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    x = colour_images(n=2)
    x[0, :, :4, :4] = 0  # black pixels: V = 0
    for severity, delta in enumerate(C.PARAMETERS["brightness"]["cifar"], start=1):
        hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).double().numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0, 1)
        want = hsv_to_rgb(hsv).transpose(0, 3, 1, 2)
        got = C.corrupt(x, "brightness", severity)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_contrast_pulls_each_channel_towards_its_mean():
    x = colour_images(n=2)
    c = C.PARAMETERS["contrast"]["cifar"][4]
    mean = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(C.corrupt(x, "contrast", 5), ((x - mean) * c + mean).clamp(0, 1))


def test_pixelate_with_an_integer_factor_is_block_averaging():
    x = colour_images(n=2, size=224)
    got = C.corrupt(x, "pixelate", 2)  # ImageNet table: factor 0.5
    blocks = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(got, blocks)


def test_noise_statistics():
    x = torch.full((8, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = C.corrupt(x, "gaussian_noise", 5, generator=g)
    assert abs((noisy - x).std().item() - 0.10) < 0.005
    shot = C.corrupt(x, "shot_noise", 5, generator=g)  # Poisson(0.5 * 50) / 50
    assert abs(shot.mean().item() - 0.5) < 0.01
    assert abs(shot.var().item() - 0.5 / 50) < 0.001
    impulse = C.corrupt(x, "impulse_noise", 5, generator=g)
    flipped = (impulse != 0.5).float().mean().item()
    assert abs(flipped - 0.07) < 0.01
    assert abs((impulse == 1).float().mean().item() - 0.035) < 0.006


def test_fog_fractal_is_a_normalised_height_map():
    f = filtering.plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0), torch.zeros(1))
    assert f.shape == (3, 32, 32)
    assert torch.equal(f.amin((1, 2)), torch.zeros(3)) and torch.equal(
        f.amax((1, 2)), torch.ones(3)
    )
    assert not torch.equal(f[0], f[1])


def test_defocus_kernel_is_a_normalised_centred_disk():
    for radius, alias in [(0.3, 0.4), (1.5, 0.1), (3, 0.1), (6, 0.5), (8, 0.5), (10, 0.5)]:
        k = filtering.disk(radius, alias, torch.zeros(1))
        assert k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
        # A disk touching its grid's edge (radius 8 and 10) gains mass from cv2's reflect-101
        # border in the anti-aliasing blur, as in the reference code; the others sum to 1.
        touches = radius in (8, 10)
        assert (k.sum() > 1.001) if touches else abs(k.sum() - 1) < 1e-9, (radius, k.sum())
        torch.testing.assert_close(k, k.flip(0).flip(1))
        assert k[k.shape[0] // 2, k.shape[1] // 2] == k.max()


def test_severity_tables_by_image_size():
    assert all(len(t[name]) == 5 for t in C.PARAMETERS.values() for name in ("cifar", "imagenet"))
    assert C.table_for(28, 28) == "cifar" and C.table_for(32, 32) == "cifar"
    assert C.table_for(64, 64) == "cifar" and C.table_for(224, 224) == "imagenet"
    # the small-image table is the milder one: e.g. noise sigma 0.10 vs 0.38 at severity 5
    x = colour_images(n=8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "contrast", "fog"):
        mild = (C.corrupt(x, name, 5, generator=g(), table="cifar") - x).abs().mean()
        harsh = (C.corrupt(x, name, 5, generator=g(), table="imagenet") - x).abs().mean()
        assert mild < harsh, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "hail", "severity": 1}, "unknown corruption"),
        ({"name": "fog", "severity": 6}, "severity"),
        ({"name": "fog", "severity": 1, "bounds": (1, 0)}, "bounds"),
        ({"name": "fog", "severity": 1, "table": "tiny"}, "table"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.corrupt(colour_images(n=1), **kwargs)
    with pytest.raises(ValueError, match="x must be"):
        C.corrupt(torch.rand(3, 8, 8), "fog", 1)


def test_report_with_a_baseline(digits, model):
    *_, x, y = digits
    names = ["gaussian_noise", "contrast", "fog"]
    same = C.corruption_report(model, x, y, corruptions=names, baseline=model, progress=False)
    for ce in (same.corruption_errors(), same.relative_corruption_errors()):
        assert set(ce) == set(names)
        assert all(v == pytest.approx(1.0) or np.isnan(v) for v in ce.values())
    torch.manual_seed(1)
    weak = models.small_cnn(1, 10, width=8).eval()  # untrained: errors near 90 %
    ours = C.corruption_report(model, x, y, corruptions=names, baseline=weak, progress=False)
    assert ours.mce < 1.0
    base = C.corruption_report(weak, x, y, corruptions=names, progress=False)
    from_report = C.corruption_report(model, x, y, corruptions=names, baseline=base,
                                      progress=False)  # fmt: skip
    assert from_report.corruption_errors() == pytest.approx(ours.corruption_errors())
    d = ours.to_dict()
    assert {"clean_accuracy", "accuracy", "mce", "relative_mce", "mean_accuracy"} <= set(d)
    json.dumps(d)
    assert "mCE" in str(ours)
    with pytest.raises(ValueError, match="baseline"):
        base.corruption_errors()


def test_mce_averages_the_imagenet_c_15_and_shows_the_extra_four_apart():
    def rows(*accuracies):
        names = ("contrast", "fog", "saturate", "low_pass")
        return {k: [a] * 5 for k, a in zip(names, accuracies, strict=True)}

    base = C.CorruptionReport(0.9, rows(0.5, 0.8, 0.6, 0.1), "cifar", 10)
    ours = C.CorruptionReport(0.95, rows(0.75, 0.7, 0.8, 0.2), "cifar", 10, baseline=base)
    # CE: contrast 0.25 / 0.5, fog 0.3 / 0.2; relative: 0.2 / 0.4 and 0.25 / 0.1
    assert ours.mce == pytest.approx(1.0) and ours.relative_mce == pytest.approx(1.5)
    assert ours.extra_mce() == pytest.approx(0.2 / 0.4)  # saturate alone
    assert ours.corruption_errors()["low_pass"] == pytest.approx(0.8 / 0.9)
    assert ours.groups() == {"ImageNet-C": ["contrast", "fog"], "extra": ["saturate"],
                             "other": ["low_pass"]}  # fmt: skip
    assert ours.group_accuracy("ImageNet-C") == pytest.approx(0.725)
    text = str(ours)
    assert "-- extra" in text and "mCE 100.0 %" in text and "mean CE 50.0 %" in text
    d = ours.to_dict()
    assert d["extra_mce"] == pytest.approx(0.5) and d["groups"]["other"] == ["low_pass"]
    assert len(C.NAMES_15) == 15 and len(C.NAMES_EXTRA) == 4
    assert set(C.NAMES_15 + C.NAMES_EXTRA + ("low_pass", "high_pass")) == set(C.CORRUPTIONS)


def test_report_restores_model_mode_and_checks_names(digits, model):
    *_, x, y = digits
    model.train()
    C.corruption_report(model, x[:10], y[:10], corruptions=["contrast"], progress=False)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corruption_report(model, x, y, corruptions=["hail"], progress=False)
    # labels the accuracy could not count right (2-D ones broadcast to a 10 x 10 comparison)
    for labels, match in [(y[:10, None], "shape"), (y[:10] + 10, "labels must lie in"),
                          (y[:10].float(), "int64")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            C.corruption_report(model, x[:10], labels, corruptions=["contrast"], progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", ["contrast", "gaussian_blur", "defocus_blur", "pixelate",
                                  "brightness", "low_pass", "high_pass", "zoom_blur",
                                  "saturate", "jpeg_compression"])  # fmt: skip
def test_deterministic_corruptions_agree_on_cpu_and_cuda(name):
    x = colour_images()
    torch.testing.assert_close(C.corrupt(x.cuda(), name, 4).cpu(), C.corrupt(x, name, 4))


def test_cli_corruptions(tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["corruptions", "--data", "digits", "--limit", "40", "--epochs", "1",
                 "--corruptions", "contrast,fog", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "corruptions.json").read_text())
    assert set(report["accuracy"]) == {"contrast", "fog"} and report["n"] == 40
    assert (out / "corruptions.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["corruptions", "--data", "digits", "--corruptions", "hail", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 2  # fmt: skip
    assert "unknown corruption" in capsys.readouterr().err


def test_cli_corruptions_against_a_baseline_model(tmp_path):
    out = tmp_path / "c"
    code = main(["corruptions", "--data", "digits", "--limit", "30", "--epochs", "1",
                 "--corruptions", "contrast", "--baseline-model", "robustkern.models:small_cnn",
                 "--baseline-model-kwargs", '{"in_channels": 1, "width": 4}',
                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "corruptions.json").read_text())
    assert {"mce", "relative_mce", "corruption_errors"} <= set(report)


def test_nan_or_inf_images_are_named_by_the_corruption_report_and_the_heat_map():
    from robustkern import fourier

    model = models.small_cnn(1, 10, width=4).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.zeros(6, dtype=torch.int64)
    x[4, 0, 1, 1] = float("nan")
    for call in (
        lambda: C.corrupt(x, "fog", 1),
        lambda: C.corruption_report(model, x, y, progress=False),
        lambda: fourier.heatmap(model, x, y, eps=1.0, progress=False),
    ):
        with pytest.raises(ValueError, match=r"1 NaN value\(s\) in 1 of 6 images \(indices 4\)"):
            call()
