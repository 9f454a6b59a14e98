"""The paired verdict of an A/B comparison on one machine: base and head measured in alternating
runs, so that what the machine and the moment do to one run they do to its partner.

Between fresh machines of one GPU model the run, not the sample, is what varies (host-bound steps
35-65% apart, GEMMs 2-5%). A comparison against numbers recorded elsewhere cannot tell the code
from the host; a comparison of the two codes on this host, run by run, can. Each round runs base
and head once (the order alternates, ABBA..., so a drift over the rounds does not favour either)
and contributes the log ratio of their run medians. The verdict on these ratios needs both:

1. a practical change: the geometric-mean ratio moved beyond the tolerance, and
2. statistical support: a one-sided paired t-test on the log ratios, p < alpha. Log ratios of run
   medians are close to normal (each median already averages many samples), and with few rounds
   the t-test has far more power than a rank test: 5 rounds can never reach p < 0.01 with a sign
   or signed-rank test (the smallest one-sided p is 1/32), while a 3% change over 1% run-to-run
   noise gives t = 6.7 with 4 degrees of freedom, p ~ 0.001.

Deterministic metrics (the same value in every run of a side, as peak allocated memory is) are
decided without a test, like the single-run verdict does.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from harness.checks import require_positive, require_positive_int, require_text
from harness.gate.formatting import format_percent
from harness.gate.results import BETTER_VALUES, Better
from harness.gate.tolerance import require_tolerance

# Fewest rounds a paired verdict is reached on: with 2 rounds the t-test has 1 degree of freedom
# and needs t > 31.8 for p < 0.01, so nothing short of a doubling would ever be confirmed.
MIN_ROUNDS = 3

# Continued-fraction accuracy of the incomplete beta function: far below any alpha in use.
_BETA_EPSILON = 1e-14
_BETA_MAX_ITERATIONS = 300


class PairedOutcome(str, enum.Enum):
    """What the paired comparison says about head against base on this machine."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class PairedVerdict:
    """The decision on one metric from `rounds` alternating base/head runs on one machine.

    `change` is the geometric-mean ratio head/base minus 1 (+0.05: head's values are 5% larger);
    `p_value` is the one-sided paired t-test's in the direction of the change, None where no test
    was needed (deterministic values) or possible.
    """

    metric_id: str
    outcome: PairedOutcome
    better: Better
    base_values: tuple[float, ...]
    head_values: tuple[float, ...]
    change: float | None
    tolerance: float
    alpha: float
    p_value: float | None
    reason: str

    @property
    def rounds(self) -> int:
        return len(self.base_values)

    @property
    def worse(self) -> bool:
        return self.outcome is PairedOutcome.REGRESSION


def paired_verdict(metric_id: str, better: Better, base_values: Sequence[float],
                   head_values: Sequence[float], *, tolerance: float,
                   alpha: float) -> PairedVerdict:
    """Judge head against base from their run medians, round by round (module docstring)."""
    require_text("metric_id", metric_id)
    if better not in BETTER_VALUES:
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    base, head = _positive_values("base_values", base_values), _positive_values(
        "head_values", head_values)
    if len(base) != len(head):
        raise ValueError(f"base_values and head_values must pair up round by round; got "
                         f"{len(base)} and {len(head)} values")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1, got {alpha!r}")
    tolerance = require_tolerance("tolerance", tolerance)

    def verdict(outcome: PairedOutcome, reason: str, change: float | None = None,
                p_value: float | None = None) -> PairedVerdict:
        return PairedVerdict(metric_id=metric_id, outcome=outcome, better=better,
                             base_values=base, head_values=head, change=change,
                             tolerance=tolerance, alpha=alpha, p_value=p_value, reason=reason)

    rounds = len(base)
    if rounds < MIN_ROUNDS:
        return verdict(PairedOutcome.UNDECIDED, f"{rounds} round(s) are too few for a paired "
                       f"verdict (at least {MIN_ROUNDS})")
    ratios = [math.log(h / b) for b, h in zip(base, head, strict=True)]
    mean = statistics.fmean(ratios)
    change = math.expm1(mean)
    worse = change > 0 if better == "lower" else change < 0
    direction = "worse" if worse else "better"
    moved = (f"head {format_percent(change, signed=True, space=False)} vs base over {rounds} "
             f"alternating rounds, {direction} ({better} is better)")
    beyond = abs(change) > tolerance
    bound = f"the {format_percent(tolerance, space=False)} tolerance"
    deterministic = len(set(base)) == 1 and len(set(head)) == 1
    if deterministic:
        p_value = None
        support = "the same value in every run of each side (deterministic)"
        supported = True
    else:
        deviation = statistics.stdev(ratios)
        if deviation == 0:
            p_value = 0.0 if mean != 0 else 1.0
        else:
            t = mean / (deviation / math.sqrt(rounds))
            p_value = student_t_sf(abs(t), rounds - 1)
        supported = p_value < alpha
        support = (f"paired t-test on log ratios p={p_value:.2g} "
                   f"{'<' if supported else '>='} {alpha:g}")
    if not beyond:
        return verdict(PairedOutcome.UNCHANGED, f"{moved}, within {bound}; {support}",
                       change, p_value)
    if not supported:
        return verdict(PairedOutcome.UNDECIDED, f"{moved}, beyond {bound}, but {support}: "
                       f"the rounds disagree too much to decide", change, p_value)
    outcome = PairedOutcome.REGRESSION if worse else PairedOutcome.IMPROVEMENT
    return verdict(outcome, f"{moved}, beyond {bound}; {support}", change, p_value)


def student_t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom, t >= 0 (pure Python)."""
    require_positive_int("df", df)
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t!r}")
    if math.isinf(t):
        return 0.0
    x = df / (df + t * t)
    return 0.5 * _regularized_incomplete_beta(x, df / 2, 0.5)


def _regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz's method), with the symmetry for large x."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1 - x, b, a) / b


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, _BETA_MAX_ITERATIONS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < _BETA_EPSILON:
            break
    return result


def _positive_values(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """The run medians as floats; each must be a positive finite number."""
    return tuple(require_positive(f"{name}[{index}] (a run median)", value)
                 for index, value in enumerate(values))
