"""The environment record and the GPU-state checks that keep throttled measurements out of
verdicts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.measure import gpu_state
from harness.measure.environment import cpu_fingerprint, git_state, run_environment
from harness.measure.gpu_state import (
    DISTORTING_THROTTLE_REASONS,
    NVML_THROTTLE_REASONS,
    NullGpuMonitor,
    decode_throttle_reasons,
    throttle_problem,
)
from harness.testing import FakeGpuMonitor


def snapshot(*reasons: str, sm_clock_mhz: int = 1980) -> dict:
    return dict(FakeGpuMonitor.HEALTHY, sm_clock_mhz=sm_clock_mhz, throttle_reasons=list(reasons))


def test_reason_names_follow_the_nvml_constants() -> None:
    import pynvml

    for name, bit in NVML_THROTTLE_REASONS.items():
        assert getattr(pynvml, f"nvmlClocksThrottleReason{name}") == bit
    assert DISTORTING_THROTTLE_REASONS <= set(NVML_THROTTLE_REASONS)


def test_bit_mask_decodes_to_reason_names_in_bit_order() -> None:
    mask = NVML_THROTTLE_REASONS["HwThermalSlowdown"] | NVML_THROTTLE_REASONS["GpuIdle"]
    assert decode_throttle_reasons(mask) == ["GpuIdle", "HwThermalSlowdown"]
    assert decode_throttle_reasons(0) == []


@pytest.mark.parametrize("mask", [-1, 1.5, True, "8"])
def test_bad_bit_mask_is_a_value_error_naming_it(mask: object) -> None:
    with pytest.raises(ValueError, match="mask"):
        decode_throttle_reasons(mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("reason", sorted(DISTORTING_THROTTLE_REASONS))
def test_thermal_power_brake_and_hw_slowdown_make_a_measurement_unreliable(reason: str) -> None:
    problem = throttle_problem(snapshot(), snapshot(reason, sm_clock_mhz=1410))
    assert problem is not None
    assert reason in problem
    assert "1980 -> 1410 MHz" in problem


@pytest.mark.parametrize("reason", ["GpuIdle", "ApplicationsClocksSetting", "SwPowerCap",
                                    "SyncBoost", "DisplayClockSetting"])
def test_idle_settings_and_power_cap_do_not_count_as_throttling(reason: str) -> None:
    assert throttle_problem(snapshot(reason), snapshot(reason)) is None


def test_throttling_already_present_before_the_measurement_counts() -> None:
    problem = throttle_problem(snapshot("SwThermalSlowdown"), snapshot())
    assert problem is not None and "SwThermalSlowdown" in problem


def test_cpu_runs_with_empty_snapshots_are_never_throttled() -> None:
    monitor = NullGpuMonitor()
    assert throttle_problem(monitor.snapshot(), monitor.snapshot()) is None


def test_malformed_snapshot_is_a_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"after\['throttle_reasons'\]"):
        throttle_problem(snapshot(), {"throttle_reasons": "HwSlowdown"})
    with pytest.raises(ValueError, match="before must be a GPU snapshot"):
        throttle_problem(None, snapshot())  # type: ignore[arg-type]


def test_fake_monitor_throttles_only_its_first_snapshots() -> None:
    monitor = FakeGpuMonitor(throttle_reasons=["HwThermalSlowdown"], throttled_snapshots=2)
    first, second, third = monitor.snapshot(), monitor.snapshot(), monitor.snapshot()
    assert first["throttle_reasons"] == second["throttle_reasons"] == ["HwThermalSlowdown"]
    assert first["sm_clock_mhz"] < first["max_sm_clock_mhz"]
    assert third["throttle_reasons"] == []
    assert throttle_problem(first, second) is not None
    assert throttle_problem(third, monitor.snapshot()) is None


def test_fake_monitor_without_a_limit_throttles_forever() -> None:
    monitor = FakeGpuMonitor(throttle_reasons=["HwPowerBrakeSlowdown"])
    assert all(monitor.snapshot()["throttle_reasons"] == ["HwPowerBrakeSlowdown"]
               for _ in range(10))


def test_fake_monitor_rejects_unknown_reasons_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="HwThermalSlowdown"):
        FakeGpuMonitor(throttle_reasons=["too_hot"])
    with pytest.raises(ValueError, match="throttled_snapshots"):
        FakeGpuMonitor(throttle_reasons=["HwSlowdown"], throttled_snapshots=-1)


def test_default_monitor_of_a_cpu_run_reports_nothing() -> None:
    assert gpu_state.default_gpu_monitor("cpu").snapshot() == {}
    with pytest.raises(ValueError, match="device must be one of cuda, cpu"):
        gpu_state.default_gpu_monitor("tpu")


def _git(directory: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True)


def test_git_state_reports_commit_and_dirty_tracked_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "a")
    commit, dirty = git_state(tmp_path)
    assert commit is not None and len(commit) == 40
    assert dirty is False
    (tmp_path / "untracked.json").write_text("{}")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (commit, True)


def test_git_state_outside_a_repository_is_unknown_not_an_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_state(tmp_path) == (None, None)


def test_cpu_run_environment_has_the_cpu_fingerprint_and_the_versions(tmp_path: Path) -> None:
    import platform

    import torch

    env = run_environment("cpu", repo_dir=tmp_path)
    assert env["fingerprint"] == cpu_fingerprint()  # "cpu-<model>"
    assert env["fingerprint"].startswith("cpu")
    assert env["device"] == "cpu"
    assert env["torch"] == torch.__version__
    assert env["python"] == platform.python_version()
    for key in ("gpu_name", "gpu_count", "driver", "cuda", "hostname", "git_commit",
                "git_dirty"):
        assert key in env


def test_run_environment_rejects_an_unresolved_device() -> None:
    with pytest.raises(ValueError, match="device must be one of cuda, cpu, got 'auto'"):
        run_environment("auto")


def test_snapshot_description_names_clock_heat_power_and_reasons() -> None:
    text = gpu_state.describe_snapshot(snapshot("HwSlowdown", sm_clock_mhz=1410))
    assert text == "SM 1410/1980 MHz, 60 C, 500.0 W, throttle: HwSlowdown"
    assert gpu_state.describe_snapshot({}) == "no GPU state (not monitored)"
