"""robustkern.stats: intervals and paired tests against closed forms and scipy."""

import math

import pytest
from scipy import stats as scipy_stats

from robustkern import stats


def test_wilson_interval_closed_form_and_edges():
    lo, hi = stats.interval(8, 10)
    # Wilson's score interval, written out: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1+z^2/n)
    z, n, p = stats.Z95, 10, 0.8
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo == pytest.approx((centre - half) / (1 + z * z / n))
    assert hi == pytest.approx((centre + half) / (1 + z * z / n))
    assert stats.interval(0, 20)[0] == 0.0 and 0.1 < stats.interval(0, 20)[1] < 0.2
    assert stats.interval(20, 20)[1] == 1.0
    assert stats.interval(0, 0) == (0.0, 1.0)
    assert stats.interval(500, 1000)[1] - stats.interval(500, 1000)[0] == pytest.approx(
        2 * 1.96 * math.sqrt(0.25 / 1000), rel=0.01
    )
    with pytest.raises(ValueError, match="k must lie in"):
        stats.interval(11, 10)
    assert stats.percent_with_interval(8, 10) == "80.0 % [49.0, 94.3]"


def test_binomial_tail_and_mcnemar():
    assert stats.exceeds(0, 50, 0.01) == 1.0
    assert stats.exceeds(2, 50, 0.01) == pytest.approx(1 - 0.99**50 - 50 * 0.01 * 0.99**49)
    assert stats.mcnemar(5, 0) == pytest.approx(0.5**5)
    assert stats.mcnemar(3, 3) == pytest.approx(scipy_stats.binom.sf(2, 6, 0.5))
    assert stats.mcnemar(0, 0) == 1.0


@pytest.mark.parametrize(
    ("b", "c", "n", "verdict"),
    [
        (0, 9, 50, "pass"),  # never beaten
        (1, 9, 50, "warn"),  # one point, within 1 %
        (2, 9, 50, "inconclusive"),  # 4 %: above the tolerance, but 50 images cannot tell
        (2, 9, 1000, "warn"),  # 0.2 % of 1000
        (9, 0, 50, "fail"),  # significantly stronger (McNemar)
        (30, 40, 1000, "fail"),  # 3 % of 1000: significantly above 1 %
    ],
)
def test_paired_verdicts(b, c, n, verdict):
    assert stats.paired_verdict(b, c, n, 0.01)[0] == verdict
