"""Taking the measurements of a phase: the bench every phase shares, one measurement as a JSON
record, the baseline recording, and the repetitions of every condition in round-robin order."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.detection_power.design import Condition, Sizes
from benchmarks.detection_power.document import utc_now
from benchmarks.detection_power.injections import Injection
from harness.checks import require_positive_int
from harness.gate.results import Metric
from harness.measure.clocks import Clock
from harness.measure.gpu_state import GpuStateMonitor, measure_between_snapshots
from harness.measure.sampling import TimingPolicy, measure_time


@dataclass
class Bench:
    """What every phase needs: device, the fixture's clock and policy, the GPU monitor; the
    A/B phase's runs measure with `ab_policy` (design.AB_POLICY)."""

    device: str
    clock: Clock
    policy: TimingPolicy
    ab_policy: TimingPolicy
    monitor: GpuStateMonitor
    sizes: Sizes
    conditions: tuple[Condition, ...]
    repeats: int
    started: float
    log: Callable[[str], None]


def round_robin_order(conditions: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, condition) for `repeats` rounds of every condition; each round starts one
    condition later than the previous, so no condition always follows the same one."""
    names = list(conditions)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"conditions must be distinct names, at least one, got {conditions!r}")
    require_positive_int("repeats", repeats)
    order: list[tuple[int, str]] = []
    for round_index in range(repeats):
        shift = round_index % len(names)
        order.extend((round_index, name) for name in names[shift:] + names[:shift])
    return order


def gemm_metrics(fn: Callable[[], object], flops: float, bench: Bench) -> dict[str, Metric]:
    """`gemm` (s) and `gemm_tflops` exactly as the fixture's `perf.time(fn, name="gemm",
    flops=flops)` builds them: `measure_time` with the session's clock and policy."""
    seconds = measure_time(fn, clock=bench.clock, policy=bench.policy, device=bench.device)
    return {
        "gemm": Metric(name="gemm", unit="s", better="lower", kind="time",
                       samples=tuple(seconds), note=f"{bench.clock.name} clock"),
        "gemm_tflops": Metric(name="gemm_tflops", unit="TFLOP/s", better="higher",
                              kind="throughput",
                              samples=tuple(flops / s / 1e12 for s in seconds),
                              note=f"{flops:.6g} FLOP per call / time"),
    }


def standalone_seconds(bench: Bench, fn: Callable[[], object]) -> float:
    """Median seconds per call of `fn` alone, measured with the bench's clock and policy."""
    return statistics.median(measure_time(fn, clock=bench.clock, policy=bench.policy,
                                          device=bench.device))


def repetition_record(*, index: int, round_index: int, condition: Condition,
                      injected_fraction: float, metrics: dict[str, Metric],
                      gpu_state: dict[str, Any], timestamp: str, elapsed_seconds: float,
                      measurement_seconds: float) -> dict[str, Any]:
    """One measurement as JSON: its condition, when it ran, every metric with raw samples."""
    return {
        "index": index,
        "round": round_index,
        "condition": condition.name,
        "fraction": condition.fraction,
        "injected_fraction": injected_fraction,
        "timestamp": timestamp,
        "elapsed_s": elapsed_seconds,
        "measurement_s": measurement_seconds,
        "metrics": {name: m.to_json() for name, m in metrics.items()},
        "gpu_state": gpu_state,
    }


def record_one(bench: Bench, measure: Callable[[Injection | None], dict[str, Metric]],
               injection: Injection | None, *, condition: Condition, injected_fraction: float,
               index: int, round_index: int) -> dict[str, Any]:
    """Take one measurement under `condition` and return its record."""
    timestamp = utc_now()
    start = time.perf_counter()
    metrics, gpu_state = measure_between_snapshots(lambda: measure(injection), bench.monitor)
    end = time.perf_counter()
    return repetition_record(index=index, round_index=round_index, condition=condition,
                             injected_fraction=injected_fraction, metrics=metrics,
                             gpu_state=gpu_state, timestamp=timestamp,
                             elapsed_seconds=end - bench.started,
                             measurement_seconds=end - start)


def record_reference(bench: Bench, measure: Callable[[Injection | None], dict[str, Metric]]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A throwaway measurement, then the baseline recording (one measurement, as
    --perf-update-baselines takes it).

    The first measurement of a workload in a process pays one-time costs that the fixture's
    0.1 s warmup does not always cover (thread pools, cuBLAS heuristics, clocks ramping up from
    idle). In the nightly suite the baseline run and the checking run pay them alike, so here
    the baseline must not be the only measurement that does; the throwaway one is kept in the
    JSON (as "warmup") to show how large the cold-start effect is.
    """
    unchanged = bench.conditions[0]
    warmup = record_one(bench, measure, None, condition=unchanged, injected_fraction=0.0,
                        index=-2, round_index=-1)
    baseline = record_one(bench, measure, None, condition=unchanged, injected_fraction=0.0,
                          index=-1, round_index=-1)
    return warmup, baseline


def run_repetitions(bench: Bench, phase: str,
                    measure: Callable[[Injection | None], dict[str, Metric]],
                    injections: dict[str, Injection], injected: dict[str, dict[str, Any]],
                    judged_metric: str, baseline_record: dict[str, Any]
                    ) -> tuple[list[tuple[int, str]], list[dict[str, Any]]]:
    """Every condition `bench.repeats` times, interleaved round-robin; a line per round with
    `judged_metric` against the phase's baseline record. Returns the order and the records."""
    baseline = Metric.from_json(judged_metric, baseline_record["metrics"][judged_metric],
                                f"{phase} baseline")
    by_name = {c.name: c for c in bench.conditions}
    order = round_robin_order([c.name for c in bench.conditions], bench.repeats)
    records: list[dict[str, Any]] = []
    for index, (round_index, name) in enumerate(order):
        injection = injections.get(name)
        fraction = injected[name]["injected_fraction"] if name in injected else 0.0
        records.append(record_one(bench, measure, injection, condition=by_name[name],
                                  injected_fraction=fraction, index=index,
                                  round_index=round_index))
        if index + 1 == len(order) or order[index + 1][0] != round_index:
            changes = []
            for record in records[-len(bench.conditions):]:
                median = statistics.median(record["metrics"][judged_metric]["samples"])
                changes.append(f"{record['condition']} {median / baseline.median - 1:+.2%}")
            bench.log(f"{phase}: round {round_index + 1}/{bench.repeats}, {judged_metric} vs "
                      f"baseline: {', '.join(changes)}")
    return order, records


def phase_result(judged_metric: str, workload: dict[str, Any], warmup: dict[str, Any],
                 baseline: dict[str, Any], injected: dict[str, dict[str, Any]],
                 order: list[tuple[int, str]], repetitions: list[dict[str, Any]],
                 seconds: float) -> dict[str, Any]:
    """A finished phase as JSON."""
    return {
        "judged_metric": judged_metric,
        "workload": workload,
        "warmup": warmup,
        "baseline": baseline,
        "injections": injected,
        "order": [[round_index, name] for round_index, name in order],
        "repetitions": repetitions,
        "seconds": seconds,
    }
