"""The noise-aware verdict: seeded synthetic samples, the rank test against known values, and
every special case the module docstring names."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from harness.gate.results import Metric
from harness.gate.stats import mann_whitney_u, smallest_p_value
from harness.gate.tolerance import (
    DEFAULT_TOLERANCES,
    Tolerance,
    choose_tolerance,
    is_tolerance,
    require_tolerance,
)
from harness.gate.verdict import (
    DEFAULT_ALPHA,
    Outcome,
    Verdict,
    environment_differences,
    judge,
    sort_for_report,
)

STEP_TIME_ID = "perf_tests/test_train.py::test_gpt2_step::step_time"
SEEDS = range(200)


def noisy(rng: random.Random, *, median: float, cv: float, count: int = 20) -> tuple[float, ...]:
    """`count` normal samples around `median` with coefficient of variation `cv`; the rare draw
    below zero (at 30% cv) is mirrored, since a Metric of kind time refuses negative samples."""
    return tuple(abs(rng.gauss(median, median * cv)) for _ in range(count))


def step_time(samples: tuple[float, ...], **changes: object) -> Metric:
    return Metric(name="step_time", unit="s", better="lower", kind="time", samples=samples,
                  **changes)  # type: ignore[arg-type]


def tflops(samples: tuple[float, ...]) -> Metric:
    return Metric(name="tflops", unit="TFLOP/s", better="higher", kind="throughput",
                  samples=samples)


def peak_memory(value: float, count: int = 5) -> Metric:
    return Metric(name="peak_allocated_bytes", unit="bytes", better="lower", kind="memory",
                  samples=(value,) * count)


def outcomes_over_seeds(*, cv: float, shift: float, count: int = 20,
                        tolerance: float | None = None) -> Counter[Outcome]:
    """Judge a time metric whose true median moved by `shift`, once per seed."""
    seen: Counter[Outcome] = Counter()
    for seed in SEEDS:
        rng = random.Random(seed)
        baseline = step_time(noisy(rng, median=0.100, cv=cv, count=count))
        measured = step_time(noisy(rng, median=0.100 * (1 + shift), cv=cv, count=count))
        seen[judge(STEP_TIME_ID, measured, baseline, tolerance=tolerance).outcome] += 1
    return seen


# --- the rank test ---------------------------------------------------------------------------


def test_exact_p_value_of_complete_separation_is_one_over_the_orderings() -> None:
    # 3 vs 3 without ties: C(6, 3) = 20 equally likely orderings, one puts all of x on top.
    result = mann_whitney_u([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], alternative="greater")
    assert result.method == "exact"
    assert result.u == 9
    assert result.p_value == pytest.approx(1 / 20)
    assert mann_whitney_u([4.0, 5.0, 6.0], [1.0, 2.0, 3.0], alternative="less").p_value == 1.0


def test_exact_p_value_matches_hand_count() -> None:
    # x = (3, 5), y = (1, 2, 4): U = 2 + 3 = 5. The 10 orderings of 2 vs 3 give U = 0..6 with
    # counts 1, 1, 2, 2, 2, 1, 1, so P(U >= 5) = 2/10 and P(U <= 5) = 9/10.
    assert mann_whitney_u([3.0, 5.0], [1.0, 2.0, 4.0], alternative="greater").p_value \
        == pytest.approx(0.2)
    assert mann_whitney_u([3.0, 5.0], [1.0, 2.0, 4.0], alternative="less").p_value \
        == pytest.approx(0.9)


def test_normal_approximation_with_ties_matches_hand_computation() -> None:
    # x = (1, 2, 2, 3), y = (2, 3, 4, 4): midranks give R1 = 1 + 3 + 3 + 5.5, U = 2.5.
    # Ties of sizes 3, 2, 2: variance = 16/12 * (9 - 36/56); with continuity correction
    # z = (8 - 2.5 - 0.5) / sqrt(variance) = 1.4979, one-sided p = 0.067085.
    result = mann_whitney_u([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 4.0, 4.0], alternative="less")
    assert result.method == "normal"
    assert result.u == 2.5
    assert result.p_value == pytest.approx(0.0670845900640629, rel=1e-12)


def test_all_values_tied_carries_no_evidence() -> None:
    assert mann_whitney_u([7.0] * 5, [7.0] * 6, alternative="greater").p_value == 1.0


def test_p_values_match_scipy_exact_and_asymptotic() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for _ in range(40):
        n1, n2 = rng.randint(1, 40), rng.randint(1, 60)
        with_ties = rng.random() < 0.3
        draw = (lambda: float(rng.randint(0, 8))) if with_ties else (lambda: rng.gauss(0, 1))
        x = [draw() + rng.choice([0.0, 0.4]) for _ in range(n1)]
        y = [draw() for _ in range(n2)]
        for alternative in ("greater", "less"):
            ours = mann_whitney_u(x, y, alternative=alternative)
            method = "exact" if ours.method == "exact" else "asymptotic"
            theirs = scipy_stats.mannwhitneyu(x, y, alternative=alternative, method=method)
            if math.isnan(theirs.pvalue):  # scipy gives nan when every value is tied
                assert ours.p_value == 1.0
                continue
            assert ours.u == pytest.approx(theirs.statistic)
            assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-12)


def test_rank_test_false_alarm_rate_is_near_alpha() -> None:
    # Same distribution on both sides: p < 0.05 should happen in about 5% of 400 seeded runs
    # (binomial mean 20, sd 4.4); both a broken (too eager) and a dead (never rejecting) test fail.
    rejections = 0
    for seed in range(400):
        rng = random.Random(10_000 + seed)
        x = [rng.gauss(0, 1) for _ in range(12)]
        y = [rng.gauss(0, 1) for _ in range(15)]
        rejections += mann_whitney_u(x, y, alternative="greater").p_value < 0.05
    assert 8 <= rejections <= 34


def test_smallest_p_value_is_one_over_the_orderings() -> None:
    assert smallest_p_value(4, 4) == pytest.approx(1 / 70)
    assert smallest_p_value(1, 9) == pytest.approx(1 / 10)


@pytest.mark.parametrize(("x", "y", "alternative", "message"), [
    ([], [1.0], "greater", "x must hold at least one sample"),
    ([1.0], [float("nan")], "greater", "y must hold finite numbers only, got nan"),
    ([1.0], [2.0], "two-sided", "alternative must be 'greater' or 'less', got 'two-sided'"),
    ("12", [2.0], "greater", "x must be a sequence of numbers"),
])
def test_rank_test_rejects_bad_input_naming_the_argument(x: object, y: object, alternative: str,
                                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mann_whitney_u(x, y, alternative=alternative)  # type: ignore[arg-type]


# --- verdicts on seeded noise ----------------------------------------------------------------


def test_unchanged_noise_gives_no_false_regression_over_200_seeds() -> None:
    # 2% noise, 20 samples a side, 5% tolerance: the setting of the module docstring; 0 false
    # alarms of 200.
    seen = outcomes_over_seeds(cv=0.02, shift=0.0, tolerance=0.05)
    assert seen[Outcome.REGRESSION] == 0
    assert seen[Outcome.UNCHANGED] == len(SEEDS)


def test_default_tolerance_gives_no_false_regression_at_gpu_noise() -> None:
    # 0.5% noise, the spread (IQR/median) of a GEMM or a GPU-bound train step within one
    # measurement on an H200, at the 2% default: 0 false alarms of 200.
    assert outcomes_over_seeds(cv=0.005, shift=0.0) == Counter({Outcome.UNCHANGED: len(SEEDS)})


def test_three_percent_slower_is_a_regression_at_the_default_tolerance() -> None:
    assert outcomes_over_seeds(cv=0.005, shift=0.03) == Counter({Outcome.REGRESSION: len(SEEDS)})


def test_a_confirming_re_measurement_is_judged_at_half_the_tolerance() -> None:
    rng = random.Random(5)
    baseline = step_time(noisy(rng, median=0.100, cv=0.002))
    persisting = step_time(noisy(rng, median=0.1015, cv=0.002))  # 1.5% slower
    first = judge(STEP_TIME_ID, persisting, baseline)
    confirming = judge(STEP_TIME_ID, persisting, baseline, confirming=True)
    assert first.outcome == Outcome.UNCHANGED and first.tolerance == 0.02
    assert confirming.outcome == Outcome.REGRESSION and confirming.tolerance == 0.01
    assert "confirming re-measurement: 0.5 x the 2.0% tolerance" in confirming.reason
    with pytest.raises(ValueError, match="confirming must be True or False"):
        judge(STEP_TIME_ID, persisting, baseline, confirming="yes")  # type: ignore[arg-type]


def test_tight_tolerance_leaves_false_alarms_bounded_by_alpha() -> None:
    # 5% noise but a 1% tolerance: the median often moves beyond it by chance, so only the rank
    # test stands between noise and a false alarm; it lets through at most about alpha.
    seen = outcomes_over_seeds(cv=0.05, shift=0.0, tolerance=0.01)
    assert seen[Outcome.REGRESSION] <= 3 * DEFAULT_ALPHA * len(SEEDS)
    assert seen[Outcome.UNRELIABLE] > 0  # beyond tolerance yet not significant: said so


def test_ten_percent_slower_is_a_regression() -> None:
    assert outcomes_over_seeds(cv=0.02, shift=0.10) == Counter({Outcome.REGRESSION: len(SEEDS)})


def test_ten_percent_faster_is_an_improvement_suggesting_a_refresh() -> None:
    assert outcomes_over_seeds(cv=0.02, shift=-0.10) == Counter({Outcome.IMPROVEMENT: len(SEEDS)})
    rng = random.Random(1)
    verdict = judge(STEP_TIME_ID, step_time(noisy(rng, median=0.09, cv=0.02)),
                    step_time(noisy(rng, median=0.10, cv=0.02)))
    assert "--perf-update-baselines" in verdict.reason


def test_three_percent_change_within_five_percent_tolerance_is_unchanged() -> None:
    assert outcomes_over_seeds(cv=0.02, shift=0.03, tolerance=0.05) == Counter(
        {Outcome.UNCHANGED: len(SEEDS)})


def test_very_noisy_shift_is_never_a_regression_without_significance() -> None:
    # 30% noise hides a 10% shift in most runs: those must not be regressions.
    not_significant = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        baseline = step_time(noisy(rng, median=0.100, cv=0.30))
        measured = step_time(noisy(rng, median=0.110, cv=0.30))
        verdict = judge(STEP_TIME_ID, measured, baseline)
        assert verdict.p_value is not None
        if verdict.p_value >= DEFAULT_ALPHA:
            not_significant += 1
            assert verdict.outcome is not Outcome.REGRESSION
            if verdict.change is not None and verdict.change > verdict.tolerance:
                assert verdict.outcome is Outcome.UNRELIABLE
                assert "too noisy to decide" in verdict.reason
    assert not_significant > len(SEEDS) // 2


def test_regression_verdict_carries_change_p_value_and_tolerance() -> None:
    rng = random.Random(3)
    baseline = step_time(noisy(rng, median=0.100, cv=0.02))
    measured = step_time(noisy(rng, median=0.112, cv=0.02))
    verdict = judge(STEP_TIME_ID, measured, baseline)
    assert verdict.outcome is Outcome.REGRESSION and verdict.worse
    assert verdict.change == pytest.approx(measured.median / baseline.median - 1)
    assert verdict.tolerance == DEFAULT_TOLERANCES["time"]
    assert verdict.p_value is not None and verdict.p_value < DEFAULT_ALPHA
    assert verdict.rule == "mann-whitney exact"
    assert verdict.metric_id == STEP_TIME_ID and verdict.baseline is baseline
    assert "\n" not in verdict.reason


# --- direction, determinism, few samples ---------------------------------------------------


def test_higher_is_better_going_down_is_a_regression() -> None:
    rng = random.Random(5)
    baseline = tflops(noisy(rng, median=600.0, cv=0.02))
    verdict = judge("t::tflops", tflops(noisy(rng, median=540.0, cv=0.02)), baseline)
    assert verdict.outcome is Outcome.REGRESSION
    assert verdict.change is not None and verdict.change < 0


def test_higher_is_better_going_up_is_an_improvement() -> None:
    rng = random.Random(6)
    baseline = tflops(noisy(rng, median=600.0, cv=0.02))
    verdict = judge("t::tflops", tflops(noisy(rng, median=660.0, cv=0.02)), baseline)
    assert verdict.outcome is Outcome.IMPROVEMENT and not verdict.worse


def test_deterministic_memory_three_percent_up_is_a_regression_at_two_percent() -> None:
    verdict = judge("t::peak_allocated_bytes", peak_memory(1.03e10), peak_memory(1.00e10))
    assert verdict.tolerance == 0.02
    assert verdict.outcome is Outcome.REGRESSION
    assert verdict.p_value is None and verdict.rule == "deterministic"


def test_deterministic_memory_within_tolerance_is_unchanged() -> None:
    verdict = judge("t::peak_allocated_bytes", peak_memory(1.01e10), peak_memory(1.00e10))
    assert verdict.outcome is Outcome.UNCHANGED


def test_single_samples_decide_by_tolerance_and_spread() -> None:
    baseline = step_time((0.100, 0.101, 0.099, 0.100, 0.102))  # spread about 1%
    slower = judge(STEP_TIME_ID, step_time((0.110,)), baseline)
    assert slower.outcome is Outcome.REGRESSION and slower.rule == "spread rule"
    # A very noisy baseline: 10% is beyond tolerance but within 3 x its 20% spread.
    noisy_baseline = step_time((0.080, 0.090, 0.100, 0.110, 0.120))
    unclear = judge(STEP_TIME_ID, step_time((0.110,)), noisy_baseline)
    assert unclear.outcome is Outcome.UNRELIABLE and unclear.rule == "spread rule"


def test_too_few_samples_for_the_rank_test_use_the_spread_rule() -> None:
    # 4 vs 4: the smallest reachable p is 1/70 > 0.01, the rank test could never reject.
    verdict = judge(STEP_TIME_ID, step_time((0.110, 0.111, 0.112, 0.110)),
                    step_time((0.100, 0.101, 0.100, 0.099)))
    assert verdict.outcome is Outcome.REGRESSION and verdict.rule == "spread rule"


# --- unreliable and no baseline ----------------------------------------------------------


def test_unreliable_measurement_is_never_a_regression() -> None:
    rng = random.Random(8)
    measured = step_time(noisy(rng, median=0.150, cv=0.02), reliable=False,
                         note="GPU throttled (HwThermalSlowdown)")
    verdict = judge(STEP_TIME_ID, measured, step_time(noisy(rng, median=0.100, cv=0.02)))
    assert verdict.outcome is Outcome.UNRELIABLE
    assert "HwThermalSlowdown" in verdict.reason
    assert verdict.change == pytest.approx(0.5, abs=0.05)


def test_unreliable_baseline_is_not_judged_against() -> None:
    verdict = judge(STEP_TIME_ID, step_time((0.2,) * 5), step_time((0.1,) * 5, reliable=False))
    assert verdict.outcome is Outcome.UNRELIABLE
    assert "baseline was recorded unreliably" in verdict.reason


def test_missing_baseline_says_how_to_record_one() -> None:
    verdict = judge(STEP_TIME_ID, step_time((0.1, 0.2)), None)
    assert verdict.outcome is Outcome.NO_BASELINE
    assert verdict.change is None and verdict.p_value is None
    assert "--perf-update-baselines" in verdict.reason


def test_unit_mismatch_is_unreliable_not_compared() -> None:
    baseline = Metric(name="step_time", unit="ms", better="lower", kind="time",
                      samples=(100.0,) * 5)
    verdict = judge(STEP_TIME_ID, step_time((0.2,) * 5), baseline)
    assert verdict.outcome is Outcome.UNRELIABLE
    assert verdict.change is None
    assert "'s'" in verdict.reason and "'ms'" in verdict.reason


def test_direction_mismatch_is_unreliable() -> None:
    baseline = Metric(name="step_time", unit="s", better="higher", samples=(0.1,) * 5)
    verdict = judge(STEP_TIME_ID, step_time((0.2,) * 5), baseline)
    assert verdict.outcome is Outcome.UNRELIABLE and "not comparable" in verdict.reason


def test_zero_baseline_median_is_unreliable_unless_still_zero() -> None:
    zero = Metric(name="wait_time", unit="s", better="lower", kind="dataloader",
                  samples=(0.0,) * 5)
    assert judge("t::wait_time", zero, zero).outcome is Outcome.UNCHANGED
    some = zero.with_changes(samples=(0.001,) * 5)
    assert judge("t::wait_time", some, zero).outcome is Outcome.UNRELIABLE


# --- tolerance precedence and validation ---------------------------------------------------


def test_tolerance_precedence_argument_then_measured_then_baseline_then_default() -> None:
    plain = step_time((0.1,) * 5)
    assert judge("t::x", plain, plain).tolerance == DEFAULT_TOLERANCES["time"]
    baseline = plain.with_changes(tolerance=0.2)
    assert judge("t::x", plain, baseline).tolerance == 0.2
    measured = plain.with_changes(tolerance=0.3)
    assert judge("t::x", measured, baseline).tolerance == 0.3
    assert judge("t::x", measured, baseline, tolerance=0.01).tolerance == 0.01


def test_chosen_tolerance_names_where_it_came_from() -> None:
    assert choose_tolerance("dataloader") == Tolerance(DEFAULT_TOLERANCES["dataloader"], "default")
    assert choose_tolerance("time").is_default
    assert choose_tolerance("time", baseline=0.2) == Tolerance(0.2, "baseline")
    assert choose_tolerance("time", own=0.3, baseline=0.2) == Tolerance(0.3, "metric")
    assert choose_tolerance("time", explicit=0.01, own=0.3) == Tolerance(0.01, "explicit")
    with pytest.raises(ValueError, match="kind must be one of time, throughput"):
        choose_tolerance("latency")


@pytest.mark.parametrize("value", [0, 0.0, -0.05, 10, 10.0, float("nan"), float("inf"), True,
                                   "0.05", None])
def test_tolerance_bounds_reject_zero_negatives_typos_and_non_numbers(value: object) -> None:
    assert not is_tolerance(value)
    with pytest.raises(ValueError, match=r"--tolerance must be a relative change above 0 and "
                                         r"below 10 \(1000%\), such as 0.05 for 5%, got "):
        require_tolerance("--tolerance", value)


def test_metric_tolerance_follows_the_same_bounds() -> None:
    assert is_tolerance(0.05) and is_tolerance(9.99)
    assert require_tolerance("tolerance", 1) == 1.0
    with pytest.raises(ValueError, match="metric 'step_time': tolerance must be a relative change"):
        step_time((0.1,), tolerance=10)


def test_explicit_tolerance_changes_the_outcome() -> None:
    # 8% slower, deterministic: a regression at the default 2%, unchanged at an explicit 10%.
    assert judge("t::x", step_time((0.108,) * 5), step_time((0.1,) * 5)).outcome \
        is Outcome.REGRESSION
    assert judge("t::x", step_time((0.108,) * 5), step_time((0.1,) * 5),
                 tolerance=0.10).outcome is Outcome.UNCHANGED


def test_default_tolerances_cover_every_kind_with_memory_no_looser_than_time() -> None:
    assert set(DEFAULT_TOLERANCES) == {"time", "throughput", "memory", "dataloader", "other"}
    assert DEFAULT_TOLERANCES["memory"] <= DEFAULT_TOLERANCES["time"] \
        < DEFAULT_TOLERANCES["dataloader"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": 0.0}, "alpha must be a probability strictly between 0 and 1"),
    ({"alpha": 1.0}, "alpha must be a probability strictly between 0 and 1"),
    ({"tolerance": 0.0}, "tolerance must be a relative change above 0"),
    ({"tolerance": -0.05}, r"tolerance must be a relative change above 0 .*, got -0.05"),
])
def test_judge_rejects_bad_alpha_and_tolerance(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        judge("t::x", step_time((0.1,)), step_time((0.1,)), **kwargs)


# --- environment and ordering -----------------------------------------------------------


def test_environment_differences_list_what_changed_and_skip_run_identity() -> None:
    base = {"torch": "2.4.0", "cuda": "12.4", "driver": "550.54", "gpu_name": "NVIDIA H100",
            "git_commit": "abc", "hostname": "runner-1",
            "gpu_state": {"sm_clock_mhz": 1980, "temperature_c": 60}}
    new = {"torch": "2.5.0", "cuda": "12.4", "driver": "560.28", "gpu_name": "NVIDIA H100",
           "git_commit": "def", "hostname": "runner-2",
           "gpu_state": {"sm_clock_mhz": 1410, "temperature_c": 87}, "python": "3.12.1"}
    assert environment_differences(base, new) == {
        "driver": ("550.54", "560.28"),
        "gpu_state.sm_clock_mhz": (1980, 1410),
        "python": (None, "3.12.1"),
        "torch": ("2.4.0", "2.5.0"),
    }


def test_judge_records_environment_differences_when_both_are_given() -> None:
    verdict = judge("t::x", step_time((0.1,)), step_time((0.1,)),
                    baseline_environment={"torch": "2.4.0"}, environment={"torch": "2.5.0"})
    assert verdict.environment_differences == {"torch": ("2.4.0", "2.5.0")}
    assert judge("t::x", step_time((0.1,)), step_time((0.1,)),
                 environment={"torch": "2.5.0"}).environment_differences == {}


def test_sort_for_report_puts_regressions_first() -> None:
    def made(outcome: Outcome, name: str) -> Verdict:
        metric = step_time((0.1,))
        return Verdict(metric_id=f"t::{name}", outcome=outcome, measured=metric,
                       baseline=metric, change=0.0, tolerance=0.05, p_value=None, reason="",
                       environment_differences={})

    verdicts = [made(Outcome.UNCHANGED, "a"), made(Outcome.IMPROVEMENT, "b"),
                made(Outcome.NO_BASELINE, "c"), made(Outcome.REGRESSION, "e"),
                made(Outcome.UNRELIABLE, "f"), made(Outcome.REGRESSION, "d")]
    assert [v.metric_id for v in sort_for_report(verdicts)] == \
        ["t::d", "t::e", "t::f", "t::c", "t::b", "t::a"]


def test_outcome_values_are_the_words_reports_show() -> None:
    assert [o.value for o in Outcome] == ["regression", "improvement", "unchanged", "unreliable",
                                          "no baseline", "environment changed"]
    assert Outcome("no baseline") is Outcome.NO_BASELINE


HOST_OF_BASELINE = {"host": {"calibration": {"launch_us": 5.0, "dispatch_us": 30.0}}}


def _host_bound_pair(slowdown: float) -> tuple[Metric, Metric]:
    rng = random.Random(7)
    base = Metric(name="step_time", unit="s", better="lower", kind="time", host_bound=True,
                  samples=tuple(0.1 * (1 + rng.gauss(0, 0.01)) for _ in range(20)))
    now = base.with_changes(samples=tuple(s * (1 + slowdown) for s in base.samples))
    return base, now


def test_a_host_bound_step_on_a_slower_host_is_environment_changed() -> None:
    base, now = _host_bound_pair(0.4)
    slower_host = {"host": {"calibration": {"launch_us": 7.0, "dispatch_us": 41.0}}}
    verdict = judge("t::step_time", now, base, baseline_environment=HOST_OF_BASELINE,
                    environment=slower_host)
    assert verdict.outcome is Outcome.ENVIRONMENT_CHANGED
    assert "host-bound" in verdict.reason and "launch_us 40% slower" in verdict.reason
    assert "host.calibration.launch_us" in verdict.environment_differences


def test_a_host_bound_step_on_the_same_host_is_judged_as_code() -> None:
    base, now = _host_bound_pair(0.4)
    same_host = {"host": {"calibration": {"launch_us": 5.2, "dispatch_us": 29.0}}}
    verdict = judge("t::step_time", now, base, baseline_environment=HOST_OF_BASELINE,
                    environment=same_host)
    assert verdict.outcome is Outcome.REGRESSION
    assert verdict.environment_differences == {}  # probes within their noise are not listed


def test_a_gpu_bound_step_is_judged_as_code_whatever_the_host() -> None:
    base, now = _host_bound_pair(0.4)
    base, now = base.with_changes(host_bound=False), now.with_changes(host_bound=False)
    slower_host = {"host": {"calibration": {"launch_us": 7.0, "dispatch_us": 41.0}}}
    verdict = judge("t::step_time", now, base, baseline_environment=HOST_OF_BASELINE,
                    environment=slower_host)
    assert verdict.outcome is Outcome.REGRESSION
