"""evaluate(..., certify=): the certified lower bound beside the attack's upper bound on the same
examples, the per-example status, and an unsound certificate caught."""

import pytest
import torch
from torch import nn

import robustkern
from robustkern import certify
from robustkern.evaluation import core


@pytest.fixture(scope="module")
def mlp():
    x, y, xt, yt = robustkern.data.load("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    robustkern.training.fit(model, (x, y), epochs=3, batch_size=64, progress=False)
    return model.eval(), xt[:120], yt[:120]


@pytest.mark.parametrize(("method", "norm", "eps"),
                         [("crown-ibp", "linf", 0.01), ("ibp", "linf", 0.01),
                          ("lipschitz", "l2", 0.05)])  # fmt: skip
def test_certified_lower_bound_sits_under_the_attack(mlp, method, norm, eps):
    model, x, y = mlp
    result = robustkern.evaluate(model, (x, y), "apgd", eps=eps, norm=norm, steps=20,
                                 certify=method, batch_size=50, progress=False)  # fmt: skip
    direct = certify.verified(model, x, y, eps=eps, norm=norm, method=method)
    assert torch.equal(result.certified_correct, direct)
    assert bool((result.certified_correct <= result.robust_correct).all())
    status = result.sandwich()
    assert sum(status.values()) == result.n
    assert status["verified"] == int(direct.sum()) > 0  # a bound that says something
    summary = result.to_dict()
    assert (
        summary["certify"] == method and summary["certified_accuracy"] <= summary["robust_accuracy"]
    )
    assert f"certified ({method})" in str(result)


def test_a_per_example_eps_is_certified_per_example(mlp):
    model, x, y = mlp
    eps = torch.linspace(0.0, 0.05, len(x))
    result = robustkern.evaluate(model, (x, y), "pgd", eps=eps, steps=5, certify="ibp",
                                 batch_size=40, progress=False)  # fmt: skip
    assert torch.equal(result.certified_correct, certify.verified(model, x, y, eps=eps,
                                                                  method="ibp"))  # fmt: skip


def test_bad_certify_requests_fail_before_any_work(mlp, monkeypatch):
    model, x, y = mlp
    with pytest.raises(ValueError, match="certify covers L-inf and L2"):
        robustkern.evaluate(model, (x, y), "apgd", eps=1.0, norm="l1", certify="ibp")
    with pytest.raises(ValueError, match="certify must be one of"):
        robustkern.evaluate(model, (x, y), "pgd", eps=0.1, certify="smoothing")
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    monkeypatch.setattr(core, "_evaluate_batch", lambda *a, **k: pytest.fail("attacked"))
    with pytest.raises(certify.UnsupportedLayerError, match="MaxPool2d"):
        robustkern.evaluate(pooled, (x, y), "pgd", eps=0.1, certify="crown", progress=False)


def test_a_certificate_the_attack_contradicts_is_an_error(mlp, monkeypatch):
    model, x, y = mlp
    monkeypatch.setattr(core, "certify_verified", lambda m, x, y, **k: m(x).argmax(1) == y)
    with pytest.raises(RuntimeError, match="certified robust but the attack broke"):
        robustkern.evaluate(model, (x, y), "pgd", eps=0.3, steps=10, certify="ibp",
                            progress=False)  # fmt: skip


def test_the_suite_check_shows_the_sandwich(mlp, tmp_path):
    from robustkern import suite

    model, x, y = mlp
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)).eval()
    result = suite.run_suite({"mlp": model, "pooled": pooled}, (x, y), checks=["certified"],
                             quick=True, out=tmp_path, progress=False)  # fmt: skip
    checks = {c["model"]: c for c in result["checks"]}
    figures = checks["mlp"]["figures"]
    for threat in ("linf:0.3", "l2:0.5714"):  # the literature's radii for 8x8 grey images
        f = figures[threat]
        assert 0 <= f["certified"] <= f["robust"] <= 1
        assert f["curve"]["certified"] == sorted(f["curve"]["certified"], reverse=True)
    assert "crown-ibp" in figures["linf:0.3"]["by_certificate"]
    # max-pooling: bound propagation cannot bound it, the Lipschitz margin still applies
    pooled_figures = checks["pooled"]["figures"]
    assert "MaxPool2d" in pooled_figures["notes"]["bound"]
    assert set(pooled_figures["linf:0.3"]["by_certificate"]) == {"lipschitz"}
