"""The A/B phase: how often the plugin's A/B confirmation (the paired verdict of alternating base
and head runs on one machine, `harness.gate.ab.run_ab`) flags a regression, per condition.

The metric is the GEMM phase's bf16 GEMM TFLOP/s with the same calibrated extra GEMMs. One
repetition of a condition is one A/B comparison: base runs the unchanged GEMM, head the GEMM
with the condition's extra GEMM (none for "unchanged"), a run being one measurement as a child
run of the plugin takes it, with the shorter design.AB_POLICY. It counts as flagged when its
final paired outcome is a regression. Repetitions run round-robin over the conditions, so a
drift of the GPU hits every condition alike. Unlike the plugin's A/B, base and head alternate in
this one process: per-process effects (cuBLAS's choice of kernel, the allocator's layout) are
not in these counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

from benchmarks.detection_power.ab_rounds import HEAD, ABSettings, MeasureRun, ab_repetition
from benchmarks.detection_power.analysis import NODE_ID
from benchmarks.detection_power.bench import Bench, record_reference, round_robin_order
from benchmarks.detection_power.design import AB_PHASE, AB_TIME_BUDGET_SECONDS
from benchmarks.detection_power.injections import Injection
from benchmarks.detection_power.phases import (
    GemmWorkload,
    gemm_injections,
    gemm_workload,
    gemm_workload_json,
)
from harness.gate.paired import MIN_ROUNDS
from harness.gate.results import Metric, metric_id
from harness.gate.run_options import DEFAULT_AB_BUDGET_SECONDS, DEFAULT_AB_ROUNDS
from harness.gate.tolerance import choose_tolerance
from harness.gate.verdict import DEFAULT_ALPHA
from harness.measure.gpu_state import measure_between_snapshots

# The judged metric: the GEMM phase's throughput.
JUDGED_METRIC = "gemm_tflops"


@contextlib.contextmanager
def collector_frozen() -> Iterator[None]:
    """Keep the garbage collector to objects created inside the block (`gc.freeze`).
    `measure_time` runs gc.collect() before every measurement, outside the timed calls: about
    0.1 s in a process holding torch, as long as one A/B run itself. Frozen, it walks only what
    was created since; the measured samples are the same."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def head_or_base(bench: Bench, workload: GemmWorkload,
                 injection: Injection | None) -> MeasureRun:
    """One run of a side: the GEMM's metrics with the A/B policy and the fixture's throttle
    retry; head carries `injection`, base never does."""
    runs_bench = dataclasses.replace(bench, policy=bench.ab_policy)

    def run(side: str, round_index: int) -> Metric:
        extra = injection if side == HEAD else None
        metrics, _ = measure_between_snapshots(lambda: workload.measure(runs_bench, extra),
                                               bench.monitor)
        return metrics[JUDGED_METRIC]

    return run


def run_ab_phase(bench: Bench) -> dict[str, Any]:
    """Baseline and calibration as in the GEMM phase, then `bench.repeats` A/B repetitions of
    every condition, round-robin, each judged with the plugin's defaults: DEFAULT_AB_ROUNDS
    rounds at most, its A/B budget, DEFAULT_ALPHA and the metric kind's default tolerance."""
    start = time.perf_counter()
    workload = gemm_workload(bench)
    warmup, baseline = record_reference(bench, lambda injection: workload.measure(bench,
                                                                                  injection))
    base_seconds = statistics.median(baseline["metrics"]["gemm"]["samples"])
    injections, injected = gemm_injections(bench, workload, base_seconds, AB_PHASE)
    template = Metric.from_json(JUDGED_METRIC, baseline["metrics"][JUDGED_METRIC],
                                f"{AB_PHASE} baseline")
    settings = ABSettings(metric_id=metric_id(NODE_ID, JUDGED_METRIC),
                          tolerance=choose_tolerance(template.kind).value, alpha=DEFAULT_ALPHA,
                          max_rounds=DEFAULT_AB_ROUNDS, budget_seconds=DEFAULT_AB_BUDGET_SECONDS)
    names = [c.name for c in bench.conditions]
    by_name = {c.name: c for c in bench.conditions}
    order = round_robin_order(names, bench.repeats)
    run_seconds = bench.ab_policy.warmup_seconds + bench.ab_policy.budget_seconds
    bench.log(f"{AB_PHASE}: {len(order)} A/B comparisons of {MIN_ROUNDS}-{settings.max_rounds} "
              f"rounds, runs of at most {run_seconds:.2f} s of warmup and sampling each (less once "
              f"{bench.ab_policy.max_samples} samples are in)")
    repetitions: list[dict[str, Any]] = []
    with collector_frozen():
        for index, (repetition, name) in enumerate(order):
            condition = by_name[name]
            summary = ab_repetition(head_or_base(bench, workload, injections.get(name)),
                                    settings)
            repetitions.append({
                "index": index, "repetition": repetition, "condition": name,
                "fraction": condition.fraction,
                "injected_fraction": injected[name]["injected_fraction"] if name in injected
                else 0.0,
                "elapsed_s": time.perf_counter() - bench.started, **summary})
            if index + 1 == len(order) or order[index + 1][0] != repetition:
                bench.log(f"{AB_PHASE}: repetition {repetition + 1}/{bench.repeats}: "
                          + ", ".join(_describe(r) for r in repetitions[-len(names):]))
    return {
        "judged_metric": JUDGED_METRIC,
        "metric": {"name": template.name, "unit": template.unit, "better": template.better,
                   "kind": template.kind},
        "workload": gemm_workload_json(bench),
        "warmup": warmup,
        "baseline": baseline,
        "injections": injected,
        "policy": dataclasses.asdict(bench.ab_policy),
        "settings": settings.to_json(),
        "min_rounds": MIN_ROUNDS,
        "order": [[repetition, name] for repetition, name in order],
        "repetitions": repetitions,
        "time_budget_seconds": AB_TIME_BUDGET_SECONDS,
        "seconds": time.perf_counter() - start,
    }


def _describe(record: dict[str, Any]) -> str:
    """"+3% regression after 4 rounds (-2.91%)" for the progress log."""
    change = "" if record["change"] is None else f" ({record['change']:+.2%})"
    return f"{record['condition']} {record['outcome']} after {record['rounds']} rounds{change}"
