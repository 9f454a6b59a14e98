"""The kernel table of a profiled pass: device time as the union of intervals per step window,
the idle share, and the top rows covering most of the device time (scripted timelines)."""

from __future__ import annotations

import pytest

from harness.gate.profile import HOST_BOUND_IDLE_FRACTION, KernelRow
from harness.measure.kernels import DeviceInterval, summarize, top_rows, with_wall_time


def test_overlapping_kernels_count_once_and_gaps_between_kernels_are_idle() -> None:
    # Step 1: a GEMM with an overlapping add on another stream. Step 2: two GEMMs with a gap in
    # which the GPU waited for the host's next launch.
    timeline = [DeviceInterval("gemm", 2, 10), DeviceInterval("add", 5, 12),
                DeviceInterval("gemm", 22, 27), DeviceInterval("gemm", 33, 38)]
    steps = summarize(timeline, [(0, 13), (20, 40)])
    assert steps.device_seconds == pytest.approx((10e-6, 10e-6))
    profile = steps.profile
    assert profile.device_seconds == pytest.approx(10e-6)
    # Kernel spans 2..12 and 22..38: 26 us, of which 20 busy. The fence around them is not idle.
    assert profile.idle_fraction == pytest.approx(1 - 20 / 26)
    assert profile.host_bound
    gemm = next(r for r in profile.kernels if r.name == "gemm")
    assert gemm.calls_per_step == 1.5 and gemm.seconds_per_step == pytest.approx(9e-6)


def test_a_busy_window_is_gpu_bound() -> None:
    timeline = [DeviceInterval("gemm", 10 * i, 10 * i + 10) for i in range(5)]
    profile = summarize(timeline, [(0, 50)]).profile
    assert profile.idle_fraction == 0 and not profile.host_bound
    assert HOST_BOUND_IDLE_FRACTION > 0


def test_work_outside_the_windows_is_left_out() -> None:
    # An L2 flush (memset) ran between the fenced steps: it is not the step's work.
    timeline = [DeviceInterval("memset", 0, 50), DeviceInterval("gemm", 60, 70),
                DeviceInterval("memset", 80, 130), DeviceInterval("gemm", 140, 150)]
    steps = summarize(timeline, [(58, 71), (138, 151)])
    assert [r.name for r in steps.profile.kernels] == ["gemm"]
    assert steps.device_seconds == pytest.approx((10e-6, 10e-6))
    assert steps.profile.idle_fraction == 0  # a lone kernel per step: nothing waited


def test_a_window_without_device_work_is_all_idle() -> None:
    steps = summarize([], [(0, 10), (20, 30)], host_issue_seconds=0.01)
    assert steps.profile.idle_fraction == 1.0 and steps.profile.kernels == ()
    assert steps.device_seconds == (0.0, 0.0)
    assert steps.profile.host_issue_seconds == 0.01


def test_top_rows_cover_the_share_and_sum_the_rest() -> None:
    rows = [KernelRow("big", 1, 90.0), KernelRow("mid", 2, 6.0)] + [
        KernelRow(f"tiny{i}", 1, 0.5) for i in range(8)]
    table = top_rows(rows, coverage=0.95)
    assert [r.name for r in table] == ["big", "mid", "(other 8 kernels)"]
    assert table[-1].seconds_per_step == pytest.approx(4.0)
    assert table[-1].calls_per_step == 8
    assert sum(r.seconds_per_step for r in table) == pytest.approx(100.0)


def test_top_rows_never_exceed_the_row_limit() -> None:
    rows = [KernelRow(f"k{i}", 1, 1.0) for i in range(100)]
    table = top_rows(rows, coverage=1.0, max_rows=10)
    assert len(table) == 11 and table[-1].name == "(other 90 kernels)"


def test_a_pass_needs_at_least_one_window() -> None:
    with pytest.raises(ValueError, match="number of windows must be a positive integer"):
        summarize([], [])


def test_the_idle_share_is_taken_against_the_timed_wall_time() -> None:
    # The profiled pass saw big gaps (the profiler slowed the host), but the timed step took
    # 12.5 us for 10 us of device work: the host's share is 20%, not the profiled 23%.
    timeline = [DeviceInterval("gemm", 2, 10), DeviceInterval("add", 5, 12),
                DeviceInterval("gemm", 22, 27), DeviceInterval("gemm", 33, 38)]
    profiled = with_wall_time(summarize(timeline, [(0, 13), (20, 40)]), 12.5e-6)
    assert profiled.profile.idle_fraction == pytest.approx(0.2)
    assert profiled.device_seconds == pytest.approx((10e-6, 10e-6))
    faster_than_device = with_wall_time(summarize(timeline, [(0, 13), (20, 40)]), 5e-6)
    assert faster_than_device.profile.idle_fraction == 0.0
    with pytest.raises(ValueError, match="wall_seconds must be a positive"):
        with_wall_time(profiled, 0.0)
