"""The noise-aware decision: is a measured metric a regression, an improvement, or unchanged?

A GPU on a shared runner drifts by several percent between short runs, so one number against a
threshold would cry wolf. A REGRESSION needs both:

1. a practical change: the median moved beyond the tolerance (chosen by
   `tolerance.choose_tolerance`, default per metric kind) in the worse direction
   (`Metric.better`), and
2. statistical support: the samples show the shift is not noise.

Statistical support comes from a one-sided Mann-Whitney U test of the measured samples against the
baseline's stored samples (`stats.mann_whitney_u`). It is chosen because it assumes nothing about
the shape of the noise (GPU timings are skewed, with a long tail of slow outliers) and compares
whole samples rather than two medians. It assumes independent samples: drift within one run makes
it over-confident, which is why the tolerance must also be exceeded.

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
benchmarks/detection_power.

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
- A baseline of several recorded runs (`harness.gate.fleet`) is judged around the median of its
  runs, its last run's samples scaled to that centre (`fleet_centred`), with the tolerance that
  their spread calls for.
- A baseline with another unit or direction is UNRELIABLE: apples are not compared with oranges.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.checks import require_bool, require_fraction, require_text
from harness.gate.fleet import fleet_spread
from harness.gate.formatting import format_percent
from harness.gate.host import calibration_differences, describe_differences
from harness.gate.results import Metric
from harness.gate.stats import mann_whitney_u, smallest_p_value
from harness.gate.tolerance import CONFIRM_TOLERANCE_FRACTION, choose_tolerance

# Significance level of the one-sided rank test: a false alarm of the test alone in 1 of 100
# unchanged metrics at most; the tolerance requirement lowers the real rate far below that.
DEFAULT_ALPHA = 0.01

# The spread rule for samples too few for the rank test: the change must exceed 3 x the relative
# IQR. For normal noise the IQR is 1.35 sigma, so 3 IQR is about 4 sigma of a single sample, a
# chance exceedance of about 3 in 100,000.
SPREAD_MULTIPLE = 3.0

# Environment keys that differ between any two runs and explain nothing about a slowdown: the
# commit under test (the point of the comparison), the machine's name in a pool of identical
# runners, time stamps, and live sensor readings that change by the second. Matched against the
# last component of a (possibly nested) key.
IGNORED_ENVIRONMENT_KEYS: frozenset[str] = frozenset({
    "git_commit", "git_dirty", "commit", "dirty", "hostname", "created", "timestamp",
    "temperature_c", "power_w",
})


# The widest tolerance the spread of recorded runs may set: beyond it a metric is host-sensitive
# anyway (harness.gate.fleet.HOST_SENSITIVE_SPAN) and judged by A/B.
MAX_FLEET_TOLERANCE = 0.30

# The rule of a verdict that an A/B on this machine decided (`harness.gate.ab.confirm_with_ab`).
AB_RULE = "paired t-test (A/B)"

# The rule of a device time that its wall time decided (`harness.gate.wall_time`).
WALL_TIME_RULE = "wall time decides (kernel-bound call)"

# The rule of a host-side metric worse only within the fleet's spread: the host's share, named
# and not judged against other machines (`harness.gate.host_share`).
HOST_BOUND_RULE = "host-bound change (the host's share)"

# Where the host's calibration probes sit in a flattened environment.
CALIBRATION_PREFIX = "host.calibration."


class Outcome(str, enum.Enum):
    """What a comparison concluded about one metric."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    UNRELIABLE = "unreliable"
    NO_BASELINE = "no baseline"
    # Worse than the stored baseline, but the baseline's own code measured just as slow on this
    # machine, alternating with this code (A/B): the host, driver or torch changed, not the code.
    ENVIRONMENT_CHANGED = "environment changed"


# Order of outcomes in reports: what needs action first.
REPORT_ORDER: dict[Outcome, int] = {
    Outcome.REGRESSION: 0,
    Outcome.UNRELIABLE: 1,
    Outcome.NO_BASELINE: 2,
    Outcome.ENVIRONMENT_CHANGED: 3,
    Outcome.IMPROVEMENT: 4,
    Outcome.UNCHANGED: 5,
}



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
    # The tolerance of a comparison on one machine (A/B), where the spread of the baseline's
    # recorded runs widened `tolerance` for this cross-machine one; None when it did not.
    machine_tolerance: float | None = None

    @property
    def worse(self) -> bool:
        """Whether this verdict is a regression."""
        return self.outcome is Outcome.REGRESSION

    @property
    def one_machine_tolerance(self) -> float:
        """The tolerance an A/B on one machine judges this metric with: the fleet's spread
        between machines does not apply to two runs on the same one."""
        return self.tolerance if self.machine_tolerance is None else self.machine_tolerance

    @property
    def worse_on_one_machine(self) -> bool:
        """Unchanged only because the fleet's spread widened the tolerance: worse than the
        baseline beyond the one-machine tolerance. A/B on this machine checks such a metric
        where it can run: a +5% slowdown of a GEMM on a chip 2% faster than the fleet's mean
        reads +3%, inside a 4.9% fleet tolerance, and 35 ms of Python added to a host-bound
        step read +29.8% and +24.0% inside its 30% fleet tolerance (H200, 2026-12-02). A host
        whose calibration reads slower does not excuse a host-bound step here: the second of
        those hosts read the Python loop 25% slower than the baseline's in that run, and ran
        the unchanged steps 13-31% faster than the baseline in the next. Such a host-bound
        wall time whose device time held is named instead, unless --perf-ab-host-bound
        (`harness.gate.host_share`)."""
        if self.outcome is not Outcome.UNCHANGED or self.change is None \
                or self.rule in (WALL_TIME_RULE, HOST_BOUND_RULE):
            return False
        worsening = self.change if self.measured.better == "lower" else -self.change
        tolerance = self.one_machine_tolerance
        return tolerance < self.tolerance and worsening > tolerance

    @property
    def held(self) -> bool:
        """Judged unchanged and no worse than one machine's tolerance, or better: what a
        device time must read for its wall time to be the host's share
        (`harness.gate.host_share`), and a wall time for its device time to follow it
        (`harness.gate.wall_time`)."""
        return self.outcome is Outcome.IMPROVEMENT or (
            self.outcome is Outcome.UNCHANGED and not self.worse_on_one_machine)


def judge(metric_id: str, measured: Metric, baseline: Metric | None, *,
          tolerance: float | None = None, alpha: float = DEFAULT_ALPHA,
          baseline_environment: dict[str, Any] | None = None,
          environment: dict[str, Any] | None = None, confirming: bool = False) -> Verdict:
    """Decide whether `measured` regressed against `baseline` (rules in the module docstring).

    Tolerance precedence (`choose_tolerance`): the `tolerance` argument, else
    `measured.tolerance`, else `baseline.tolerance`, else the default of its kind. `confirming`
    judges a re-measurement of a regression: the tolerance shrinks to
    CONFIRM_TOLERANCE_FRACTION of it (the regression must persist, not repeat its size).
    """
    require_text("metric_id", metric_id)
    if not isinstance(measured, Metric):
        raise ValueError(f"measured must be a Metric, got {type(measured).__name__}")
    if baseline is not None and not isinstance(baseline, Metric):
        raise ValueError(f"baseline must be a Metric or None, got {type(baseline).__name__}")
    if require_fraction("alpha", alpha) in (0.0, 1.0):  # either end makes the test meaningless
        raise ValueError(f"alpha must be a probability strictly between 0 and 1 such as 0.01, "
                         f"got {alpha!r}")
    machine_tolerance = choose_tolerance(
        measured.kind, explicit=tolerance, own=measured.tolerance,
        baseline=None if baseline is None else baseline.tolerance).value
    full_tolerance = machine_tolerance
    fleet = None if baseline is None else fleet_spread(baseline.runs)
    if fleet is not None and baseline is not None:
        baseline = fleet_centred(baseline, fleet.center)
    if fleet is not None and tolerance is None:  # an explicit --perf-tolerance stays as given
        full_tolerance = max(full_tolerance, min(fleet.tolerance, MAX_FLEET_TOLERANCE))
    require_bool("confirming", confirming)
    chosen_tolerance = full_tolerance * (CONFIRM_TOLERANCE_FRACTION if confirming else 1.0)
    widened = None if full_tolerance == machine_tolerance else machine_tolerance
    differences = ({} if baseline_environment is None or environment is None
                   else environment_differences(baseline_environment, environment))
    slower = ({} if not measured.host_bound or baseline_environment is None
              or environment is None
              else {key: value for key, value in
                    calibration_differences(baseline_environment, environment).items()
                    if value > 0})

    def verdict(outcome: Outcome, reason: str, *, change: float | None = None,
                p_value: float | None = None, rule: str = "") -> Verdict:
        if confirming:
            reason = (f"{reason} [confirming re-measurement: {CONFIRM_TOLERANCE_FRACTION:g} x "
                      f"the {format_percent(full_tolerance, space=False)} tolerance]")
        return Verdict(metric_id=metric_id, outcome=outcome, measured=measured,
                       baseline=baseline, change=change, tolerance=chosen_tolerance,
                       p_value=p_value, reason=reason, environment_differences=differences,
                       alpha=float(alpha), rule=rule, machine_tolerance=widened)

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
                       f"({measured.note or 'no reason recorded'}); median "
                       f"{format_percent(change, signed=True, space=False)} not judged",
                       change=change)
    if not baseline.reliable:
        return verdict(Outcome.UNRELIABLE, f"the baseline was recorded unreliably "
                       f"({baseline.note or 'no reason recorded'}); re-record it with "
                       f"--perf-update-baselines", change=change)
    worsening = change if measured.better == "lower" else -change
    if fleet is not None and fleet.host_sensitive and worsening > chosen_tolerance:
        return verdict(Outcome.UNRELIABLE, (
            f"median {format_percent(change, signed=True, space=False)} vs baseline, worse, but "
            f"this metric is host-sensitive: the medians of its {fleet.runs} recorded runs span "
            f"{format_percent(fleet.span, space=False)}; only A/B on this machine can judge it"),
            change=change, rule="host-sensitive")
    if slower and not confirming and worsening > chosen_tolerance:
        return verdict(Outcome.ENVIRONMENT_CHANGED, (
            f"median {format_percent(change, signed=True, space=False)} vs baseline, "
            f"worse, but the step is host-bound (the GPU idled while the host issued it) "
            f"and this host is slower than the baseline's: {describe_differences(slower)}; "
            f"the step's device time is judged instead"), change=change, rule="host-bound")
    judged = _judge_change(measured, baseline, change, chosen_tolerance, float(alpha), verdict)
    if judged.worse_on_one_machine and fleet is not None:
        host = (f" (the step is host-bound, and this host's calibration reads slower: "
                f"{describe_differences(slower)}; a calibration alone does not clear it)"
                if slower else "")
        return dataclasses.replace(judged, reason=(
            f"{judged.reason}, but worse than the "
            f"{format_percent(judged.one_machine_tolerance, space=False)} tolerance of one "
            f"machine (the {fleet.runs} recorded runs' spread widened it): A/B on this machine "
            f"checks it where it can run{host}"))
    return judged


def fleet_centred(baseline: Metric, center: float) -> Metric:
    """The baseline's samples (its last recorded run's) scaled so that their median is the
    fleet's `center` (`harness.gate.fleet`): the run's shape around the fleet's usual value.
    Unchanged where either median is not positive (no ratio to scale by)."""
    if baseline.median <= 0 or center <= 0 or center == baseline.median:
        return baseline
    scale = center / baseline.median
    return baseline.with_changes(samples=tuple(value * scale for value in baseline.samples))


def _judge_change(measured: Metric, baseline: Metric, change: float, tolerance: float,
                  alpha: float, verdict: Callable[..., Verdict]) -> Verdict:
    """The decision on two comparable, reliable metrics (`verdict` builds the result)."""
    # Positive when measured is worse: a lower-is-better time went up, a TFLOP/s went down.
    worsening = change if measured.better == "lower" else -change
    beyond = abs(change) > tolerance
    direction = "worse" if worsening > 0 else "better"
    moved = (f"median {format_percent(change, signed=True, space=False)} vs baseline, "
             f"{direction} ({measured.better} is better), "
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
        return verdict(Outcome.UNCHANGED,
                       f"median {format_percent(change, signed=True, space=False)} vs baseline, "
                       f"within the {format_percent(tolerance, space=False)} tolerance",
                       change=change, p_value=p_value, rule=rule)
    if not supported:
        return verdict(Outcome.UNRELIABLE, f"{moved}, but the samples do not support it: {why}; "
                       f"too noisy to decide (spread "
                       f"{format_percent(measured.spread, space=False)} measured, "
                       f"{format_percent(baseline.spread, space=False)} baseline)",
                       change=change, p_value=p_value, rule=rule)
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
    present on one side only shows None on the other. IGNORED_ENVIRONMENT_KEYS are left out,
    and so are the host's calibration probes that moved less than their noise.
    """
    for name, value in (("base", base), ("new", new)):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an environment dict, got {type(value).__name__}")
    flat_base, flat_new = _flatten(base), _flatten(new)
    moved_probes = {f"{CALIBRATION_PREFIX}{key}" for key in calibration_differences(base, new)}
    differences: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(flat_base) | set(flat_new)):
        if key.rsplit(".", 1)[-1] in IGNORED_ENVIRONMENT_KEYS:
            continue
        if key.startswith(CALIBRATION_PREFIX) and key not in moved_probes:
            continue  # a probe within its noise is the same host
        old, current = flat_base.get(key), flat_new.get(key)
        if old != current:
            differences[key] = (old, current)
    return differences


def sort_for_report(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Regressions first, then unreliable, no baseline, improvements, unchanged; by id within."""
    return sorted(verdicts, key=lambda v: (REPORT_ORDER[v.outcome], v.metric_id))


def _constant(metric: Metric) -> bool:
    return max(metric.samples) == min(metric.samples)


def _flatten(environment: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in environment.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
