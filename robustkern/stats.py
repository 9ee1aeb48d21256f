"""How much a measured accuracy can be trusted: 95 % intervals for proportions and paired tests
for two attacks (or models) scored on the same images, so that a verdict the sample cannot
decide reads "inconclusive", never pass or fail on noise.

* ``interval(k, n)``: Wilson's score interval for k successes out of n (better coverage than the
  normal approximation at small n and near 0 or 1, never outside [0, 1]).
* ``exceeds(k, n, rate)``: one-sided exact binomial p-value that the true rate is above ``rate``.
* ``mcnemar(b, c)``: one-sided exact McNemar p-value that B beats A, where b counts the images
  only B succeeded on and c those only A succeeded on (the concordant ones carry no information).
"""

from __future__ import annotations

import math

from scipy import stats as _scipy

Z95 = 1.959963984540054  # two-sided 95 %
ALPHA = 0.05  # the significance level of every paired comparison in robustkern
GRADES = ("pass", "warn", "inconclusive", "fail")  # a comparison's verdicts, best to worst


def interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's 95 % interval (lo, hi) for the proportion k / n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n={n}], got {k}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact ends at k = 0 and k = n (rounding would leave the interval a hair off them)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def percent_with_interval(k: int, n: int, digits: int = 1) -> str:
    """'94.2 % [92.0, 95.9]': k / n as a percentage with its 95 % interval."""
    if n <= 0:
        return "n/a (no images)"
    lo, hi = interval(k, n)
    return f"{100 * k / n:.{digits}f} % [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def exceeds(k: int, n: int, rate: float) -> float:
    """P(X >= k) for X ~ Binomial(n, rate): small when k / n shows a true rate above ``rate``."""
    if k <= 0:
        return 1.0
    return float(_scipy.binom.sf(k - 1, n, rate))


def mcnemar(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that B is stronger than A on the same images: b images
    only B succeeded on, c only A. 1.0 when there is no discordant image."""
    return exceeds(b, b + c, 0.5)


def paired_verdict(b: int, c: int, n: int, tolerance: float) -> tuple[str, str]:
    """(verdict, reason) for "B must not beat the reference A" on the same n images, where b
    images fell to B only and c to A only. pass: B beat A nowhere. fail: B is significantly
    stronger (McNemar), or beat A on significantly more than ``tolerance`` of the images.
    warn: a few images, within the tolerance. inconclusive: more than the tolerance, but the
    sample cannot tell it from noise."""
    if b == 0:
        return "pass", "none"
    p_stronger, p_rate = mcnemar(b, c), exceeds(b, n, tolerance)
    said = f"McNemar p = {p_stronger:.2g} (b = {b}, c = {c}); P(rate <= {tolerance:.0%}) = "
    said += f"{p_rate:.2g}"
    if p_stronger < ALPHA or p_rate < ALPHA:
        return "fail", said
    if b <= max(1.0, tolerance * n):
        return "warn", said
    return "inconclusive", said
