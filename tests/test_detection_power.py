"""The detection-power benchmark on CPU: its counting of false alarms and detections on seeded
synthetic runs, the A/B phase's rounds, early stop and counting on scripted runs, the round-robin
order, the JSON round trip, the injections, and --quick runs end to end followed by --analyse."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.detection_power.ab_rounds import (
    BASE,
    HEAD,
    ABSettings,
    MeasureRun,
    ab_repetition,
    replay,
)
from benchmarks.detection_power.analysis import (
    analyse,
    analyse_ab,
    analyse_grid,
    confirmation_lag,
)
from benchmarks.detection_power.bench import phase_result, repetition_record, round_robin_order
from benchmarks.detection_power.cli import main
from benchmarks.detection_power.design import (
    AB_PHASE,
    CONDITIONS,
    CPU_SIZES,
    DEFAULT_PHASES,
    QUICK_REPEATS,
)
from benchmarks.detection_power.document import load_document, new_document, save_document
from benchmarks.detection_power.injections import (
    ALLOCATION_GRANULARITY,
    CALIBRATION_STEPS,
    K_MULTIPLE,
    ExtraGemm,
    HeldAllocation,
    InjectedModel,
    calibrate_k,
    held_allocation_bytes,
)
from benchmarks.detection_power.phases import MEMORY_NEEDS_CUDA, paired_added_seconds
from benchmarks.detection_power.report import render_grid, render_notes
from harness.gate.paired import MIN_ROUNDS
from harness.gate.results import Metric, SchemaError
from harness.gate.run_options import DEFAULT_AB_BUDGET_SECONDS, DEFAULT_AB_ROUNDS
from harness.gate.tolerance import DEFAULT_TOLERANCES
from harness.gate.verdict import DEFAULT_ALPHA
from harness.measure.gpu_state import measure_between_snapshots
from harness.measure.sampling import TimingPolicy, measure_time
from harness.testing import FakeClock, FakeGpuMonitor


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector to new objects inside the block: what is alive when it starts,
    and what survives each collection in it, is frozen (`gc.freeze`) until it ends.
    `measure_time` runs a full gc.collect() before every measurement, 0.1-0.4 s in a test process
    holding torch, sympy and hypothesis; here it walks only what was created since the last one.
    The measurements are the same, they stop paying for the rest of the process."""

    def freeze_survivors(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            gc.freeze()

    gc.freeze()
    gc.callbacks.append(freeze_survivors)
    try:
        yield
    finally:
        gc.callbacks.remove(freeze_survivors)
        gc.unfreeze()


CONDITION = {c.name: c for c in CONDITIONS}


def fake_step_times(seed: int, slowdown: float, noise_cv: float = 0.002) -> tuple[float, ...]:
    """Per-call seconds as the fixture's default policy samples them, from a seeded FakeClock of a
    10 ms step slowed down by `slowdown`."""
    clock = FakeClock(seed, base_seconds=0.010, noise_cv=noise_cv, slowdown=slowdown)
    with frozen_heap():
        return tuple(measure_time(lambda: None, clock=clock, policy=TimingPolicy(), device="cpu"))


def step_time(samples: tuple[float, ...]) -> Metric:
    return Metric(name="step_time", unit="s", better="lower", kind="time", samples=samples)


def tflops(samples: tuple[float, ...]) -> Metric:
    return Metric(name="gemm_tflops", unit="TFLOP/s", better="higher", kind="throughput",
                  samples=samples)


def peak_bytes(value: float) -> Metric:
    return Metric(name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
                  samples=(value,))


def record(metric: Metric, condition: str, index: int = 0, round_index: int = 0
           ) -> dict[str, Any]:
    return repetition_record(index=index, round_index=round_index,
                                condition=CONDITION[condition],
                                injected_fraction=CONDITION[condition].fraction,
                                metrics={metric.name: metric}, gpu_state={},
                                timestamp="2024-01-01T00:00:00.000+00:00", elapsed_seconds=1.0,
                                measurement_seconds=1.0)


def synthetic_document(phases: dict[str, tuple[Metric, dict[str, list[Metric]]]],
                       repeats: int) -> dict[str, Any]:
    """A results document whose phases hold the given baseline and repetitions per condition,
    in round-robin order."""
    data = new_document(device="cpu", quick=False, repeats=repeats, policy=TimingPolicy(),
                           conditions=CONDITIONS, sizes=None, environment={}, clock="fake")
    order = round_robin_order([c.name for c in CONDITIONS], repeats)
    for phase, (baseline, by_condition) in phases.items():
        taken = {name: iter(metrics) for name, metrics in by_condition.items()}
        repetitions = [record(next(taken[name]), name, index, round_index)
                       for index, (round_index, name) in enumerate(order)]
        data["phases"][phase] = phase_result(
            baseline.name, {}, record(baseline, "unchanged"), record(baseline, "unchanged"),
            {}, order, repetitions, 1.0)
    data["complete"] = True
    return data


def step_time_phase(slowdowns: dict[str, list[float]]) -> tuple[Metric, dict[str, list[Metric]]]:
    """A train phase: a 10 ms baseline and, per condition, one repetition per slowdown."""
    seeds = iter(range(1, 1000))
    baseline = step_time(fake_step_times(0, 1.0))
    return baseline, {name: [step_time(fake_step_times(next(seeds), s)) for s in values]
                      for name, values in slowdowns.items()}


def rows_by_condition(rows: list[Any]) -> dict[str, Any]:
    return {row.condition: row for row in rows}


# -- analysis ----------------------------------------------------------------------------------


def test_analysis_counts_planted_false_alarms_and_detections() -> None:
    # 10 repetitions per condition; a 10% slowdown is far beyond 0.2% noise and the 2% default
    # tolerance (always flagged), no slowdown never is. The synthetic repetitions all end at the
    # same time, so each one's confirmation is the next repetition of its condition.
    slow, same = 1.10, 1.0
    phase = step_time_phase({
        "unchanged": [slow] + [same] * 9,   # one slow first measurement, cleared by the next
        "+3%": [slow] * 7 + [same] * 3,     # 7 first flags, the 7th not confirmed: 6 of 10
        "+5%": [slow] * 10,
        "+10%": [slow] * 10,
    })
    rows = rows_by_condition(analyse(synthetic_document({"train": phase}, repeats=10)))

    assert [(c, rows[c].first_flagged, rows[c].flagged, rows[c].repetitions) for c in rows] == [
        ("unchanged", 1, 0, 10), ("+3%", 7, 6, 10), ("+5%", 10, 10, 10), ("+10%", 10, 10, 10)]
    assert [rows[c].met for c in rows] == [True, False, True, True]
    # 19/20 of 10 is 9.5: all 10 must be flagged.
    assert [rows[c].target for c in rows] == ["0/10", ">=8/10", "10/10", "10/10"]


def test_analysis_meets_every_target_when_the_slowdowns_are_clear() -> None:
    phase = step_time_phase({"unchanged": [1.0] * 20, "+3%": [1.10] * 20, "+5%": [1.10] * 20,
                             "+10%": [1.10] * 20})
    rows = analyse(synthetic_document({"train": phase}, repeats=20))
    assert all(row.met for row in rows)
    assert [row.target for row in rows] == ["0/20", ">=16/20", ">=19/20", "20/20"]


def test_default_tolerance_is_the_plugins_default_for_the_metric_kind() -> None:
    phase = step_time_phase({"unchanged": [1.0] * 2, "+3%": [1.10] * 2, "+5%": [1.10] * 2,
                             "+10%": [1.10] * 2})
    rows = analyse(synthetic_document({"train": phase}, repeats=2),
                      tolerances=(None, 0.02), alpha=0.05)
    defaults = [r for r in rows if r.default_tolerance]
    explicit = [r for r in rows if not r.default_tolerance]
    assert {r.tolerance for r in defaults} == {DEFAULT_TOLERANCES["time"]}
    assert defaults[0].tolerance_label == "default 2%"
    assert {r.tolerance for r in explicit} == {0.02} and explicit[0].tolerance_label == "2%"
    assert {r.alpha for r in rows} == {0.05}


def test_a_slowdown_within_the_tolerance_is_not_flagged() -> None:
    # 3% slower with 0.2% noise: flagged at the 2% default tolerance, never at 5%.
    phase = step_time_phase({"unchanged": [1.0] * 5, "+3%": [1.03] * 5, "+5%": [1.03] * 5,
                             "+10%": [1.03] * 5})
    data = synthetic_document({"train": phase}, repeats=5)
    at_default = rows_by_condition(analyse(data))
    at_five_percent = rows_by_condition(analyse(data, tolerances=(0.05,)))
    assert at_default["+3%"].flagged == 5
    assert at_five_percent["+3%"].flagged == 0
    assert at_default["+3%"].median_change == pytest.approx(0.03, abs=0.005)


def test_a_confirmation_needs_only_half_the_tolerance() -> None:
    # First measurements 3% slow (beyond 2%), their confirmations 1.5% slow: beyond half the
    # tolerance, so the regression persists; confirmations at 0.5% clear it.
    phase = step_time_phase({"unchanged": [1.0] * 4, "+3%": [1.03, 1.015] * 2,
                             "+5%": [1.03, 1.005] * 2, "+10%": [1.10] * 4})
    rows = rows_by_condition(analyse(synthetic_document({"train": phase}, repeats=4)))
    assert (rows["+3%"].first_flagged, rows["+3%"].flagged) == (2, 2)
    assert (rows["+5%"].first_flagged, rows["+5%"].flagged) == (2, 0)


def test_the_confirmation_lag_models_the_plugins_pause() -> None:
    def ending_at(*ends: float) -> list[dict[str, Any]]:
        return [{"elapsed_s": end} for end in ends]

    # A repetition of the condition every 10 s: the first one at least 30 s later is 3 on.
    assert confirmation_lag(ending_at(0, 10, 20, 30, 40, 50), delay_seconds=30) == 3
    assert confirmation_lag(ending_at(0, 10, 20, 30, 40, 50), delay_seconds=31) == 4
    # Never more than the others there are, never itself while there are others.
    assert confirmation_lag(ending_at(0, 10, 20), delay_seconds=300) == 2
    assert confirmation_lag(ending_at(0, 60, 120), delay_seconds=30) == 1
    assert confirmation_lag(ending_at(5), delay_seconds=30) == 0


def test_lower_throughput_is_a_regression_and_higher_is_not() -> None:
    seeds = iter(range(100, 1000))

    def gemm(speed: float) -> Metric:
        # TFLOP/s is flops / time: a slowdown s divides it by s.
        return tflops(tuple(1e3 / t for t in fake_step_times(next(seeds), 1.0 / speed)))

    baseline = tflops(tuple(1e3 / t for t in fake_step_times(0, 1.0)))
    phase = (baseline, {"unchanged": [gemm(1.10), gemm(1.10)],   # faster: an improvement
                        "+3%": [gemm(0.90), gemm(0.90)],
                        "+5%": [gemm(0.90), gemm(1.0)],
                        "+10%": [gemm(0.90), gemm(0.90)]})
    rows = rows_by_condition(analyse(synthetic_document({"gemm": phase}, repeats=2)))
    # (first measurements flagged, confirmed): the slow +5% one is confirmed by an unchanged one.
    assert {c: (rows[c].first_flagged, rows[c].flagged) for c in rows} == {
        "unchanged": (0, 0), "+3%": (2, 2), "+5%": (1, 0), "+10%": (2, 2)}
    assert rows["unchanged"].met and rows["+10%"].met and not rows["+5%"].met


def test_memory_regressions_follow_the_two_percent_memory_tolerance() -> None:
    peak = 20e9
    phase = (peak_bytes(peak), {"unchanged": [peak_bytes(peak)] * 3,
                                "+3%": [peak_bytes(peak * 1.03)] * 3,
                                "+5%": [peak_bytes(peak * 1.05)] * 3,
                                "+10%": [peak_bytes(peak * 1.10)] * 3})
    data = synthetic_document({"memory": phase}, repeats=3)
    at_default = rows_by_condition(analyse(data))
    assert {c: r.flagged for c, r in at_default.items()} == {
        "unchanged": 0, "+3%": 3, "+5%": 3, "+10%": 3}
    assert at_default["+3%"].tolerance == DEFAULT_TOLERANCES["memory"]
    assert rows_by_condition(analyse(data, tolerances=(0.04,)))["+3%"].flagged == 0


def test_a_throttled_measurement_is_unreliable_never_a_detection() -> None:
    monitor = FakeGpuMonitor(throttle_reasons=["SwThermalSlowdown"])  # throttled every time
    calls = []

    def produce() -> dict[str, Metric]:
        calls.append(1)
        return {"step_time": step_time(fake_step_times(len(calls), 1.10))}

    metrics, gpu_state = measure_between_snapshots(produce, monitor)
    assert gpu_state["attempts"] == 2 and len(calls) == 2
    assert not metrics["step_time"].reliable
    baseline = step_time(fake_step_times(0, 1.0))
    phase = (baseline, {"unchanged": [baseline], "+3%": [metrics["step_time"]],
                        "+5%": [baseline], "+10%": [baseline]})
    rows = rows_by_condition(analyse(synthetic_document({"train": phase}, repeats=1)))
    assert rows["+3%"].flagged == 0 and rows["+3%"].unreliable == 1


def test_grid_names_the_settings_that_meet_every_target() -> None:
    # Exactly the injected slowdowns: a 2% tolerance (the default) sees 3%, 5% does not.
    phase = step_time_phase({"unchanged": [1.0] * 4, "+3%": [1.03] * 4, "+5%": [1.05] * 4,
                             "+10%": [1.10] * 4})
    rows = analyse_grid(synthetic_document({"train": phase}, repeats=4),
                           tolerances=(None, 0.02, 0.05), alphas=(DEFAULT_ALPHA,))
    text = render_grid(rows)
    summary = text.splitlines()[-1]
    assert "tolerance default, alpha 0.01; tolerance 2%, alpha 0.01" in summary
    assert "5%" not in summary


def test_analysis_rejects_a_bad_alpha_naming_it() -> None:
    phase = step_time_phase({"unchanged": [1.0], "+3%": [1.0], "+5%": [1.0], "+10%": [1.0]})
    data = synthetic_document({"train": phase}, repeats=1)
    with pytest.raises(ValueError, match="alpha must be a probability.*got 1.5"):
        analyse(data, alpha=1.5)
    with pytest.raises(ValueError, match="tolerances must be a sequence"):
        analyse(data, tolerances=0.02)


# -- the A/B phase -----------------------------------------------------------------------------

# The plugin's A/B defaults for a throughput metric.
AB_SETTINGS = ABSettings(metric_id="benchmarks/detection_power::gemm_tflops",
                         tolerance=DEFAULT_TOLERANCES["throughput"], alpha=DEFAULT_ALPHA,
                         max_rounds=DEFAULT_AB_ROUNDS, budget_seconds=DEFAULT_AB_BUDGET_SECONDS)


def scripted_runs(head_ratios: list[float], seed: int = 0,
                  calls: list[tuple[int, str]] | None = None) -> MeasureRun:
    """Runs of a 700 TFLOP/s GEMM with 0.1% seeded jitter per run; head's run of round r is
    base's level times head_ratios[r]. Every (round, side) asked for goes to `calls`."""
    rng = random.Random(seed)

    def run(side: str, round_index: int) -> Metric:
        if calls is not None:
            calls.append((round_index, side))
        value = 700.0 * (1 + rng.gauss(0, 0.001))
        if side == HEAD:
            value *= head_ratios[round_index]
        return tflops((value,))

    return run


# Head's TFLOP/s per round: 10% more time in every round; none; rounds that disagree (10% slower,
# then 5% faster, ...): beyond the 2% tolerance on average, but never with p < alpha.
TEN_PERCENT_SLOWER = [1 / 1.10] * DEFAULT_AB_ROUNDS
NO_CHANGE = [1.0] * DEFAULT_AB_ROUNDS
DISAGREEING = [0.90, 1.05, 0.90, 1.05, 0.90]


def test_ab_head_slower_in_every_round_is_a_regression_after_the_fewest_rounds() -> None:
    calls: list[tuple[int, str]] = []
    record = ab_repetition(scripted_runs(TEN_PERCENT_SLOWER, calls=calls), AB_SETTINGS)
    assert record["outcome"] == "regression"
    assert record["rounds"] == MIN_ROUNDS == 3 and len(calls) == 2 * MIN_ROUNDS
    assert record["change"] == pytest.approx(1 / 1.10 - 1, abs=0.005)
    assert record["p_value"] < DEFAULT_ALPHA / (DEFAULT_AB_ROUNDS - MIN_ROUNDS + 1)


def test_ab_without_a_change_is_not_flagged_and_stops_after_the_fewest_rounds() -> None:
    record = ab_repetition(scripted_runs(NO_CHANGE), AB_SETTINGS)
    assert (record["outcome"], record["rounds"]) == ("unchanged", MIN_ROUNDS)
    assert abs(record["change"]) < 0.005


def test_ab_rounds_that_disagree_run_to_the_most_rounds_and_end_undecided() -> None:
    record = ab_repetition(scripted_runs(DISAGREEING), AB_SETTINGS)
    assert (record["outcome"], record["rounds"]) == ("undecided", DEFAULT_AB_ROUNDS)
    assert record["outcomes"] == ["undecided"] * DEFAULT_AB_ROUNDS
    assert record["p_value"] > DEFAULT_ALPHA


def test_ab_rounds_alternate_with_base_first_in_even_rounds() -> None:
    calls: list[tuple[int, str]] = []
    record = ab_repetition(scripted_runs(DISAGREEING, calls=calls), AB_SETTINGS)
    expected = [[BASE, HEAD], [HEAD, BASE], [BASE, HEAD], [HEAD, BASE], [BASE, HEAD]]
    assert record["round_order"] == expected
    assert calls == [(r, side) for r, sides in enumerate(expected) for side in sides]
    assert [(run["round"], run["side"]) for run in record["runs"]] == calls
    # The medians pair up by round, whatever side ran first in it.
    heads = [run["median"] for run in record["runs"] if run["side"] == HEAD]
    assert record["head_medians"] == heads


def test_ab_records_the_verdict_after_every_round() -> None:
    record = ab_repetition(scripted_runs(TEN_PERCENT_SLOWER), AB_SETTINGS)
    # Before MIN_ROUNDS there is no paired verdict: undecided, no p-value.
    assert record["p_values"][:MIN_ROUNDS - 1] == [None] * (MIN_ROUNDS - 1)
    assert record["outcomes"] == ["undecided"] * (MIN_ROUNDS - 1) + ["regression"]
    assert record["p_values"][-1] == record["p_value"]


def ab_result(by_condition: dict[str, list[list[float]]]) -> dict[str, Any]:
    """An A/B phase whose comparisons of each condition ran the given head ratios per round,
    in round-robin order."""
    repeats = len(next(iter(by_condition.values())))
    order = round_robin_order([c.name for c in CONDITIONS], repeats)
    seeds = iter(range(1000))
    repetitions = [dict(ab_repetition(scripted_runs(by_condition[name][r], next(seeds)),
                                      AB_SETTINGS), index=i, repetition=r, condition=name)
                   for i, (r, name) in enumerate(order)]
    return {"judged_metric": "gemm_tflops",
            "metric": {"unit": "TFLOP/s", "better": "higher", "kind": "throughput"},
            "settings": AB_SETTINGS.to_json(), "min_rounds": MIN_ROUNDS,
            "order": [list(pair) for pair in order], "repetitions": repetitions}


def ab_document(by_condition: dict[str, list[list[float]]]) -> dict[str, Any]:
    data = new_document(device="cpu", quick=False, repeats=len(by_condition["unchanged"]),
                        policy=TimingPolicy(), conditions=CONDITIONS, sizes=None,
                        environment={}, clock="fake")
    data["phases"][AB_PHASE] = ab_result(by_condition)
    data["complete"] = True
    return data


def test_ab_analysis_counts_regressions_rounds_and_p_per_condition() -> None:
    slower = [1 / 1.03] * DEFAULT_AB_ROUNDS
    data = ab_document({
        "unchanged": [NO_CHANGE] * 5,
        "+3%": [slower] * 4 + [DISAGREEING],        # 4 of 5 flagged: meets >=4/5
        "+5%": [TEN_PERCENT_SLOWER] * 5,
        "+10%": [TEN_PERCENT_SLOWER] * 4 + [NO_CHANGE],  # 4 of 5: misses 5/5
    })
    rows = {row.condition: row for row in analyse_ab(data)}
    assert [(c, r.flagged, r.undecided, r.repetitions, r.target, r.met)
            for c, r in rows.items()] == [
        ("unchanged", 0, 0, 5, "0/5", True), ("+3%", 4, 1, 5, ">=4/5", True),
        ("+5%", 5, 0, 5, "5/5", True), ("+10%", 4, 0, 5, "5/5", False)]
    assert rows["unchanged"].mean_rounds == MIN_ROUNDS
    assert rows["+3%"].mean_rounds == pytest.approx((4 * MIN_ROUNDS + DEFAULT_AB_ROUNDS) / 5)
    stored = [r["p_value"] for r in data["phases"][AB_PHASE]["repetitions"]
              if r["condition"] == "+5%"]
    assert rows["+5%"].median_p == pytest.approx(sorted(stored)[2])
    # The main analysis judges only the phases measured against a baseline.
    assert analyse(data) == []


def test_ab_replay_of_a_stored_comparison_reaches_its_verdict() -> None:
    record = ab_repetition(scripted_runs(DISAGREEING), AB_SETTINGS)
    template = tflops((1.0,))
    again = replay(json.loads(json.dumps(record)), AB_SETTINGS, template, "ab repetitions[0]")
    for key in ("outcome", "rounds", "p_value", "change", "base_medians", "head_medians",
                "p_values", "round_order"):
        assert again[key] == record[key]


def test_ab_replay_that_needs_a_round_the_record_lacks_names_it() -> None:
    record = ab_repetition(scripted_runs(DISAGREEING), AB_SETTINGS)
    cut = dict(record, base_medians=record["base_medians"][:3],
               head_medians=record["head_medians"][:3])
    with pytest.raises(SchemaError, match="ab repetitions\\[7\\]: holds 3 .* asks for round 4"):
        replay(cut, AB_SETTINGS, tflops((1.0,)), "ab repetitions[7]")


def test_ab_repetition_with_unpaired_medians_is_a_schema_error() -> None:
    data = ab_document({name: [NO_CHANGE] for name in ("unchanged", "+3%", "+5%", "+10%")})
    data["phases"][AB_PHASE]["repetitions"][1]["head_medians"].pop()
    with pytest.raises(SchemaError, match="phase 'ab': repetitions\\[1\\]: 'base_medians' and "
                                          "'head_medians' must be equally long"):
        analyse_ab(data)


# -- order, targets, injections ----------------------------------------------------------------


def test_round_robin_interleaves_every_condition_in_every_round() -> None:
    names = ["unchanged", "+3%", "+5%", "+10%"]
    order = round_robin_order(names, 6)
    assert len(order) == 24
    for round_index in range(6):
        block = order[4 * round_index:4 * round_index + 4]
        assert {r for r, _ in block} == {round_index}
        assert sorted(name for _, name in block) == sorted(names)
    # Each round starts one condition later: no condition always runs first (or after another).
    assert [order[4 * r][1] for r in range(4)] == names
    assert [name for _, name in order[:8]] != ["unchanged"] * 4 + ["+3%"] * 4


def test_round_robin_rejects_empty_or_repeated_conditions() -> None:
    with pytest.raises(ValueError, match="repeats must be a positive integer, got 0"):
        round_robin_order(["a"], 0)
    with pytest.raises(ValueError, match="distinct names"):
        round_robin_order(["a", "a"], 2)


def test_targets_are_the_issues_counts_out_of_twenty() -> None:
    assert [c.target(20) for c in CONDITIONS] == ["0/20", ">=16/20", ">=19/20", "20/20"]
    assert [c.required(20) for c in CONDITIONS] == [(0, 0), (16, 20), (19, 20), (20, 20)]


def test_calibration_finds_the_k_whose_time_is_the_target() -> None:
    # A GEMM costing 20 us of fixed overhead plus 10 ns per unit of k; the probe's estimate of
    # seconds per k (which ignores the overhead) is off by 50%.
    measured: list[int] = []

    def time_k(k: int) -> float:
        measured.append(k)
        return 20e-6 + 10e-9 * k

    k, seconds = calibrate_k(1e-3, time_k, seconds_per_k=15e-9)
    assert k % K_MULTIPLE == 0
    assert seconds == pytest.approx(1e-3, rel=0.01)
    assert len(measured) <= CALIBRATION_STEPS


def test_added_time_is_measured_against_an_unchanged_step_taken_just_before() -> None:
    # A host that runs every step 10 ms slow from the third measurement on: measured against
    # the first (the phase's baseline) the extra work would read 12 ms, not its 2 ms.
    calls: list[str] = []
    extra = object()

    def step_seconds(injection: object) -> float:
        calls.append("extra" if injection is extra else "unchanged")
        slow = 10e-3 if len(calls) > 2 else 0.0
        return 85e-3 + slow + (2e-3 if injection is extra else 0.0)

    step_seconds(None)  # the baseline
    step_seconds(None)
    assert paired_added_seconds(step_seconds, extra) == pytest.approx(2e-3)
    assert calls[2:] == ["unchanged", "extra"]


def test_calibration_rejects_a_target_that_is_not_a_positive_time() -> None:
    with pytest.raises(ValueError, match="target_seconds must be a positive finite number, got 0"):
        calibrate_k(0, lambda k: 1.0, seconds_per_k=1e-9)


def test_held_allocation_is_the_fraction_rounded_up_to_allocator_blocks() -> None:
    nbytes = held_allocation_bytes(0.03, 1_000_001)
    assert nbytes % ALLOCATION_GRANULARITY == 0
    assert 30_000.03 <= nbytes < 30_000.03 + ALLOCATION_GRANULARITY
    with pytest.raises(ValueError, match="reference_bytes must be a positive finite number, got 0"):
        held_allocation_bytes(0.03, 0)
    with pytest.raises(ValueError, match="fraction must be a positive finite number, got '3%'"):
        held_allocation_bytes("3%", 1e9)  # type: ignore[arg-type]


def test_injected_model_runs_the_extra_work_in_every_forward_and_holds_the_buffer() -> None:
    model = InjectedModel(torch.nn.Linear(4, 4))
    held = HeldAllocation(4096, "cpu")
    model.injection = held
    model(torch.randn(2, 4))
    assert held.tensor is not None and held.tensor.numel() == 4096
    assert int(held.tensor.sum()) == 4096  # written, not just reserved
    held.release()
    assert held.tensor is None
    assert sum(p.numel() for p in model.parameters()) == 4 * 4 + 4


def test_extra_gemm_computes_the_product_of_its_operands() -> None:
    extra = ExtraGemm(8, 16, 64, torch.float32, "cpu")
    extra.run()
    assert torch.allclose(extra.out, extra.a @ extra.b)
    assert extra.shape.flops == 2 * 8 * 16 * 64


# -- the document ------------------------------------------------------------------------------


def test_document_round_trips_through_json(tmp_path: Path) -> None:
    phase = step_time_phase({"unchanged": [1.0] * 2, "+3%": [1.1] * 2, "+5%": [1.1] * 2,
                             "+10%": [1.1] * 2})
    data = synthetic_document({"train": phase}, repeats=2)
    path = tmp_path / "results" / "dp.json"
    save_document(path, data)
    loaded = load_document(path)
    assert loaded == json.loads(json.dumps(data))
    assert analyse(loaded) == analyse(data)
    assert not list(path.parent.glob(".*.tmp"))


def test_a_version_one_document_is_still_read(tmp_path: Path) -> None:
    phase = step_time_phase({"unchanged": [1.0], "+3%": [1.1], "+5%": [1.1], "+10%": [1.1]})
    data = dict(synthetic_document({"train": phase}, repeats=1), format_version=1)
    path = tmp_path / "dp.json"
    path.write_text(json.dumps(data))
    assert analyse(load_document(path)) == analyse(data)


def test_unknown_format_version_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dp.json"
    phase = step_time_phase({"unchanged": [1.0], "+3%": [1.1], "+5%": [1.1], "+10%": [1.1]})
    data = dict(synthetic_document({"train": phase}, repeats=1), format_version=99)
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match=f"{path}: format_version 99 is not supported"):
        load_document(path)


def test_missing_results_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path / 'absent.json'}: cannot read"):
        load_document(tmp_path / "absent.json")


def test_repetition_without_the_judged_metric_is_a_schema_error() -> None:
    phase = step_time_phase({"unchanged": [1.0], "+3%": [1.1], "+5%": [1.1], "+10%": [1.1]})
    data = synthetic_document({"train": phase}, repeats=1)
    data["phases"]["train"]["repetitions"][2]["metrics"] = {}
    with pytest.raises(SchemaError, match="repetitions\\[2\\] has no 'step_time' metric"):
        analyse(data)


# -- the command line --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `--device cpu --quick` run: its JSON and printed report. How long it takes is the
    benchmark's own business (it records its wall time against its budget), not this test's."""
    path = tmp_path_factory.mktemp("detection") / "dp.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), frozen_heap():
        code = main(["--out", str(path), "--device", "cpu", "--quick"])
    assert code == 0
    return path, out.getvalue()


def test_quick_cpu_run_writes_every_raw_sample(quick_run: tuple[Path, str]) -> None:
    path, _ = quick_run
    data = load_document(path)
    assert data["complete"] and data["quick"] and not data["policy_is_fixture_default"]
    assert data["phases"]["memory"] == {"skipped": MEMORY_NEEDS_CUDA}
    # A run without --metrics leaves the A/B phase out (it would pass the time budget).
    assert list(data["phases"]) == list(DEFAULT_PHASES) and AB_PHASE not in DEFAULT_PHASES
    for phase in ("gemm", "train"):
        result = data["phases"][phase]
        repetitions = result["repetitions"]
        assert len(repetitions) == QUICK_REPEATS * len(CONDITIONS)
        expected = round_robin_order([c.name for c in CONDITIONS], QUICK_REPEATS)
        assert [(r["round"], r["condition"]) for r in repetitions] == expected
        assert [tuple(pair) for pair in result["order"]] == expected
        assert set(result["injections"]) == {"+3%", "+5%", "+10%"}
        for rep in repetitions:
            samples = rep["metrics"][result["judged_metric"]]["samples"]
            assert len(samples) >= TimingPolicy().min_samples
            assert rep["timestamp"] and rep["elapsed_s"] > 0
    assert "skipped" in data["fidelity"]
    # Wall time is recorded per phase and in total (for the report), whatever it came to.
    assert set(data["wall_seconds"]) == {"setup", "gemm", "train", "memory", "fidelity", "total"}
    assert all(seconds >= 0 for seconds in data["wall_seconds"].values())


def test_injected_gemm_reports_the_base_flops(quick_run: tuple[Path, str]) -> None:
    data = load_document(quick_run[0])
    flops = CPU_SIZES.gemm.flops
    rep = next(r for r in data["phases"]["gemm"]["repetitions"] if r["condition"] == "+10%")
    seconds = rep["metrics"]["gemm"]["samples"]
    assert rep["metrics"]["gemm_tflops"]["samples"] == pytest.approx(
        [flops / s / 1e12 for s in seconds])


def test_quick_run_prints_the_main_table_then_fidelity_then_wall_time(
        quick_run: tuple[Path, str]) -> None:
    report = quick_run[1].rstrip().splitlines()
    assert report[-1].startswith("wall time: ")
    assert any(line.startswith("timing fidelity: skipped") for line in report[-4:])
    header = next(i for i, line in enumerate(report) if line.startswith("metric ")
                  and "regressions (gate)" in line)
    assert "re-analysis grid" in "\n".join(report[:header])


def test_analyse_prints_the_tolerance_grid(quick_run: tuple[Path, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--analyse", str(quick_run[0]), "--tolerance-grid"]) == 0
    text = capsys.readouterr().out
    assert "re-analysis grid" in text
    for label in ("default 2%", "1%", "2%", "3%", "5%"):
        assert f" {label} " in text
    for alpha in ("0.01", "0.05", "0.001"):
        assert f" {alpha} " in text
    assert "Settings meeting every target for every metric:" in text


@pytest.fixture(scope="module")
def quick_ab_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `--device cpu --quick --metrics ab` run: its JSON and printed report."""
    path = tmp_path_factory.mktemp("detection_ab") / "dp_ab.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), frozen_heap():
        code = main(["--out", str(path), "--device", "cpu", "--quick", "--metrics", AB_PHASE])
    assert code == 0
    return path, out.getvalue()


def test_quick_ab_run_stores_every_run_median_in_round_robin_order(
        quick_ab_run: tuple[Path, str]) -> None:
    data = load_document(quick_ab_run[0])
    assert list(data["phases"]) == [AB_PHASE] and data["fidelity"] is None
    result = data["phases"][AB_PHASE]
    expected = round_robin_order([c.name for c in CONDITIONS], QUICK_REPEATS)
    assert [(r["repetition"], r["condition"]) for r in result["repetitions"]] == expected
    assert set(result["injections"]) == {"+3%", "+5%", "+10%"}
    assert result["settings"] == AB_SETTINGS.to_json()
    for record in result["repetitions"]:
        rounds = record["rounds"]
        assert MIN_ROUNDS <= rounds <= DEFAULT_AB_ROUNDS
        assert len(record["base_medians"]) == len(record["head_medians"]) == rounds
        assert len(record["runs"]) == 2 * rounds and len(record["p_values"]) == rounds
        assert record["round_order"] == [[BASE, HEAD] if r % 2 == 0 else [HEAD, BASE]
                                         for r in range(rounds)]
        # Fewer than the most rounds only when the comparison was decided: not undecided, or
        # head measured faster (TFLOP/s up), which a confirmation never holds against it.
        assert rounds == DEFAULT_AB_ROUNDS or record["outcome"] != "undecided" \
            or record["change"] > 0
        again = replay(record, AB_SETTINGS, tflops((1.0,)), "ab")
        assert (again["outcome"], again["rounds"]) == (record["outcome"], rounds)
    assert set(data["wall_seconds"]) == {"setup", AB_PHASE, "total"}


def test_quick_ab_run_prints_the_ab_table_and_analyse_prints_it_again(
        quick_ab_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, printed = quick_ab_run
    table = printed[printed.index("A/B phase (gemm_tflops)"):printed.index("timing fidelity")]
    for header in ("regressions (paired)", "target", "met?", "mean rounds", "median p"):
        assert header in table
    assert all(f"\n{c.name} " in table for c in CONDITIONS)
    assert "regressions (gate)" not in printed  # no phase was judged against a baseline
    assert main(["--analyse", str(path)]) == 0
    assert table in capsys.readouterr().out


def test_unknown_metric_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--metrics", "gemm,latency", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "subset of gemm,train,memory,ab, got 'gemm,latency'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_cuda_without_a_gpu_stops_with_a_clear_message(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda", "--out", "unused.json"])
    assert exit_info.value.code == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_analyse_of_a_missing_file_names_it(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--analyse", str(tmp_path / "absent.json")])
    assert f"{tmp_path / 'absent.json'}: cannot read" in capsys.readouterr().err


def test_analyse_of_a_comparison_stopped_under_another_stop_rule_says_so(
        quick_ab_run: tuple[Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A record of 3 rounds that disagree, which the current stop rule would have gone on with:
    # the re-analysis cannot judge it and says why, without a traceback.
    data = load_document(quick_ab_run[0])
    record = data["phases"][AB_PHASE]["repetitions"][0]
    record["base_medians"] = [700.0] * 3
    record["head_medians"] = [700.0 * ratio for ratio in DISAGREEING[:3]]
    path = tmp_path / "cut.json"
    save_document(path, data)
    with pytest.raises(SystemExit) as exit_info:
        main(["--analyse", str(path)])
    assert exit_info.value.code == 2
    assert "holds 3 head run(s), but the A/B stop rule with 5 rounds at most asks for round 4" \
        in capsys.readouterr().err


def test_an_injection_that_missed_its_fraction_is_flagged_in_the_report() -> None:
    phase = step_time_phase({"unchanged": [1.0], "+3%": [1.03], "+5%": [1.05], "+10%": [1.10]})
    data = synthetic_document({"train": phase}, repeats=1)
    data["phases"]["train"]["injections"] = {
        "+3%": {"shape": {"m": 8, "n": 8, "k": 64}, "injected_fraction": 0.0176,
                "measured": "in the step"},
        "+5%": {"shape": {"m": 8, "n": 8, "k": 64}, "injected_fraction": 0.049,
                "measured": "in the step"},
    }
    notes = render_notes(data)
    assert "WARNING: train +3% injected 1.76%, not 3%" in notes
    assert "+5% injected" not in notes
