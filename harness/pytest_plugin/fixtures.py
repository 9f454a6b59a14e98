"""The plugin's fixtures: `perf`, and what it measures with (`perf_device`, `perf_clock`,
`perf_gpu_monitor`; a conftest.py overrides the last two, e.g. with `harness.testing.FakeClock`).

This module is imported when the plugin loads, in every project that has perf-harness installed,
so it imports neither torch nor the measuring code: `harness.pytest_plugin.fixture` (the `Perf`
object) and the clocks and monitors are imported when a test first requests a fixture.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from harness.pytest_plugin.perf_warnings import PerfWarning
from harness.pytest_plugin.run import RUN_KEY, PerfRun

if TYPE_CHECKING:
    from harness.gate.session import PerfSession
    from harness.measure.clocks import Clock
    from harness.measure.gpu_state import GpuStateMonitor
    from harness.pytest_plugin.fixture import Perf


def _started(request: pytest.FixtureRequest) -> tuple[PerfRun, PerfSession]:
    """The run of this config and its perf session, started now if no collected test asked for
    `perf` by name (a test that calls `request.getfixturevalue("perf")`)."""
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        raise RuntimeError("the perf run was not set up: harness.pytest_plugin is imported but "
                           "its pytest_configure did not run")
    return run, run.start(request.session)


@pytest.fixture(scope="session")
def perf_device(request: pytest.FixtureRequest) -> str:
    """The device measured tests run on: "cuda" or "cpu" (--perf-device, resolved)."""
    _, session = _started(request)
    return session.options.device


@pytest.fixture
def perf_clock(perf_device: str) -> Clock:
    """The clock of `perf` measurements; override it in a conftest.py (e.g. a FakeClock)."""
    from harness.measure.clocks import default_clock

    return default_clock(perf_device)


@pytest.fixture
def perf_gpu_monitor(perf_device: str) -> GpuStateMonitor:
    """The GPU monitor of `perf` measurements (NVML on CUDA, none on CPU); overridable."""
    import pynvml

    from harness.measure.gpu_state import NullGpuMonitor, default_gpu_monitor

    try:
        return default_gpu_monitor(perf_device)
    except (pynvml.NVMLError, ValueError) as exc:
        warnings.warn(PerfWarning(f"GPU state is not monitored ({exc}): throttling cannot be "
                                  f"detected in this run"), stacklevel=2)
        return NullGpuMonitor()


@pytest.fixture
def perf(request: pytest.FixtureRequest, perf_clock: Clock,
         perf_gpu_monitor: GpuStateMonitor) -> Perf:
    """Measure in a test: perf.time, perf.train_step, perf.dataloader, perf.metric (and
    perf.collective under torchrun, where every clock reads the slowest rank's time)."""
    from harness.distributed.group import LockstepClock
    from harness.pytest_plugin.fixture import Perf

    run, session = _started(request)
    assert run.policy is not None  # set by run.start()
    clock = perf_clock
    if run.distributed is not None:
        clock = LockstepClock(perf_clock, run.distributed)
    return Perf(session=session, nodeid=request.node.nodeid, clock=clock,
                monitor=perf_gpu_monitor, policy=run.policy,
                user_properties=request.node.user_properties, distributed=run.distributed,
                add_finalizer=request.addfinalizer)
