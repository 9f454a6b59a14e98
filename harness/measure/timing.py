"""The clock: how long a function takes, measured the way GPU work must be measured.

Device work is timed with CUDA events (or with a host clock after synchronising), after a warmup
that runs by time, over many samples whose count adapts to the noise. The clock is swappable:
`FakeClock` gives seeded synthetic durations so that everything above it can be tested without a
GPU.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

DeviceType = Literal["cpu", "cuda"]

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
    # 3.6% (benchmarks/detection_power.py on an H200, 2026-11-21). The whole budget averages
    # over that wander.
    target_spread: float = 0.0
    # Off by default: a train step's working set is far larger than L2. Turn it on for kernels
    # whose inputs fit in L2, otherwise every sample after the first runs from a warm cache.
    flush_l2: bool = False
    # Each sample batches back-to-back calls until it lasts about 1 ms: CUDA events resolve
    # about 0.5 us and a launch costs 5-10 us, so a 1 ms sample keeps both under 1% of it.
    min_sample_seconds: float = 1e-3

    def __post_init__(self) -> None:
        _check_finite_number("warmup_seconds", self.warmup_seconds, minimum=0.0,
                             valid="a number of seconds >= 0, such as 0.1")
        _check_finite_number("budget_seconds", self.budget_seconds, minimum=0.0, strict=True,
                             valid="a number of seconds > 0, such as 1.0")
        _check_finite_number("target_spread", self.target_spread, minimum=0.0,
                             valid="a relative spread (IQR/median) >= 0, such as 0.01 for 1%")
        _check_finite_number("min_sample_seconds", self.min_sample_seconds, minimum=0.0,
                             strict=True, valid="a number of seconds > 0, such as 0.001")
        for name in ("min_samples", "max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TimingPolicy.{name} must be a positive integer, got {value!r}")
        if self.max_samples < self.min_samples:
            raise ValueError(f"TimingPolicy.max_samples={self.max_samples} must be at least "
                             f"min_samples={self.min_samples}")
        if not isinstance(self.flush_l2, bool):
            raise ValueError(f"TimingPolicy.flush_l2 must be True or False, got {self.flush_l2!r}")


def _check_finite_number(name: str, value: object, *, minimum: float, valid: str,
                         strict: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value > minimum if strict else value >= minimum))
    if not ok:
        raise ValueError(f"TimingPolicy.{name} must be {valid}; got {value!r}")


class Clock(Protocol):
    """Something that times `iterations` back-to-back calls of `fn`, device work included."""

    name: str

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds taken by `iterations` back-to-back calls of `fn`."""
        ...


def check_device(device: str) -> DeviceType:
    """The device type of a device string ("cpu", "cuda", "cuda:1"); ValueError for others."""
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind == "cpu" and not index:
            return "cpu"
        if kind == "cuda" and (not index or index.isdigit()):
            return "cuda"
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    return iterations


class HostClock:
    """`time.perf_counter` around the calls, synchronising CUDA before and after when it is in use.

    `synchronize=None` decides per call: synchronise when CUDA has been initialised in this
    process, so that queued device work is neither counted before nor missed after the calls.
    """

    name = "host"

    def __init__(self, synchronize: bool | None = None) -> None:
        if synchronize is not None and not isinstance(synchronize, bool):
            raise ValueError(f"synchronize must be True, False or None, got {synchronize!r}")
        self.synchronize = synchronize

    def _should_synchronize(self) -> bool:
        if self.synchronize is not None:
            return self.synchronize
        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds of wall time for `iterations` calls of `fn`, queued device work included."""
        _check_iterations(iterations)
        synchronize = self._should_synchronize()
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        if synchronize:
            torch.cuda.synchronize()
        return time.perf_counter() - start


class CudaEventClock:
    """CUDA events recorded on the current stream around the calls; the device's own time.

    No synchronisation before the start event: when an L2 flush (or any other work) is queued
    ahead of it, the host enqueues `fn`'s kernels while the GPU is still busy, so the launch
    latency of the first kernel stays out of the measurement.
    """

    name = "cuda-events"

    def __init__(self, device: str = "cuda") -> None:
        if check_device(device) != "cuda":
            raise ValueError(f"CudaEventClock needs a CUDA device, got device={device!r}")
        if not torch.cuda.is_available():
            raise ValueError(f"CudaEventClock(device={device!r}) needs CUDA, but "
                             f"torch.cuda.is_available() is False on this machine; use "
                             f"HostClock (device='cpu') or run on a GPU machine")
        self.device = torch.device(device)

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds between two CUDA events around `iterations` calls of `fn`."""
        _check_iterations(iterations)
        stream = torch.cuda.current_stream(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(iterations):
            fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


# Host time per call that a queued lead allows for. Issuing one NCCL collective from Python took
# 27-75 us on 2-H200 hosts (2026-11-21: 8 KiB to 1 MiB collectives, whose device time is a few
# microseconds, read 27 us per call on one host and 75 us on another); 150 us leaves 2x.
QUEUED_HOST_SECONDS_PER_CALL = 150e-6
# Fixed part of the lead: the first launch after a barrier, and the ranks' barrier exits, which
# differ by tens of microseconds; 1 ms covers both many times over.
QUEUED_LEAD_BASE_SECONDS = 1e-3
# GPU cycles of the spin that measures the clock rate before the first lead: 1 ms at an H200's
# 1980 MHz.
QUEUED_FIRST_CYCLES = 2_000_000


def queued_lead_seconds(iterations: int) -> float:
    """How long `QueuedCudaEventClock` makes the GPU wait before the first of `iterations`
    calls: long enough for the host to enqueue them all."""
    return QUEUED_LEAD_BASE_SECONDS + _check_iterations(iterations) * QUEUED_HOST_SECONDS_PER_CALL


class QueuedCudaEventClock(CudaEventClock):
    """CUDA events around calls queued behind a GPU-side wait, so the device runs them back to
    back: the time is the device's alone, not the rate at which the host launches them.

    For work that costs the host more per call than the device: a small NCCL collective takes a
    few microseconds on NVLink but tens to issue from Python, so `CudaEventClock` times the host's
    speed, which differs from one machine of a kind to the next by 2-3x. Before the start event
    the GPU spins (`torch.cuda._sleep`) for QUEUED_LEAD_BASE_SECONDS plus
    QUEUED_HOST_SECONDS_PER_CALL per call while the host enqueues the calls. The spin is measured
    on the GPU every time and its cycles rescaled to the clock rate seen, so it lasts as long as
    meant at any clock. `host_bound_samples` counts the samples whose enqueueing outlasted the
    spin: those may include host time, and the metric's note says so.
    """

    name = "cuda-events, queued"

    def __init__(self, device: str = "cuda") -> None:
        super().__init__(device)
        self.cycles_per_second: float | None = None
        self.samples = 0
        self.host_bound_samples = 0

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds between two CUDA events around `iterations` calls queued behind the lead."""
        _check_iterations(iterations)
        stream = torch.cuda.current_stream(self.device)
        if self.cycles_per_second is None:
            self.cycles_per_second = self._spin(QUEUED_FIRST_CYCLES, stream)
        cycles = max(1, round(self.lead_seconds(iterations) * self.cycles_per_second))
        spin_start = torch.cuda.Event(enable_timing=True)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        host_start = time.perf_counter()
        spin_start.record(stream)
        with torch.cuda.device(self.device):
            torch.cuda._sleep(cycles)
        start.record(stream)
        for _ in range(iterations):
            fn()
        end.record(stream)
        enqueue_seconds = time.perf_counter() - host_start
        end.synchronize()
        spin_seconds = spin_start.elapsed_time(start) / 1e3
        self.cycles_per_second = cycles / spin_seconds
        self.samples += 1
        if enqueue_seconds > spin_seconds:
            self.host_bound_samples += 1
        return start.elapsed_time(end) / 1e3

    def lead_seconds(self, iterations: int) -> float:
        """Seconds the GPU waits before `iterations` calls: spent on every sample, outside the
        time it returns (`harness.distributed.group.LockstepClock` counts it towards warmup and
        budget)."""
        return queued_lead_seconds(iterations)

    def _spin(self, cycles: int, stream: torch.cuda.Stream) -> float:
        """GPU cycles per second of a spin of `cycles`, timed on its own."""
        before = torch.cuda.Event(enable_timing=True)
        after = torch.cuda.Event(enable_timing=True)
        before.record(stream)
        with torch.cuda.device(self.device):
            torch.cuda._sleep(cycles)
        after.record(stream)
        after.synchronize()
        return cycles / (before.elapsed_time(after) / 1e3)

    def host_bound_note(self) -> str:
        """How many samples the host may have bounded, for a metric's note; "" when none."""
        if not self.host_bound_samples:
            return ""
        return (f"{self.host_bound_samples} of {self.samples} samples (warmup included) "
                f"outlasted the lead and may include host time")


class FakeClock:
    """Seeded synthetic durations for tests without a GPU; `fn` is still called every time.

    Each `time(fn, n)` returns `n * base_seconds * slowdown * (1 + e)` with e drawn from a
    normal distribution N(0, noise_cv) by `random.Random(seed)`; draws with 1 + e <= 0 are
    redrawn (a truncated normal), so durations stay positive at any noise level. The same seed
    gives the same durations, and a `slowdown` scales every one of them exactly. `now()` is the
    synthetic time spent so far, so that warmup and budget run on the fake clock too.
    """

    name = "fake"

    def __init__(self, seed: int, base_seconds: float, noise_cv: float = 0.01,
                 slowdown: float = 1.0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"FakeClock seed must be an integer, got {seed!r}")
        for name, value, minimum in (("base_seconds", base_seconds, 0.0),
                                     ("slowdown", slowdown, 0.0)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= minimum):
                raise ValueError(f"FakeClock {name} must be a positive finite number, "
                                 f"got {value!r}")
        if (isinstance(noise_cv, bool) or not isinstance(noise_cv, (int, float))
                or not math.isfinite(noise_cv) or noise_cv < 0):
            raise ValueError(f"FakeClock noise_cv must be a finite number >= 0 (0.01 is 1% "
                             f"noise), got {noise_cv!r}")
        self.seed = seed
        self.base_seconds = float(base_seconds)
        self.noise_cv = float(noise_cv)
        self.slowdown = float(slowdown)
        self.calls = 0
        self.elapsed = 0.0
        self._random = random.Random(seed)

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Call `fn` `iterations` times and return a synthetic duration for them."""
        _check_iterations(iterations)
        for _ in range(iterations):
            fn()
        self.calls += iterations
        factor = 1.0 + self._random.gauss(0.0, self.noise_cv)
        while factor <= 0.0:
            factor = 1.0 + self._random.gauss(0.0, self.noise_cv)
        seconds = iterations * self.base_seconds * self.slowdown * factor
        self.elapsed += seconds
        return seconds

    def now(self) -> float:
        """Synthetic seconds spent in `time` so far: a monotonic clock for warmup and budget."""
        return self.elapsed


def default_clock(device: str) -> Clock:
    """The right clock for a device: CUDA events on "cuda", `HostClock` on "cpu"."""
    if check_device(device) == "cuda":
        return CudaEventClock(device)
    return HostClock()


class L2Flush:
    """Evicts the GPU's L2 cache by writing a buffer twice its size; call it between samples.

    Twice the size, because L2 replacement is not strict LRU and lines are spread over several
    partitions: writing exactly the cache size leaves some of the old lines in place. A
    memory-side cache below L2 (AMD Infinity Cache, `GPUSpec.memory_side_cache_bytes`) is
    added to the size for GPUs in the spec table.
    """

    def __init__(self, device: str = "cuda") -> None:
        if check_device(device) != "cuda":
            raise ValueError(f"an L2 flush needs a CUDA device, got device={device!r}; set "
                             f"TimingPolicy(flush_l2=False) for CPU measurements")
        if not torch.cuda.is_available():
            raise ValueError(f"an L2 flush on device={device!r} needs CUDA, but "
                             f"torch.cuda.is_available() is False on this machine")
        properties = torch.cuda.get_device_properties(torch.device(device))
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
