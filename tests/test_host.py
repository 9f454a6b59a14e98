"""The host record: CPU ranges, NUMA affinity against the GPU's, calibration differences."""

from __future__ import annotations

import pytest

from harness.gate.host import calibration_differences, describe_differences
from harness.measure import host


def test_cpu_ranges_read_like_taskset() -> None:
    assert host.cpu_ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert host.cpu_ranges([3]) == "3"
    assert host.cpu_ranges([]) == ""


def test_a_process_outside_its_gpus_numa_node_is_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "process_affinity", lambda: set(range(0, 64)))
    monkeypatch.setattr(host, "gpu_cpu_affinity", lambda index: set(range(32, 64)))
    record = host.describe_host(0)
    assert record["numa_ok"] is False
    assert record["affinity"] == "0-63" and record["gpu_numa_cpus"] == "32-63"
    warning = host.numa_warning(record)
    assert warning is not None and "taskset -c 32-63" in warning


def test_a_pinned_process_is_not_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "process_affinity", lambda: set(range(32, 48)))
    monkeypatch.setattr(host, "gpu_cpu_affinity", lambda index: set(range(32, 64)))
    record = host.describe_host(0)
    assert record["numa_ok"] is True and host.numa_warning(record) is None


def test_without_nvml_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "gpu_cpu_affinity", lambda index: None)
    record = host.describe_host(0)
    assert record["numa_ok"] is None and host.numa_warning(record) is None
    assert record["cpu_count"] >= 1 and record["cpu_model"]


def test_calibration_on_cpu_measures_the_python_loop() -> None:
    result = host.calibrate_host("cpu")
    assert set(result) == {"dispatch_us"} and result["dispatch_us"] > 0


def test_calibration_differences_are_signed_as_slowdowns() -> None:
    base = {"host": {"calibration": {"launch_us": 5.0, "dispatch_us": 30.0,
                                     "pageable_h2d_gbps": 10.0}}}
    new = {"host": {"calibration": {"launch_us": 7.5, "dispatch_us": 30.3,
                                    "pageable_h2d_gbps": 8.0}}}
    moved = calibration_differences(base, new, threshold=0.1)
    assert moved == pytest.approx({"launch_us": 0.5, "pageable_h2d_gbps": 0.2})
    assert describe_differences(moved) == "launch_us 50% slower, pageable_h2d_gbps 20% slower"


def test_environments_without_a_host_record_compare_as_equal() -> None:
    assert calibration_differences({}, {"host": {"calibration": {"launch_us": 9.0}}}) == {}
