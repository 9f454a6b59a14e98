"""The noise-aware decision: is a measured metric a regression, an improvement, or unchanged?

A GPU on a shared runner drifts by several percent between short runs, so one number against a
threshold would cry wolf. A REGRESSION needs both:

1. a practical change: the median moved beyond the tolerance (default per metric kind, see
   DEFAULT_TOLERANCES) in the worse direction (`Metric.better`), and
2. statistical support: the samples show the shift is not noise.

Statistical support comes from a one-sided Mann-Whitney U test of the measured samples against the
baseline's stored samples. It is chosen because it assumes nothing about the shape of the noise
(GPU timings are skewed, with a long tail of slow outliers) and compares whole samples rather than
two medians. Without ties the exact distribution of U is used while it is cheap (EXACT_MAX_WORK);
beyond that, or with ties, the normal approximation with tie and continuity corrections
(the textbook method, as in scipy.stats.mannwhitneyu). It assumes independent samples: drift
within one run makes it over-confident, which is why the tolerance must also be exceeded.

False alarms: under no real change the test alone rejects with probability at most DEFAULT_ALPHA
(0.01; the exact test is conservative), about 1 metric in 100. Requiring the median to move beyond
the tolerance as well makes a false regression far rarer: with 2% noise (coefficient of
variation), 20 samples a side and a 5% tolerance, the difference of two medians has a standard
deviation of about 0.8%, so a chance move beyond 5% is a 6 sigma event; tests/test_verdict.py
counts 0 false regressions in 200 seeded runs of that setting. With the tolerance out of play
(5% noise, 1% tolerance) the same count is 3 in 200: the rate of the test alone, near alpha.

Confirmation: the plugin re-measures a regression after a pause (`--perf-confirm-delay`) and
judges the second measurement with `confirming=True`: it must still be worse beyond
CONFIRM_TOLERANCE_FRACTION of the tolerance, with statistical support. A real slowdown persists;
a disturbance of the shared machine during the first measurement has usually passed. How often
this gate cries wolf and how often it catches 3%, 5% and 10% was measured on a GPU by
benchmarks/detection_power.py.

Special cases, each decided explicitly:
- Deterministic metrics (every sample identical on both sides, such as peak allocated memory: the
  caching allocator makes the same allocations for the same code and torch): any difference is
  real, so a change beyond the tolerance is a regression without a test.
- Too few samples for the rank test to ever reject (one sample on a side, or even the most
  extreme ordering has p = 1/C(n1+n2, n1) >= alpha, e.g. 4 vs 4 at alpha 0.01): the "spread rule"
  decides -- the change must exceed the tolerance and also SPREAD_MULTIPLE times the larger
  relative spread (IQR/median) of the two sides.
- A change beyond the tolerance that the statistics do not support is UNRELIABLE ("too noisy to
  decide"), not UNCHANGED: the run could neither confirm nor rule out a regression.
- A measurement marked unreliable (e.g. the GPU throttled) is UNRELIABLE, never a regression.
- A baseline with another unit or direction is UNRELIABLE: apples are not compared with oranges.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from harness.gate.formatting import format_percent
from harness.gate.results import METRIC_KINDS, Metric, MetricKind

# Relative tolerance of the median per metric kind (0.05 = 5%), used when neither the caller nor
# the metrics give one.
DEFAULT_TOLERANCES: dict[MetricKind, float] = {
    # Step time and kernel time: 2%, from benchmarks/detection_power.py on an H200 (2026-11-21,
    # fourth run; README "Does the gate work?"): no false alarm in 20 unchanged re-measurements
    # of a bf16 GEMM or of a GPU-bound training step, and 17 and 20 of 20 3% slowdowns caught;
    # at 3% only 10 of 20, at 5% none. Work that follows the host CPU gets a wider tolerance per
    # test (perf_tests/workloads.py).
    "time": 0.02,
    # TFLOP/s, MFU, tokens/s are the reciprocal of a time: the same drift, the same tolerance.
    "throughput": 0.02,
    # The caching allocator is deterministic for the same code and torch, so memory barely moves;
    # 2% leaves room for library workspaces (cuBLAS, cuDNN) chosen by heuristics that can change
    # with a driver update without any change of ours.
    "memory": 0.02,
    # Dataloader wait and copy times depend on worker scheduling and on other processes sharing
    # the host's CPUs and PCIe link; run-to-run variation of 10% is common, hence 15%.
    "dataloader": 0.15,
    # Anything else: the same as time, the most common case.
    "other": 0.02,
}

# A regression is confirmed by measuring again (the plugin re-runs the test): the second
# measurement must still be worse beyond this fraction of the tolerance, with the same
# statistical support. Half the tolerance: a real 3% slowdown at the 2% tolerance stays beyond
# 1% in nearly every re-measurement, while a transient disturbance (a 13 s episode of 10-35%
# slower steps on a shared H200 host, 2026-11-21) has passed and the change is back near 0.
CONFIRM_TOLERANCE_FRACTION = 0.5

# Significance level of the one-sided rank test: a false alarm of the test alone in 1 of 100
# unchanged metrics at most; the tolerance requirement lowers the real rate far below that.
DEFAULT_ALPHA = 0.01

# The spread rule for samples too few for the rank test: the change must exceed 3 x the relative
# IQR. For normal noise the IQR is 1.35 sigma, so 3 IQR is about 4 sigma of a single sample, a
# chance exceedance of about 3 in 100,000.
SPREAD_MULTIPLE = 3.0

# Most work spent on the exact null distribution of U: it costs about small^2 * large integer
# additions for sample sizes small <= large (125,000 at 50 vs 50: about 20 ms in CPython).
# Beyond it both samples are large and the normal approximation is within about 0.001 of the exact
# p-value wherever p < 0.05 (checked against scipy.stats.mannwhitneyu).
EXACT_MAX_WORK = 125_000

Alternative = Literal["greater", "less"]

# Environment keys that differ between any two runs and explain nothing about a slowdown: the
# commit under test (the point of the comparison), the machine's name in a pool of identical
# runners, time stamps, and live sensor readings that change by the second. Matched against the
# last component of a (possibly nested) key.
IGNORED_ENVIRONMENT_KEYS: frozenset[str] = frozenset({
    "git_commit", "git_dirty", "commit", "dirty", "hostname", "created", "timestamp",
    "temperature_c", "power_w",
})


class Outcome(str, enum.Enum):
    """What a comparison concluded about one metric."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    UNRELIABLE = "unreliable"
    NO_BASELINE = "no baseline"


# Order of outcomes in reports: what needs action first.
REPORT_ORDER: dict[Outcome, int] = {
    Outcome.REGRESSION: 0,
    Outcome.UNRELIABLE: 1,
    Outcome.NO_BASELINE: 2,
    Outcome.IMPROVEMENT: 3,
    Outcome.UNCHANGED: 4,
}


@dataclass(frozen=True)
class MannWhitneyResult:
    """A one-sided Mann-Whitney U test: U of the first sample, its p-value, and how p was found."""

    u: float
    p_value: float
    method: Literal["exact", "normal"]


@dataclass(frozen=True)
class Verdict:
    """The decision on one metric, with everything a report needs to explain it.

    `change` is the relative change of the median, (measured - baseline) / |baseline| (that is
    measured / baseline - 1 for a positive baseline); None when there is nothing comparable.
    `rule` names what decided: "mann-whitney exact", "mann-whitney normal", "deterministic",
    "spread rule", or "" when no comparison was made.
    """

    metric_id: str
    outcome: Outcome
    measured: Metric
    baseline: Metric | None
    change: float | None
    tolerance: float
    p_value: float | None
    reason: str
    environment_differences: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    alpha: float = DEFAULT_ALPHA
    rule: str = ""

    @property
    def worse(self) -> bool:
        """Whether this verdict is a regression."""
        return self.outcome is Outcome.REGRESSION


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
    for name, value in (("n1", n1), ("n2", n2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive sample count, got {value!r}")
    return 1 / math.comb(n1 + n2, n1)


def judge(metric_id: str, measured: Metric, baseline: Metric | None, *,
          tolerance: float | None = None, alpha: float = DEFAULT_ALPHA,
          baseline_environment: dict[str, Any] | None = None,
          environment: dict[str, Any] | None = None, confirming: bool = False) -> Verdict:
    """Decide whether `measured` regressed against `baseline` (rules in the module docstring).

    Tolerance precedence: the `tolerance` argument, else `measured.tolerance`, else
    `baseline.tolerance`, else DEFAULT_TOLERANCES of the measured metric's kind. `confirming`
    judges a re-measurement of a regression: the tolerance shrinks to
    CONFIRM_TOLERANCE_FRACTION of it (the regression must persist, not repeat its size).
    """
    if not isinstance(metric_id, str) or not metric_id:
        raise ValueError(f"metric_id must be a non-empty string, got {metric_id!r}")
    if not isinstance(measured, Metric):
        raise ValueError(f"measured must be a Metric, got {type(measured).__name__}")
    if baseline is not None and not isinstance(baseline, Metric):
        raise ValueError(f"baseline must be a Metric or None, got {type(baseline).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1 such as 0.01, "
                         f"got {alpha!r}")
    if tolerance is not None:
        _check_tolerance(tolerance)
    if not isinstance(confirming, bool):
        raise ValueError(f"confirming must be True or False, got {confirming!r}")
    full_tolerance = _chosen_tolerance(tolerance, measured, baseline)
    chosen_tolerance = full_tolerance * (CONFIRM_TOLERANCE_FRACTION if confirming else 1.0)
    differences = ({} if baseline_environment is None or environment is None
                   else environment_differences(baseline_environment, environment))

    def verdict(outcome: Outcome, reason: str, *, change: float | None = None,
                p_value: float | None = None, rule: str = "") -> Verdict:
        if confirming:
            reason = (f"{reason} [confirming re-measurement: {CONFIRM_TOLERANCE_FRACTION:g} x "
                      f"the {format_percent(full_tolerance, space=False)} tolerance]")
        return Verdict(metric_id=metric_id, outcome=outcome, measured=measured,
                       baseline=baseline, change=change, tolerance=chosen_tolerance,
                       p_value=p_value, reason=reason, environment_differences=differences,
                       alpha=float(alpha), rule=rule)

    if baseline is None:
        return verdict(Outcome.NO_BASELINE, "no baseline for this metric on this hardware; "
                       "record one with --perf-update-baselines")
    if baseline.unit != measured.unit:
        return verdict(Outcome.UNRELIABLE, f"unit {measured.unit!r} differs from the baseline's "
                       f"{baseline.unit!r}: not comparable; re-record the baseline with "
                       f"--perf-update-baselines")
    if baseline.better != measured.better:
        return verdict(Outcome.UNRELIABLE, f"{measured.better} is better now, {baseline.better} "
                       f"in the baseline: not comparable; re-record the baseline with "
                       f"--perf-update-baselines")
    if baseline.median == 0:
        if measured.median == 0:
            return verdict(Outcome.UNCHANGED, "median 0, as in the baseline", change=0.0)
        return verdict(Outcome.UNRELIABLE, "the baseline median is 0, so a relative change is "
                       "undefined; re-record the baseline or record this metric in other units")
    change = (measured.median - baseline.median) / abs(baseline.median)
    if not measured.reliable:
        return verdict(Outcome.UNRELIABLE, f"measured unreliably "
                       f"({measured.note or 'no reason recorded'}); median {format_percent(change, signed=True, space=False)} "
                       f"not judged", change=change)
    if not baseline.reliable:
        return verdict(Outcome.UNRELIABLE, f"the baseline was recorded unreliably "
                       f"({baseline.note or 'no reason recorded'}); re-record it with "
                       f"--perf-update-baselines", change=change)
    return _judge_change(measured, baseline, change, chosen_tolerance, float(alpha), verdict)


def _judge_change(measured: Metric, baseline: Metric, change: float, tolerance: float,
                  alpha: float, verdict: Callable[..., Verdict]) -> Verdict:
    """The decision on two comparable, reliable metrics (`verdict` builds the result)."""
    # Positive when measured is worse: a lower-is-better time went up, a TFLOP/s went down.
    worsening = change if measured.better == "lower" else -change
    beyond = abs(change) > tolerance
    direction = "worse" if worsening > 0 else "better"
    moved = (f"median {format_percent(change, signed=True, space=False)} vs baseline, {direction} ({measured.better} is better), "
             f"beyond the {format_percent(tolerance, space=False)} tolerance")
    n1, n2 = measured.count, baseline.count

    if min(n1, n2) >= 2 and _constant(measured) and _constant(baseline):
        rule = "deterministic"
        why = "every sample identical on both sides (deterministic), no statistical test needed"
        supported, p_value = True, None
    elif min(n1, n2) == 1 or smallest_p_value(n1, n2) >= alpha:
        rule = "spread rule"
        spread = max(measured.spread, baseline.spread)
        supported, p_value = abs(change) > SPREAD_MULTIPLE * spread, None
        why = (f"{n1} vs {n2} samples are too few for a rank test at alpha {alpha:g}; "
               f"{'beyond' if supported else 'within'} {SPREAD_MULTIPLE:g} x the spread "
               f"{format_percent(spread, space=False)}")
    else:
        # Test in the direction the median moved: worse for a regression, better otherwise.
        measured_larger = change > 0 or (change == 0 and measured.better == "lower")
        test = mann_whitney_u(measured.samples, baseline.samples,
                              alternative="greater" if measured_larger else "less")
        rule, p_value = f"mann-whitney {test.method}", test.p_value
        supported = p_value < alpha
        why = (f"Mann-Whitney U p={p_value:.2g} {'<' if supported else '>='} {alpha:g} "
               f"({n1} vs {n2} samples)")

    if not beyond:
        return verdict(Outcome.UNCHANGED, f"median {format_percent(change, signed=True, space=False)} vs baseline, within the "
                       f"{format_percent(tolerance, space=False)} tolerance", change=change, p_value=p_value,
                       rule=rule)
    if not supported:
        return verdict(Outcome.UNRELIABLE, f"{moved}, but the samples do not support it: {why}; "
                       f"too noisy to decide (spread {format_percent(measured.spread, space=False)} measured, "
                       f"{format_percent(baseline.spread, space=False)} baseline)", change=change,
                       p_value=p_value, rule=rule)
    if worsening > 0:
        return verdict(Outcome.REGRESSION, f"{moved}; {why}", change=change, p_value=p_value,
                       rule=rule)
    return verdict(Outcome.IMPROVEMENT, f"{moved}; {why}; refresh the baseline with "
                   f"--perf-update-baselines to keep the gain", change=change, p_value=p_value,
                   rule=rule)


def environment_differences(base: Mapping[str, Any],
                            new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Environment entries (torch, CUDA, driver, GPU, clocks, ...) that differ: key -> (base, new).

    Nested dicts are compared entry by entry under dotted keys ("gpu_state.sm_clock_mhz"); a key
    present on one side only shows None on the other. IGNORED_ENVIRONMENT_KEYS are left out.
    """
    for name, value in (("base", base), ("new", new)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an environment dict, got {type(value).__name__}")
    flat_base, flat_new = _flatten(base), _flatten(new)
    differences: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(flat_base) | set(flat_new)):
        if key.rsplit(".", 1)[-1] in IGNORED_ENVIRONMENT_KEYS:
            continue
        old, current = flat_base.get(key), flat_new.get(key)
        if old != current:
            differences[key] = (old, current)
    return differences


def sort_for_report(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Regressions first, then unreliable, no baseline, improvements, unchanged; by id within."""
    return sorted(verdicts, key=lambda v: (REPORT_ORDER[v.outcome], v.metric_id))


def _check_tolerance(tolerance: object) -> None:
    # The same bounds as Metric.tolerance: a relative change above 0 and below 10 (1000%).
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not 0 < tolerance < 10):
        raise ValueError(f"tolerance must be a relative change above 0 such as 0.05 for 5%, "
                         f"got {tolerance!r}")


def _chosen_tolerance(explicit: float | None, measured: Metric, baseline: Metric | None) -> float:
    if explicit is not None:
        return float(explicit)
    if measured.tolerance is not None:
        return measured.tolerance
    if baseline is not None and baseline.tolerance is not None:
        return baseline.tolerance
    if measured.kind not in METRIC_KINDS:  # Metric validates kind; this guards a new kind
        raise ValueError(f"measured.kind must be one of {', '.join(METRIC_KINDS)}, "
                         f"got {measured.kind!r}")
    return DEFAULT_TOLERANCES[measured.kind]


def _constant(metric: Metric) -> bool:
    return max(metric.samples) == min(metric.samples)


def _finite_samples(values: Sequence[float], name: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
    samples = list(values)
    if not samples:
        raise ValueError(f"{name} must hold at least one sample, got none")
    for value in samples:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise ValueError(f"{name} must hold finite numbers only, got {value!r}")
    return [float(v) for v in samples]


def _midranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Ranks 1..n of `values` in their order, ties sharing the mean rank; and the tie-group sizes."""
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


def _flatten(environment: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in environment.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
