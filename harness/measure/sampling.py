"""Sampling: how long a function takes per call, measured the way GPU work must be measured.

A warmup that runs by time calibrates how many calls make one sample; sampling then continues,
over a number of samples that adapts to the noise, until the spread is small enough or the time
budget is spent (`TimingPolicy`). Any `harness.measure.clocks.Clock` times the samples, so the
rules here are tested with `harness.testing.FakeClock`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from harness.checks import (
    require_bool,
    require_non_negative,
    require_positive,
    require_positive_int,
)
from harness.measure.clocks import Clock, check_device, require_cuda_device

# At least two warmup calls whatever the warmup time: the first call of a function often pays
# one-time costs (CUDA context, cuBLAS heuristics, lazy module init, allocator growth), so the
# per-call estimate used to calibrate the samples must come from a later call.
MIN_WARMUP_CALLS = 2

# L2 size assumed when the device does not report one: 50 MB is the L2 of an H100, the largest
# of the common training GPUs before Blackwell; the flush buffer is twice this (see `L2Flush`).
FALLBACK_L2_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how often to measure; the defaults suit one train step or kernel on a GPU."""

    # 0.5 s of warmup lets cuBLAS pick its algorithms, the caching allocator reach its steady
    # state and the GPU leave its idle clocks; at least MIN_WARMUP_CALLS calls run regardless.
    # 0.1 s was too short on an H100 (2026-11-21): a 0.5 ms GEMM kept getting faster for another
    # ~0.1 s of samples (0.60 -> 0.51 ms) and a 90 ms train step's first samples ran 5-50% slow.
    warmup_seconds: float = 0.5
    # About 1 s of sampling per measurement: a nightly suite of a hundred measurements then
    # samples for under two minutes. min_samples wins over the budget when one call is slower.
    budget_seconds: float = 1.0
    # With 20 samples per side a rank test (Mann-Whitney U) detects a shift of about one
    # standard deviation at alpha = 0.01 most of the time (10 a side needs about 1.5); the
    # quartiles (IQR) of fewer samples say little about noise.
    min_samples: int = 20
    # Beyond ~200 samples the median's confidence interval barely narrows (it shrinks as
    # 1/sqrt(n)) while the baseline files, which keep every sample, keep growing.
    max_samples: int = 200
    # Stop early once IQR/median is at most this; 0 (the default) never stops early. Early
    # stopping at 1% made a fast GEMM's measurement 20 samples (30 ms) long, one moment of a
    # GPU whose power-capped clock wanders: the medians of 20 unchanged measurements spanned
    # 3.6% (benchmarks/detection_power on an H200, 2026-11-21). The whole budget averages
    # over that wander.
    target_spread: float = 0.0
    # Off by default: a train step's working set is far larger than L2. Turn it on for kernels
    # whose inputs fit in L2, otherwise every sample after the first runs from a warm cache.
    flush_l2: bool = False
    # Each sample batches back-to-back calls until it lasts about 1 ms: CUDA events resolve
    # about 0.5 us and a launch costs 5-10 us, so a 1 ms sample keeps both under 1% of it.
    min_sample_seconds: float = 1e-3

    def __post_init__(self) -> None:
        require_non_negative("TimingPolicy.warmup_seconds", self.warmup_seconds)
        require_positive("TimingPolicy.budget_seconds", self.budget_seconds)
        require_non_negative("TimingPolicy.target_spread (IQR/median)", self.target_spread)
        require_positive("TimingPolicy.min_sample_seconds", self.min_sample_seconds)
        require_positive_int("TimingPolicy.min_samples", self.min_samples)
        require_positive_int("TimingPolicy.max_samples", self.max_samples)
        if self.max_samples < self.min_samples:
            raise ValueError(f"TimingPolicy.max_samples={self.max_samples} must be at least "
                             f"min_samples={self.min_samples}")
        require_bool("TimingPolicy.flush_l2", self.flush_l2)


class L2Flush:
    """Evicts the GPU's L2 cache by writing a buffer twice its size; call it between samples.

    Twice the size, because L2 replacement is not strict LRU and lines are spread over several
    partitions: writing exactly the cache size leaves some of the old lines in place. A
    memory-side cache below L2 (AMD Infinity Cache, `GPUSpec.memory_side_cache_bytes`) is
    added to the size for GPUs in the spec table.
    """

    def __init__(self, device: str = "cuda") -> None:
        torch_device = require_cuda_device(device, "an L2 flush",
                                           "set TimingPolicy(flush_l2=False) for CPU "
                                           "measurements")
        properties = torch.cuda.get_device_properties(torch_device)
        l2_bytes = int(getattr(properties, "L2_cache_size", 0) or 0)
        self.l2_bytes = l2_bytes if l2_bytes > 0 else FALLBACK_L2_BYTES
        self.side_cache_bytes = memory_side_cache_bytes(properties.name)
        self.nbytes = 2 * (self.l2_bytes + self.side_cache_bytes)
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def memory_side_cache_bytes(gpu_name: str) -> int:
    """Bytes of a cache below L2 that a flush must also evict; 0 for GPUs not in the table."""
    from harness.theory.hardware import gpu_spec

    try:
        return gpu_spec(gpu_name).memory_side_cache_bytes
    except ValueError:  # unknown GPU: only what the device itself reports can be flushed
        return 0


def relative_spread(samples: list[float]) -> float:
    """IQR / |median| of the samples, the same definition as `Metric.spread` (0 for one sample)."""
    if len(samples) < 2:
        return 0.0
    median = statistics.median(samples)
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return (q[2] - q[0]) / abs(median) if median else 0.0


@dataclass(frozen=True)
class TimedSamples:
    """Per-call seconds of each sample and how they were taken (for notes in reports)."""

    samples: list[float]
    iterations_per_sample: int
    warmup_calls: int
    stopped_because: str  # "target spread reached", "time budget spent" or "max samples reached"
    clock_name: str = "unknown"

    def describe(self) -> str:
        """One line for a Metric note: clock, samples, calls per sample, why sampling stopped."""
        return (f"{self.clock_name} clock: {len(self.samples)} samples of "
                f"{self.iterations_per_sample} call(s) after {self.warmup_calls} warmup call(s); "
                f"{self.stopped_because} (spread {relative_spread(self.samples):.2%})")


def measure_time_detailed(fn: Callable[[], object], *, clock: Clock, policy: TimingPolicy,
                          device: str, now: Callable[[], float] | None = None,
                          flush: Callable[[], None] | None = None) -> TimedSamples:
    """`measure_time` with the calibration and the reason sampling stopped; see there."""
    if not callable(fn):
        raise ValueError(f"fn must be a callable taking no arguments, got {fn!r}")
    if not isinstance(policy, TimingPolicy):
        raise ValueError(f"policy must be a TimingPolicy, got {policy!r}")
    if not callable(getattr(clock, "time", None)):
        raise ValueError(f"clock must have a time(fn, iterations) method (HostClock, "
                         f"CudaEventClock, FakeClock), got {clock!r}")
    device_type = check_device(device)
    if now is None:
        now = getattr(clock, "now", time.perf_counter)
    if flush is not None and not policy.flush_l2:
        raise ValueError("a flush was given but policy.flush_l2 is False; use "
                         "TimingPolicy(flush_l2=True) to flush between samples")
    if policy.flush_l2 and flush is None:
        if device_type != "cuda":
            raise ValueError(f"TimingPolicy(flush_l2=True) flushes the GPU's L2 and needs a "
                             f"CUDA device, got device={device!r}")
        flush = L2Flush(device)

    def timed(iterations: int) -> float:
        seconds = clock.time(fn, iterations)
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"clock {getattr(clock, 'name', clock)!r} returned {seconds!r} s for "
                             f"{iterations} call(s); a duration must be positive and finite")
        return float(seconds)

    with _garbage_collection_paused():
        return _warm_up_and_sample(timed, now, policy, flush, clock)


@contextlib.contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Collect once, then keep Python's cyclic garbage collector out of the timed calls.

    A collection in the middle of a train step stalls the host for milliseconds and shows up as
    a slow outlier sample (source 001, "garbage collection"); reference counting still frees
    tensors as usual.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _warm_up_and_sample(timed: Callable[[int], float], now: Callable[[], float],
                        policy: TimingPolicy,
                        flush: Callable[[], None] | None, clock: Clock) -> TimedSamples:
    # Warmup by time; the batch grows until it lasts min_sample_seconds, which calibrates it.
    iterations = 1
    warmup_calls = 0
    per_call = 0.0
    warmup_start = now()
    while warmup_calls < MIN_WARMUP_CALLS or now() - warmup_start < policy.warmup_seconds:
        seconds = timed(iterations)
        warmup_calls += iterations
        per_call = seconds / iterations
        if seconds < policy.min_sample_seconds:
            iterations *= 2

    # With a flush, each sample is a single call that starts from a cold L2.
    if flush is not None:
        iterations = 1
    else:
        iterations = max(1, math.ceil(policy.min_sample_seconds / per_call))

    samples: list[float] = []
    stopped_because = "max samples reached"
    sampling_start = now()
    while len(samples) < policy.max_samples:
        if flush is not None:
            flush()  # queued before the clock starts: outside the timed region
        samples.append(timed(iterations) / iterations)
        if len(samples) < policy.min_samples:
            continue
        if relative_spread(samples) <= policy.target_spread:
            stopped_because = "target spread reached"
            break
        if now() - sampling_start >= policy.budget_seconds:
            stopped_because = "time budget spent"
            break
    return TimedSamples(samples=samples, iterations_per_sample=iterations,
                        warmup_calls=warmup_calls, stopped_because=stopped_because,
                        clock_name=str(getattr(clock, "name", type(clock).__name__)))


def measure_time(fn: Callable[[], object], *, clock: Clock, policy: TimingPolicy, device: str,
                 now: Callable[[], float] | None = None,
                 flush: Callable[[], None] | None = None) -> list[float]:
    """Seconds per call of `fn`, one value per sample, measured after a warmup.

    Warmup runs `fn` for `policy.warmup_seconds` (at least MIN_WARMUP_CALLS calls) and
    calibrates how many back-to-back calls make one sample last `policy.min_sample_seconds`.
    Sampling continues until IQR/median drops to `policy.target_spread` or the time budget is
    spent, never with fewer than `min_samples` or more than `max_samples` samples. With
    `policy.flush_l2` (CUDA only) each sample is one call preceded by an L2 flush.

    `fn` must do real work on realistic data: never time kernels on zeros (sparsity-aware
    hardware and power management make them faster than real inputs); use random tensors.
    `now` is the monotonic time source for warmup and budget: by default the clock's own
    `now()` when it has one (FakeClock's synthetic time), else `time.perf_counter`. `flush`
    replaces the default `L2Flush` of the device when `policy.flush_l2` is set.
    """
    return measure_time_detailed(fn, clock=clock, policy=policy, device=device, now=now,
                                 flush=flush).samples
