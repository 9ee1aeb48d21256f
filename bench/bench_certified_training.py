"""Certified training's quality target: ``models.cert_cnn`` trained with IBP on mnist-5k at eps
0.2 (CPU, well under 10 minutes) is verified by full CROWN on the 1,000 test images at L-inf
0.1, and PGD (100 steps, 5 restarts) breaks at most 15 pp more than that (a narrow sandwich);
a verified image broken by PGD would be a bug."""

import time

import torch

from robustkern import certify, data, models, training
from robustkern.attacks import pgd

EPS_TRAIN, EPS, EPOCHS = 0.2, 0.1, 200
TITLE = (
    f"certified training: cert_cnn, IBP at eps {EPS_TRAIN} for {EPOCHS} epochs on mnist-5k "
    f"(batch 128, Adam 1e-3 piecewise), 1,000 test images at L-inf {EPS}, CPU float32"
)


def test_ibp_trained_cnn_is_verified_and_its_sandwich_is_narrow(report):
    torch.manual_seed(0)
    x, y, xt, yt = data.load("mnist-5k")
    model = models.cert_cnn(1, 10)
    start = time.perf_counter()
    training.fit(model, (x, y), method="ibp", eps=EPS_TRAIN, epochs=EPOCHS, batch_size=128,
                 lr=1e-3, lr_schedule="piecewise", train_eval=0, progress=False)  # fmt: skip
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        clean = (model(xt).argmax(1) == yt).float().mean().item()
    verified, seconds = {}, {}
    for method in ("ibp", "crown-ibp", "crown"):
        start = time.perf_counter()
        verified[method] = torch.cat([
            certify.verified(model, xt[i : i + 100], yt[i : i + 100], eps=EPS, method=method)
            for i in range(0, len(xt), 100)
        ])  # fmt: skip
        seconds[method] = time.perf_counter() - start
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    robust = torch.cat([
        pgd(model, xt[i : i + 250], yt[i : i + 250], eps=EPS, steps=100, restarts=5, generator=g,
            return_success=True)[1].logical_not() & (model(xt[i : i + 250]).argmax(1)
                                                     == yt[i : i + 250])
        for i in range(0, len(xt), 250)
    ])  # fmt: skip
    pgd_s = time.perf_counter() - start
    assert not bool((verified["crown"] & ~robust).any()), "a verified image was broken"
    report.table(TITLE, ["what", "accuracy", "seconds"])
    report.row(TITLE, ["training (IBP)", f"clean {100 * clean:.1f} %", f"{train_s:.1f}"])
    for method, ok in verified.items():
        report.row(TITLE, [f"verified, {method}", f"{100 * ok.float().mean():.1f} %",
                           f"{seconds[method]:.1f}"])  # fmt: skip
    report.row(TITLE, ["PGD-100 x 5 restarts robust", f"{100 * robust.float().mean():.1f} %",
                       f"{pgd_s:.1f}"])  # fmt: skip
    gap = 100 * (robust.float().mean() - verified["crown"].float().mean())
    report.row(TITLE, ["gap, PGD minus CROWN-verified", f"{gap:.1f} pp", ""])
