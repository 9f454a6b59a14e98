"""Clocks: how long `iterations` back-to-back calls of a function take, device work included.

Device work is timed with CUDA events (`CudaEventClock`), or with CUDA events around calls queued
behind a GPU-side wait (`QueuedCudaEventClock`) when the host is slower to issue them than the
device is to run them; CPU work with the host clock. The clock is swappable: everything above it
(`harness.measure.sampling`) sees only the `Clock` protocol, and `harness.testing.FakeClock`
stands in for it in tests without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol

import torch

from harness.checks import require_bool, require_positive_int

DeviceType = Literal["cpu", "cuda"]


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


def require_cuda_device(device: str, what: str, cpu_hint: str) -> torch.device:
    """`device` as a torch.device when it is a CUDA device this machine has; a ValueError saying
    that `what` needs CUDA (and, for "cpu", `cpu_hint`) otherwise."""
    if check_device(device) != "cuda":
        raise ValueError(f"{what} needs a CUDA device, got device={device!r}; {cpu_hint}")
    if not torch.cuda.is_available():
        raise ValueError(f"{what} on device={device!r} needs CUDA, but "
                         f"torch.cuda.is_available() is False on this machine")
    return torch.device(device)


def cuda_initialized() -> bool:
    """Whether CUDA is available and has been initialised in this process (device work may be
    queued)."""
    # torch leaves is_initialized unannotated.
    return torch.cuda.is_available() and bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def timing_event() -> torch.cuda.Event:
    """A CUDA event that records time, for `elapsed_seconds`."""
    # torch leaves Event's constructor unannotated.
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


def elapsed_seconds(start: torch.cuda.Event, end: torch.cuda.Event) -> float:
    """Seconds between two recorded, completed timing events (torch reports milliseconds)."""
    return float(start.elapsed_time(end)) / 1e3


def _spin_gpu(device: torch.device, cycles: int) -> None:
    """Keep the GPU of `device` busy for `cycles` clock cycles (torch's test kernel)."""
    with torch.cuda.device(device):
        torch.cuda._sleep(cycles)  # type: ignore[no-untyped-call]  # unannotated in torch


class HostClock:
    """`time.perf_counter` around the calls, synchronising CUDA before and after when it is in use.

    `synchronize=None` decides per call: synchronise when CUDA has been initialised in this
    process, so that queued device work is neither counted before nor missed after the calls.
    """

    name = "host"

    def __init__(self, synchronize: bool | None = None) -> None:
        self.synchronize = None if synchronize is None else require_bool("synchronize",
                                                                          synchronize)

    def _should_synchronize(self) -> bool:
        if self.synchronize is not None:
            return self.synchronize
        return cuda_initialized()

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds of wall time for `iterations` calls of `fn`, queued device work included."""
        require_positive_int("iterations", iterations)
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
        require_positive_int("iterations", iterations)
        stream = torch.cuda.current_stream(self.device)
        start, end = timing_event(), timing_event()
        start.record(stream)
        for _ in range(iterations):
            fn()
        end.record(stream)
        end.synchronize()
        return elapsed_seconds(start, end)


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
    calls = require_positive_int("iterations", iterations)
    return QUEUED_LEAD_BASE_SECONDS + calls * QUEUED_HOST_SECONDS_PER_CALL


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
        require_positive_int("iterations", iterations)
        stream = torch.cuda.current_stream(self.device)
        if self.cycles_per_second is None:
            self.cycles_per_second = self._spin(QUEUED_FIRST_CYCLES, stream)
        cycles = max(1, round(self.lead_seconds(iterations) * self.cycles_per_second))
        spin_start, start, end = timing_event(), timing_event(), timing_event()
        host_start = time.perf_counter()
        spin_start.record(stream)
        _spin_gpu(self.device, cycles)
        start.record(stream)
        for _ in range(iterations):
            fn()
        end.record(stream)
        enqueue_seconds = time.perf_counter() - host_start
        end.synchronize()
        spin_seconds = elapsed_seconds(spin_start, start)
        self.cycles_per_second = cycles / spin_seconds
        self.samples += 1
        if enqueue_seconds > spin_seconds:
            self.host_bound_samples += 1
        return elapsed_seconds(start, end)

    def lead_seconds(self, iterations: int) -> float:
        """Seconds the GPU waits before `iterations` calls: spent on every sample, outside the
        time it returns (`harness.distributed.group.LockstepClock` counts it towards warmup and
        budget)."""
        return queued_lead_seconds(iterations)

    def _spin(self, cycles: int, stream: torch.cuda.Stream) -> float:
        """GPU cycles per second of a spin of `cycles`, timed on its own."""
        before, after = timing_event(), timing_event()
        before.record(stream)
        _spin_gpu(self.device, cycles)
        after.record(stream)
        after.synchronize()
        return cycles / elapsed_seconds(before, after)

    def host_bound_note(self) -> str:
        """How many samples the host may have bounded, for a metric's note; "" when none."""
        if not self.host_bound_samples:
            return ""
        return (f"{self.host_bound_samples} of {self.samples} samples (warmup included) "
                f"outlasted the lead and may include host time")


def default_clock(device: str) -> Clock:
    """The right clock for a device: CUDA events on "cuda", `HostClock` on "cpu"."""
    if check_device(device) == "cuda":
        return CudaEventClock(device)
    return HostClock()
