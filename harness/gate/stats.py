"""Statistics of raw samples, in pure Python: quartiles and relative spread, and the one-sided
Mann-Whitney U rank test the verdict rests on.

The rank test assumes nothing about the shape of the noise (GPU timings are skewed, with a long
tail of slow outliers) and compares whole samples rather than two medians. Without ties the exact
distribution of U is used while it is cheap (EXACT_MAX_WORK); beyond that, or with ties, the
normal approximation with tie and continuity corrections (the textbook method, as in
scipy.stats.mannwhitneyu). It assumes independent samples.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from harness.checks import require_finite, require_positive_int

# Most work spent on the exact null distribution of U: it costs about small^2 * large integer
# additions for sample sizes small <= large (125,000 at 50 vs 50: about 20 ms in CPython).
# Beyond it both samples are large and the normal approximation is within about 0.001 of the exact
# p-value wherever p < 0.05 (checked against scipy.stats.mannwhitneyu).
EXACT_MAX_WORK = 125_000

Alternative = Literal["greater", "less"]


@dataclass(frozen=True)
class MannWhitneyResult:
    """A one-sided Mann-Whitney U test: U of the first sample, its p-value, and how p was found."""

    u: float
    p_value: float
    method: Literal["exact", "normal"]


def quartiles(samples: Sequence[float]) -> tuple[float, float]:
    """(Q1, Q3) of `samples` by the inclusive method; both the value itself for one sample."""
    values = _finite_samples(samples, "samples")
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def relative_spread(samples: Sequence[float]) -> float:
    """The interquartile range over |median|: the noise of a metric as a fraction of it (0 when
    the median is 0)."""
    q1, q3 = quartiles(samples)
    median = statistics.median(samples)
    return (q3 - q1) / abs(median) if median else 0.0


def mann_whitney_u(x: Sequence[float], y: Sequence[float], *,
                   alternative: Alternative = "greater") -> MannWhitneyResult:
    """One-sided Mann-Whitney U test of samples `x` against `y`, in pure Python.

    "greater": H1 is that values of `x` tend to be larger than values of `y`; "less" the reverse.
    U counts the pairs (xi, yj) with xi > yj, ties counting one half. Exact p without ties when
    that is cheap (EXACT_MAX_WORK), else the normal approximation with tie and continuity
    corrections. When every value is the same there is no evidence at all: p = 1.
    """
    xs = _finite_samples(x, "x")
    ys = _finite_samples(y, "y")
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    n1, n2 = len(xs), len(ys)
    ranks, tie_sizes = _midranks(xs + ys)
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    has_ties = any(t > 1 for t in tie_sizes)
    small, large = sorted((n1, n2))
    if not has_ties and small * small * large <= EXACT_MAX_WORK:
        counts = _exact_u_counts(small, large)  # the distribution is symmetric in n1 and n2
        k = round(u)  # an integer without ties
        favourable = sum(counts[k:]) if alternative == "greater" else sum(counts[:k + 1])
        return MannWhitneyResult(u=u, p_value=favourable / math.comb(n1 + n2, n1),
                                 method="exact")
    return MannWhitneyResult(u=u, p_value=_normal_p_value(u, n1, n2, tie_sizes, alternative),
                             method="normal")


def smallest_p_value(n1: int, n2: int) -> float:
    """The smallest p-value a one-sided rank test of n1 vs n2 samples can reach: 1 / C(n1+n2, n1).

    When it is not below alpha the test cannot ever reject: it has no power at that size.
    """
    require_positive_int("n1 (a sample count)", n1)
    require_positive_int("n2 (a sample count)", n2)
    return 1 / math.comb(n1 + n2, n1)


def _finite_samples(values: Sequence[float], name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
    samples = list(values)
    if not samples:
        raise ValueError(f"{name} must hold at least one sample, got none")
    finite: list[float] = []
    for value in samples:
        try:
            finite.append(require_finite(name, value))
        except ValueError:
            raise ValueError(f"{name} must hold finite numbers only, got {value!r}") from None
    return finite


def _midranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Ranks 1..n of `values` in their order, ties sharing the mean rank; and the sizes of the
    tie groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    tie_sizes: list[int] = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1
        for position in range(start, end + 1):
            ranks[order[position]] = mean_rank
        tie_sizes.append(end - start + 1)
        start = end + 1
    return ranks, tie_sizes


@lru_cache(maxsize=64)
def _exact_u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """counts[k] = how many of the C(n1+n2, n1) orderings without ties give U = k.

    These are the coefficients of the Gaussian binomial [n1+n2 choose n1](q), built one factor at
    a time: [n2+i choose i] = [n2+i-1 choose i-1] * (1 - q^(n2+i)) / (1 - q^i).
    """
    poly = [1]
    for i in range(1, n1 + 1):
        shift = n2 + i
        product = poly + [0] * shift
        for k, coefficient in enumerate(poly):  # times (1 - q^(n2+i))
            product[k + shift] -= coefficient
        for k in range(i, len(product)):  # divided by (1 - q^i): exact, the result is a polynomial
            product[k] += product[k - i]
        poly = product[:len(poly) + n2]
    return tuple(poly)


def _normal_p_value(u: float, n1: int, n2: int, tie_sizes: list[int],
                    alternative: Alternative) -> float:
    n = n1 + n2
    mean = n1 * n2 / 2
    tie_term = sum(t ** 3 - t for t in tie_sizes) / (n * (n - 1))
    variance = n1 * n2 / 12 * ((n + 1) - tie_term)
    if variance <= 0:  # every value tied: the samples carry no evidence either way
        return 1.0
    # Continuity correction of 0.5 towards the mean, on the side of the alternative.
    if alternative == "greater":
        z = (u - mean - 0.5) / math.sqrt(variance)
    else:
        z = (mean - u - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


