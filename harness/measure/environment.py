"""What the numbers were measured on: the run's environment and the GPU's state around a measurement.

A verdict is only as good as the comparison under it, so every run records the software and the
hardware it ran on (`run_environment`), and every measurement records the GPU's SM clock,
temperature, power and throttle reasons before and after (`GpuMonitor.snapshot`). A measurement
taken while the GPU slowed itself down (`throttle_problem`) is retried, then marked unreliable:
never called a regression.

Throttle reasons are NVML's "clocks event reasons", named here after the suffix of pynvml's
`nvmlClocksThrottleReason<Name>` constants. They are sampled at the start and at the end of a
measurement; a throttle that starts and ends in between shows up only in the samples' spread.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pynvml

# Every clocks-event reason NVML reports, by the suffix of its pynvml constant
# (nvmlClocksThrottleReason<Name>); the bit values come from nvml.h through pynvml.
NVML_THROTTLE_REASONS: dict[str, int] = {
    name: getattr(pynvml, f"nvmlClocksThrottleReason{name}")
    for name in ("GpuIdle", "ApplicationsClocksSetting", "SwPowerCap", "HwSlowdown",
                 "SyncBoost", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown",
                 "DisplayClockSetting", "BoardLimit", "Reliability")
    if hasattr(pynvml, f"nvmlClocksThrottleReason{name}")
}

# The reasons that make a measurement unreliable: the GPU cut its clocks for a cause outside the
# workload, so a slower number says nothing about the code.
#   HwSlowdown            hardware protection (over-temperature, power brake, bad power supply)
#   SwThermalSlowdown     the driver lowers clocks to keep the GPU or memory under its max temp
#   HwThermalSlowdown     the hardware does the same, harder
#   HwPowerBrakeSlowdown  an external power-brake signal (e.g. the rack's power supply)
# Not counted: GpuIdle (idle between measurements), ApplicationsClocksSetting and
# DisplayClockSetting (clocks an administrator set), SyncBoost (clocks synchronised across GPUs),
# BoardLimit and Reliability (fixed board limits), and SwPowerCap: a dense GEMM on an H100 or A100
# runs at its board power limit by design, the baseline was recorded under the same cap, so it is
# part of what is measured; counting it would mark every heavy measurement unreliable.
DISTORTING_THROTTLE_REASONS: frozenset[str] = frozenset(
    {"HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown"})

# Seconds to wait for `git`: it answers in milliseconds; a hung network filesystem must not hang
# the test session.
GIT_TIMEOUT_SECONDS = 5.0

DEVICES: tuple[str, ...] = ("cuda", "cpu")


class GpuStateMonitor(Protocol):
    """Anything that reports the GPU's state; the `perf_gpu_monitor` fixture returns one."""

    def snapshot(self) -> dict[str, Any]:
        """The GPU's state now: see `GpuMonitor.snapshot` for the keys; {} when not known."""
        ...


def decode_throttle_reasons(mask: int) -> list[str]:
    """The names of the reasons set in an NVML clocks-event bit mask, in bit order."""
    if isinstance(mask, bool) or not isinstance(mask, int) or mask < 0:
        raise ValueError(f"mask must be a non-negative integer bit mask, got {mask!r}")
    return [name for name, bit in sorted(NVML_THROTTLE_REASONS.items(), key=lambda kv: kv[1])
            if mask & bit]


def _nvml_or_none(read: Callable[[], Any]) -> Any:
    """One NVML reading, or None where this GPU or driver does not support it."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


def _text(value: Any) -> Any:
    """NVML strings are bytes in older pynvml releases."""
    return value.decode() if isinstance(value, bytes) else value


def nvml_handle(cuda_index: int) -> Any:
    """The NVML handle of CUDA device `cuda_index`, matched by UUID: CUDA_VISIBLE_DEVICES
    renumbers the devices torch sees, NVML always numbers every GPU of the host."""
    import torch

    pynvml.nvmlInit()
    uuid = str(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", "") or "")
    if uuid:
        bare = uuid.removeprefix("GPU-").removeprefix("MIG-")
        for candidate in (f"GPU-{bare}", f"MIG-{bare}", uuid):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except pynvml.NVMLError:
                continue
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        raise ValueError(f"cannot find CUDA device {cuda_index} (UUID {uuid or 'unknown'}) in "
                         f"NVML, and with CUDA_VISIBLE_DEVICES="
                         f"{os.environ['CUDA_VISIBLE_DEVICES']!r} its NVML index is unknown")
    return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)


class GpuMonitor:
    """Reads one GPU's clocks, temperature, power and throttle reasons through NVML."""

    def __init__(self, cuda_index: int = 0) -> None:
        if isinstance(cuda_index, bool) or not isinstance(cuda_index, int) or cuda_index < 0:
            raise ValueError(f"cuda_index must be a non-negative integer, got {cuda_index!r}")
        self.cuda_index = cuda_index
        self._handle = nvml_handle(cuda_index)

    def snapshot(self) -> dict[str, Any]:
        """sm_clock_mhz, max_sm_clock_mhz, temperature_c, power_w (None where unsupported) and
        throttle_reasons (names, see NVML_THROTTLE_REASONS)."""
        handle = self._handle
        reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons",
                             pynvml.nvmlDeviceGetCurrentClocksThrottleReasons)
        mask = _nvml_or_none(lambda: reasons_fn(handle))
        milliwatts = _nvml_or_none(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        return {
            "sm_clock_mhz": _nvml_or_none(
                lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "max_sm_clock_mhz": _nvml_or_none(
                lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
            "temperature_c": _nvml_or_none(
                lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
            "power_w": None if milliwatts is None else milliwatts / 1000.0,
            "throttle_reasons": [] if mask is None else decode_throttle_reasons(int(mask)),
        }


class NullGpuMonitor:
    """The monitor of a CPU run: there is no GPU state to report."""

    def snapshot(self) -> dict[str, Any]:
        """Always {}: nothing is known, so nothing is ever called throttled."""
        return {}


class FakeGpuMonitor:
    """A scripted GPU for tests without one: its first `throttled_snapshots` snapshots report
    `throttle_reasons` (all of them when None), later ones a healthy GPU.

    A measurement takes a snapshot before and one after, so `throttled_snapshots=2` throttles the
    first attempt only (the retry is clean) and `throttled_snapshots=4` both attempts.
    """

    # A healthy H100 SXM under load: 1980 MHz is its max SM clock; 60 C and 500 W are typical
    # of a dense GEMM (nvidia-smi on a DGX H100).
    HEALTHY: dict[str, Any] = {"sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980,
                               "temperature_c": 60, "power_w": 500.0, "throttle_reasons": []}

    def __init__(self, *, throttle_reasons: Sequence[str] = (),
                 throttled_snapshots: int | None = None) -> None:
        unknown = [r for r in throttle_reasons if r not in NVML_THROTTLE_REASONS]
        if unknown or isinstance(throttle_reasons, str):
            raise ValueError(f"throttle_reasons must be a list of NVML reason names "
                             f"({', '.join(NVML_THROTTLE_REASONS)}), got {throttle_reasons!r}")
        if throttled_snapshots is not None and (isinstance(throttled_snapshots, bool)
                                                or not isinstance(throttled_snapshots, int)
                                                or throttled_snapshots < 0):
            raise ValueError(f"throttled_snapshots must be a non-negative integer or None "
                             f"(always), got {throttled_snapshots!r}")
        self.throttle_reasons = list(throttle_reasons)
        self.throttled_snapshots = throttled_snapshots
        self.snapshots_taken = 0

    def snapshot(self) -> dict[str, Any]:
        """The next scripted state; a throttled one also shows the lower clock and higher heat."""
        self.snapshots_taken += 1
        throttled = bool(self.throttle_reasons) and (
            self.throttled_snapshots is None or self.snapshots_taken <= self.throttled_snapshots)
        if not throttled:
            return dict(self.HEALTHY, throttle_reasons=[])
        # 1410 MHz and 87 C: what an H100 SXM reports in thermal slowdown (its slowdown
        # threshold is 87 C in `nvidia-smi -q -d TEMPERATURE`).
        return dict(self.HEALTHY, sm_clock_mhz=1410, temperature_c=87,
                    throttle_reasons=list(self.throttle_reasons))


def default_gpu_monitor(device: str) -> GpuStateMonitor:
    """GpuMonitor of the current CUDA device for "cuda", NullGpuMonitor for "cpu"."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return NullGpuMonitor()
    import torch

    return GpuMonitor(torch.cuda.current_device())


def _distorting_reasons(state: dict[str, Any], which: str) -> list[str]:
    if not isinstance(state, dict):
        raise ValueError(f"{which} must be a GPU snapshot dict, got {state!r}")
    reasons = state.get("throttle_reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ValueError(f"{which}['throttle_reasons'] must be a list of reason names, "
                         f"got {reasons!r}")
    return [r for r in reasons if r in DISTORTING_THROTTLE_REASONS]


def throttle_problem(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Why a measurement between these two snapshots cannot be trusted, or None when it can.

    Only DISTORTING_THROTTLE_REASONS count; empty snapshots (CPU runs) never do.
    """
    reasons = sorted(set(_distorting_reasons(before, "before"))
                     | set(_distorting_reasons(after, "after")))
    if not reasons:
        return None
    return (f"GPU throttled ({', '.join(reasons)}): SM clock {before.get('sm_clock_mhz')} -> "
            f"{after.get('sm_clock_mhz')} MHz of max {after.get('max_sm_clock_mhz')}, "
            f"temperature {before.get('temperature_c')} -> {after.get('temperature_c')} C, "
            f"power {before.get('power_w')} -> {after.get('power_w')} W")


def describe_snapshot(state: dict[str, Any]) -> str:
    """One line of a GPU snapshot for reports: "SM 1980/1980 MHz, 61 C, 498.2 W, throttle: none"."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a GPU snapshot dict, got {state!r}")
    if not state:
        return "no GPU state (not monitored)"
    reasons = state.get("throttle_reasons") or []
    return (f"SM {state.get('sm_clock_mhz')}/{state.get('max_sm_clock_mhz')} MHz, "
            f"{state.get('temperature_c')} C, {state.get('power_w')} W, "
            f"throttle: {', '.join(reasons) if reasons else 'none'}")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (the plugin's one question before choosing a device)."""
    import torch

    return torch.cuda.is_available()


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `directory`; (None, None) without git or a repository.

    Dirty means tracked files differ from the commit; untracked files (saved results, caches)
    do not count.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def _driver_version() -> str | None:
    try:
        pynvml.nvmlInit()
        return _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        return None


def run_environment(device: str, *, repo_dir: Path | None = None,
                    world_size: int | None = None) -> dict[str, Any]:
    """The environment of a run on `device` ("cuda" or "cpu"): GPU name and count, driver, CUDA,
    torch, python, hostname, git commit and dirty flag, and the hardware fingerprint its
    baselines are stored under ("cpu" for CPU runs, so CPU and GPU baselines never mix).

    `world_size` is the number of ranks of a distributed run (one device each): the fingerprint
    then counts those devices, "nvidia-h200-x2" or "cpu-x2", not the GPUs the host has.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)
                                   or world_size < 1):
        raise ValueError(f"world_size must be a positive integer number of ranks or None, "
                         f"got {world_size!r}")
    import torch

    from harness.theory import hardware

    gpus = hardware.detect_gpus()
    if device == "cuda":
        if not gpus:
            raise ValueError("device is 'cuda' but no GPU is detected (torch.cuda and NVML see "
                             "none); run on a GPU machine or use device 'cpu'")
        # Baselines are per GPU model and count: 8 GPUs of a node share power and cooling.
        count = len(gpus) if world_size is None else world_size
        fingerprint = hardware.fingerprint(gpus[0].name, count)
    else:
        fingerprint = hardware.fingerprint(hardware.CPU_NAME, world_size or 1)
    commit, dirty = git_state(repo_dir if repo_dir is not None else Path.cwd())
    return {
        "device": device,
        "fingerprint": fingerprint,
        "gpu_name": gpus[0].name if gpus else None,
        "gpu_count": len(gpus),
        "gpu_memory_bytes": gpus[0].memory_bytes if gpus else None,
        "driver": _driver_version() if gpus else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
