"""The clock: seeded fake durations, policy validation, warmup, adaptive sampling, host timing."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.gate.results import Metric
from harness.measure.clocks import (
    QUEUED_HOST_SECONDS_PER_CALL,
    QUEUED_LEAD_BASE_SECONDS,
    CudaEventClock,
    HostClock,
    QueuedCudaEventClock,
    check_device,
    default_clock,
    queued_lead_seconds,
)
from harness.measure.sampling import (
    MIN_WARMUP_CALLS,
    L2Flush,
    TimingPolicy,
    measure_time,
    measure_time_detailed,
    memory_side_cache_bytes,
    relative_spread,
)
from harness.testing import FakeClock
from harness.theory.hardware import gpu_spec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def noop() -> None:
    pass


def durations(clock: FakeClock, count: int, iterations: int = 1) -> list[float]:
    return [clock.time(noop, iterations) for _ in range(count)]


# Policies for the fake clock: no warmup beyond MIN_WARMUP_CALLS, samples of one call.
def quick_policy(**changes: object) -> TimingPolicy:
    settings: dict[str, object] = {"warmup_seconds": 0.0, "budget_seconds": 1e9,
                                   "min_samples": 10, "max_samples": 50, "target_spread": 0.01,
                                   "min_sample_seconds": 1e-6}
    settings.update(changes)
    return TimingPolicy(**settings)  # type: ignore[arg-type]


# FakeClock


def test_fake_clock_same_seed_gives_same_durations() -> None:
    assert durations(FakeClock(7, 0.01, noise_cv=0.05), 20) == \
        durations(FakeClock(7, 0.01, noise_cv=0.05), 20)


def test_fake_clock_different_seeds_give_different_durations() -> None:
    assert durations(FakeClock(1, 0.01, noise_cv=0.05), 5) != \
        durations(FakeClock(2, 0.01, noise_cv=0.05), 5)


def test_fake_clock_slowdown_scales_every_duration() -> None:
    base = durations(FakeClock(3, 0.01, noise_cv=0.05), 20)
    slow = durations(FakeClock(3, 0.01, noise_cv=0.05, slowdown=1.1), 20)
    assert slow == pytest.approx([1.1 * d for d in base], rel=1e-12)


def test_fake_clock_without_noise_returns_iterations_times_base() -> None:
    clock = FakeClock(0, 0.25, noise_cv=0.0, slowdown=2.0)
    assert clock.time(noop, 3) == 3 * 0.25 * 2.0


def test_fake_clock_noise_has_the_requested_spread() -> None:
    samples = durations(FakeClock(11, 1.0, noise_cv=0.02), 2000)
    mean = sum(samples) / len(samples)
    sd = (sum((s - mean) ** 2 for s in samples) / (len(samples) - 1)) ** 0.5
    assert mean == pytest.approx(1.0, abs=0.003)  # 3 standard errors of the mean (0.02/sqrt(2000))
    assert sd == pytest.approx(0.02, rel=0.1)


def test_fake_clock_calls_fn_once_per_iteration() -> None:
    calls: list[int] = []
    clock = FakeClock(0, 0.01)
    clock.time(lambda: calls.append(1), 5)
    assert len(calls) == 5
    assert clock.calls == 5


def test_fake_clock_durations_stay_positive_under_large_noise() -> None:
    assert min(durations(FakeClock(5, 1.0, noise_cv=2.0), 500)) > 0


def test_fake_clock_now_is_the_sum_of_its_durations() -> None:
    clock = FakeClock(9, 0.01, noise_cv=0.1)
    total = sum(durations(clock, 10))
    assert clock.now() == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("kwargs, field", [
    ({"seed": 0, "base_seconds": 0.0}, "base_seconds"),
    ({"seed": 0, "base_seconds": -1.0}, "base_seconds"),
    ({"seed": 0, "base_seconds": 0.01, "noise_cv": -0.1}, "noise_cv"),
    ({"seed": 0, "base_seconds": 0.01, "slowdown": 0.0}, "slowdown"),
    ({"seed": 0.5, "base_seconds": 0.01}, "seed"),
])
def test_fake_clock_rejects_bad_arguments_by_name(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FakeClock(**kwargs)


def test_clocks_reject_non_positive_iterations() -> None:
    with pytest.raises(ValueError, match="iterations must be a positive integer, got 0"):
        FakeClock(0, 0.01).time(noop, 0)
    with pytest.raises(ValueError, match="iterations"):
        HostClock().time(noop, -1)


# TimingPolicy


def test_default_policy_is_valid_and_samples_for_about_a_second() -> None:
    policy = TimingPolicy()
    assert policy.min_samples <= policy.max_samples
    assert policy.budget_seconds == 1.0
    assert policy.flush_l2 is False


@pytest.mark.parametrize("changes, field", [
    ({"warmup_seconds": -0.1}, "warmup_seconds"),
    ({"warmup_seconds": float("nan")}, "warmup_seconds"),
    ({"budget_seconds": 0.0}, "budget_seconds"),
    ({"budget_seconds": float("inf")}, "budget_seconds"),
    ({"min_samples": 0}, "min_samples"),
    ({"min_samples": 2.5}, "min_samples"),
    ({"max_samples": True}, "max_samples"),
    ({"min_samples": 20, "max_samples": 10}, "max_samples"),
    ({"target_spread": -0.01}, "target_spread"),
    ({"flush_l2": "yes"}, "flush_l2"),
    ({"min_sample_seconds": 0.0}, "min_sample_seconds"),
])
def test_policy_rejects_bad_field_by_name(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"TimingPolicy.{field}"):
        TimingPolicy(**changes)


# measure_time with the fake clock


def test_steady_clock_stops_at_min_samples_once_spread_is_reached() -> None:
    clock = FakeClock(0, 0.01, noise_cv=0.0)
    timed = measure_time_detailed(noop, clock=clock, policy=quick_policy(min_samples=12),
                                  device="cpu")
    assert len(timed.samples) == 12
    assert timed.stopped_because == "target spread reached"
    assert timed.samples == [0.01] * 12
    assert timed.describe() == ("fake clock: 12 samples of 1 call(s) after 2 warmup call(s); "
                                "target spread reached (spread 0.00%)")


def test_noisy_clock_samples_until_max_samples() -> None:
    clock = FakeClock(1, 0.01, noise_cv=0.2)
    samples = measure_time(noop, clock=clock, policy=quick_policy(max_samples=37), device="cpu")
    assert len(samples) == 37


def test_sampling_stops_once_the_budget_of_fake_time_is_spent() -> None:
    clock = FakeClock(2, 0.01, noise_cv=0.2)
    policy = quick_policy(budget_seconds=0.3, min_samples=5, max_samples=10_000)
    timed = measure_time_detailed(noop, clock=clock, policy=policy, device="cpu")
    assert timed.stopped_because == "time budget spent"
    assert timed.iterations_per_sample == 1
    # The loop stops at the first sample that takes the fake time spent past the budget.
    assert sum(timed.samples[:-1]) < 0.3 <= sum(timed.samples)
    assert 5 <= len(timed.samples) < 10_000


def test_min_samples_win_over_a_spent_budget() -> None:
    clock = FakeClock(3, 0.5, noise_cv=0.2)
    policy = quick_policy(budget_seconds=0.1, min_samples=10)
    assert len(measure_time(noop, clock=clock, policy=policy, device="cpu")) == 10


def test_warmup_runs_fn_for_the_warmup_time_before_sampling() -> None:
    calls: list[int] = []
    clock = FakeClock(0, 0.25, noise_cv=0.0)
    policy = quick_policy(warmup_seconds=1.0, min_samples=3)
    timed = measure_time_detailed(lambda: calls.append(1), clock=clock, policy=policy,
                                  device="cpu")
    assert timed.warmup_calls == 4  # 4 x 0.25 s of fake time reach the 1 s warmup
    assert len(calls) == timed.warmup_calls + len(timed.samples)


def test_warmup_runs_at_least_two_calls_when_its_time_is_zero() -> None:
    clock = FakeClock(0, 10.0, noise_cv=0.0)
    timed = measure_time_detailed(noop, clock=clock, policy=quick_policy(min_samples=1),
                                  device="cpu")
    assert timed.warmup_calls == MIN_WARMUP_CALLS


def test_fast_function_is_batched_into_samples_of_min_sample_seconds() -> None:
    # Powers of two keep the arithmetic exact: 2**-10 s per sample / 2**-17 s per call = 128.
    clock = FakeClock(0, 2.0 ** -17, noise_cv=0.0)
    policy = quick_policy(min_sample_seconds=2.0 ** -10, min_samples=4)
    timed = measure_time_detailed(noop, clock=clock, policy=policy, device="cpu")
    assert timed.iterations_per_sample == 128
    assert timed.samples == [2.0 ** -17] * 4  # per call, not per sample


def test_flush_precedes_every_sample_and_each_sample_is_one_call() -> None:
    events: list[str] = []
    clock = FakeClock(0, 2.0 ** -17, noise_cv=0.0)
    policy = quick_policy(flush_l2=True, min_sample_seconds=2.0 ** -10, min_samples=5)
    timed = measure_time_detailed(lambda: events.append("call"), clock=clock, policy=policy,
                                  device="cpu", flush=lambda: events.append("flush"))
    assert timed.iterations_per_sample == 1
    sampling = events[timed.warmup_calls:]
    assert sampling == ["flush", "call"] * 5


def test_a_flush_without_flush_l2_in_the_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="policy.flush_l2 is False"):
        measure_time(noop, clock=FakeClock(0, 0.01), policy=quick_policy(), device="cpu",
                     flush=noop)


def test_flush_l2_without_a_cuda_device_names_the_device() -> None:
    with pytest.raises(ValueError, match="flush_l2=True.*device='cpu'"):
        measure_time(noop, clock=FakeClock(0, 0.01), policy=quick_policy(flush_l2=True),
                     device="cpu")


def test_injected_time_source_drives_the_budget() -> None:
    ticks = iter(range(1_000_000))
    policy = quick_policy(budget_seconds=20.0, min_samples=3, max_samples=1000)
    samples = measure_time(noop, clock=FakeClock(4, 0.01, noise_cv=0.3), policy=policy,
                           device="cpu", now=lambda: float(next(ticks)))
    # Each call of `now` advances one "second": the budget of 20 is spent after ~20 samples.
    assert 15 <= len(samples) <= 25


class ZeroClock:
    name = "zero"

    def time(self, fn: object, iterations: int) -> float:
        return 0.0


def test_a_clock_returning_zero_is_an_error_naming_the_clock() -> None:
    with pytest.raises(ValueError, match="clock 'zero' returned 0.0 s"):
        measure_time(noop, clock=ZeroClock(), policy=quick_policy(), device="cpu")


def test_measure_time_rejects_bad_arguments() -> None:
    clock = FakeClock(0, 0.01)
    with pytest.raises(ValueError, match="fn must be a callable"):
        measure_time(42, clock=clock, policy=quick_policy(), device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy must be a TimingPolicy"):
        measure_time(noop, clock=clock, policy={"min_samples": 3}, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock must have a time"):
        measure_time(noop, clock=object(), policy=quick_policy(), device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:<index>'"):
        measure_time(noop, clock=clock, policy=quick_policy(), device="gpu")


@given(st.lists(st.floats(min_value=1e-6, max_value=1e3), min_size=1, max_size=50))
def test_relative_spread_matches_metric_spread(samples: list[float]) -> None:
    metric = Metric(name="t", unit="s", better="lower", samples=tuple(samples))
    assert relative_spread(samples) == pytest.approx(metric.spread, rel=1e-9, abs=1e-12)


# Real clocks on the CPU


def test_host_clock_times_a_sleep_at_least_as_long_as_it_sleeps() -> None:
    assert HostClock().time(lambda: time.sleep(0.005), 2) >= 0.01


def test_host_clock_measures_a_cpu_matmul_with_positive_samples() -> None:
    a = torch.randn(128, 128)
    b = torch.randn(128, 128)
    policy = TimingPolicy(warmup_seconds=0.01, budget_seconds=0.05, min_samples=5,
                          max_samples=50)
    samples = measure_time(lambda: a @ b, clock=HostClock(), policy=policy, device="cpu")
    assert 5 <= len(samples) <= 50
    assert all(s > 0 for s in samples)
    # A 128^3 matmul is 4.2 MFLOP: between 1 us (4 TFLOP/s) and 50 ms on any CPU.
    assert 1e-6 < min(samples) < 0.05


def test_default_clock_on_cpu_is_the_host_clock() -> None:
    assert isinstance(default_clock("cpu"), HostClock)


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("cuda", "cuda"),
                                              ("cuda:1", "cuda")])
def test_check_device_accepts_cpu_and_cuda(device: str, expected: str) -> None:
    assert check_device(device) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "", None, "mps"])
def test_check_device_rejects_other_devices_by_value(device: object) -> None:
    with pytest.raises(ValueError, match="device must be"):
        check_device(device)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_clock_without_cuda_says_so() -> None:
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        default_clock("cuda")
    with pytest.raises(ValueError, match="needs CUDA"):
        L2Flush("cuda")


def test_l2_flush_on_cpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device, got device='cpu'"):
        L2Flush("cpu")


def test_queued_lead_leaves_the_host_time_for_every_call() -> None:
    assert queued_lead_seconds(1) == pytest.approx(QUEUED_LEAD_BASE_SECONDS
                                                   + QUEUED_HOST_SECONDS_PER_CALL)
    assert queued_lead_seconds(100) - queued_lead_seconds(1) == pytest.approx(
        99 * QUEUED_HOST_SECONDS_PER_CALL)
    with pytest.raises(ValueError, match="iterations must be a positive integer, got 0"):
        queued_lead_seconds(0)


def test_queued_clock_needs_a_cuda_device() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device, got device='cpu'"):
        QueuedCudaEventClock("cpu")


# On a GPU machine


def _host_bound_call(host_seconds: float) -> None:
    """A tiny kernel issued after `host_seconds` of host work: the host bounds its rate."""
    deadline = time.perf_counter() + host_seconds
    while time.perf_counter() < deadline:
        pass
    torch.cuda._sleep(1000)


@needs_cuda
def test_queued_clock_times_the_device_not_the_host_launching_it() -> None:
    calls = 20
    # 100 us of host work per call: 2 ms to enqueue 20 calls, inside the lead of 4 ms.
    plain = min(CudaEventClock().time(lambda: _host_bound_call(100e-6), calls)
                for _ in range(3))
    queued_clock = QueuedCudaEventClock()
    queued = min(queued_clock.time(lambda: _host_bound_call(100e-6), calls) for _ in range(3))
    assert plain >= calls * 100e-6
    assert queued < 0.25 * plain
    assert queued_clock.host_bound_samples == 0
    assert queued_clock.host_bound_note() == ""


@needs_cuda
def test_queued_clock_counts_samples_the_host_outlasted() -> None:
    clock = QueuedCudaEventClock()
    # 400 us of host work per call outlasts the 150 us per call the lead allows.
    clock.time(lambda: _host_bound_call(400e-6), 20)
    assert clock.host_bound_samples == 1
    assert clock.host_bound_note().startswith("1 of 1 samples (warmup included) outlasted")


@needs_cuda
def test_cuda_event_clock_scales_with_device_work() -> None:
    clock = CudaEventClock("cuda")
    # torch.cuda._sleep spins the GPU for a number of clock cycles: device time, no host time.
    short = min(clock.time(lambda: torch.cuda._sleep(1_000_000), 1) for _ in range(5))
    long = min(clock.time(lambda: torch.cuda._sleep(1_000_000), 4) for _ in range(5))
    assert long == pytest.approx(4 * short, rel=0.1)


def test_flush_size_includes_a_memory_side_cache_of_known_gpus() -> None:
    assert memory_side_cache_bytes("AMD Instinct MI300X") == 256 * 1024 * 1024
    assert memory_side_cache_bytes("NVIDIA H100 80GB HBM3") == 0
    assert memory_side_cache_bytes("Some Future GPU") == 0


@needs_cuda
def test_l2_flush_writes_twice_the_l2_size() -> None:
    flush = L2Flush("cuda")
    properties = torch.cuda.get_device_properties(0)
    side_cache = gpu_spec(properties.name).memory_side_cache_bytes
    assert flush.nbytes == 2 * (properties.L2_cache_size + side_cache)
    flush()
    torch.cuda.synchronize()


@needs_cuda
def test_flushed_samples_of_a_cache_sized_kernel_are_slower_than_warm_ones() -> None:
    # A 16 MB copy fits in L2 (40-50 MB on A100/H100): from a warm cache it runs faster.
    src = torch.randn(4 * 1024 * 1024, device="cuda")
    dst = torch.empty_like(src)
    policy = TimingPolicy(warmup_seconds=0.02, budget_seconds=0.2, min_samples=20,
                          max_samples=100)
    warm = measure_time(lambda: dst.copy_(src), clock=CudaEventClock(), policy=policy,
                        device="cuda")
    cold = measure_time(lambda: dst.copy_(src), clock=CudaEventClock(),
                        policy=TimingPolicy(warmup_seconds=0.02, budget_seconds=0.2,
                                            min_samples=20, max_samples=100, flush_l2=True),
                        device="cuda")
    assert sorted(cold)[len(cold) // 2] > sorted(warm)[len(warm) // 2]
