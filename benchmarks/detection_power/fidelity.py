"""Timing fidelity: the fixture's GEMM TFLOP/s against triton's `do_bench` on the same shapes,
alternating in one process, so a clock that reads the GPU wrongly shows up as a difference."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.detection_power.bench import Bench, standalone_seconds
from benchmarks.detection_power.design import SEED
from benchmarks.detection_power.injections import random_matrix
from harness.measure.memory import release_cached_memory
from harness.workloads.gemm import GemmShape

# The fidelity target: the fixture's GEMM TFLOP/s within 2% of triton's do_bench median.
FIDELITY_LIMIT = 0.02

# Fixture/do_bench pairs per shape, the order swapped every round (fixture first, then do_bench
# first, ...): the median of four pairs keeps one burst of noise on a shared GPU from deciding
# the comparison, and neither clock always measures a GPU the other has just heated. With a
# fixed order and do_bench's own 100 ms, the 8192^3 GEMM read 701, 612 and 598 TFLOP/s under
# do_bench right after the fixture's 698, 688 and 678 (H200, 2026-11-21).
FIDELITY_ROUNDS = 4


def run_fidelity(bench: Bench) -> dict[str, Any]:
    """The fixture's GEMM TFLOP/s (median of `measure_time` with its policy) against triton's
    `do_bench(fn, return_mode="median")` on the same shapes, alternating, in this process.

    do_bench warms up and samples for as long as the fixture does (its `warmup` and `rep` in
    ms), so both see the GPU's clocks over the same stretch of sustained load."""
    if bench.device != "cuda":
        return {"skipped": "triton's do_bench times CUDA kernels only; run with --device cuda"}
    try:
        import triton
        import triton.testing
    except ImportError:
        return {"skipped": "triton is not installed (pip install triton), so there is no "
                           "do_bench to compare the fixture's clock with"}
    rows = []
    for shape in bench.sizes.fidelity_gemms:
        rows.append(compare_with_do_bench(bench, shape, triton.testing.do_bench))
        # The shape's operands died with the comparison; hand their memory back before the next.
        release_cached_memory()
    return {"limit": FIDELITY_LIMIT, "rounds": FIDELITY_ROUNDS,
            "triton": getattr(triton, "__version__", None), "rows": rows}


def compare_with_do_bench(bench: Bench, shape: GemmShape,
                          do_bench: Callable[..., float]) -> dict[str, Any]:
    """One shape's row: FIDELITY_ROUNDS fixture/do_bench pairs on the same random operands,
    the order swapped every round, and the medians' relative difference."""
    a = random_matrix(shape.m, shape.k, bench.sizes.dtype, bench.device)
    b = random_matrix(shape.k, shape.n, bench.sizes.dtype, bench.device, seed=SEED + 3)
    out = torch.empty(shape.m, shape.n, dtype=bench.sizes.dtype, device=bench.device)
    fixture_seconds: list[float] = []
    do_bench_seconds: list[float] = []

    def fn() -> None:
        torch.matmul(a, b, out=out)

    def fixture() -> None:
        fixture_seconds.append(standalone_seconds(bench, fn))

    def reference() -> None:
        milliseconds = do_bench(fn, warmup=bench.policy.warmup_seconds * 1e3,
                                rep=bench.policy.budget_seconds * 1e3, return_mode="median")
        do_bench_seconds.append(milliseconds / 1e3)

    for round_index in range(FIDELITY_ROUNDS):
        for measure in (fixture, reference) if round_index % 2 == 0 else (reference, fixture):
            measure()
    fixture_tflops = shape.flops / statistics.median(fixture_seconds) / 1e12
    do_bench_tflops = shape.flops / statistics.median(do_bench_seconds) / 1e12
    difference = fixture_tflops / do_bench_tflops - 1
    return {"gemm": dataclasses.asdict(shape), "fixture_seconds": fixture_seconds,
            "do_bench_seconds": do_bench_seconds, "fixture_tflops": fixture_tflops,
            "do_bench_tflops": do_bench_tflops, "relative_difference": difference,
            "within_limit": abs(difference) <= FIDELITY_LIMIT}
