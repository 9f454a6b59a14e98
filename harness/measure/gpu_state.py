"""The GPU's state around a measurement: SM clock, temperature, power and throttle reasons.

Every measurement records the GPU's state before and after (`GpuMonitor.snapshot`). A
measurement taken while the GPU slowed itself down (`throttle_problem`) is taken again, then
marked unreliable (`measure_between_snapshots`): never called a regression.

Throttle reasons are NVML's "clocks event reasons", named here after the suffix of pynvml's
`nvmlClocksThrottleReason<Name>` constants. They are sampled at the start and at the end of a
measurement; a throttle that starts and ends in between shows up only in the samples' spread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import pynvml

from harness.checks import require_non_negative_int
from harness.gate.results import Metric
from harness.measure.devices import DEVICES

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

# How often a throttled measurement is taken again before its metrics are marked unreliable:
# one retry absorbs a passing burst (the previous test heated the GPU) without doubling the
# run time of a machine that throttles all the time.
THROTTLE_RETRIES = 1


class GpuStateMonitor(Protocol):
    """Anything that reports the GPU's state; the `perf_gpu_monitor` fixture returns one."""

    def snapshot(self) -> dict[str, Any]:
        """The GPU's state now: see `GpuMonitor.snapshot` for the keys; {} when not known."""
        ...


def decode_throttle_reasons(mask: int) -> list[str]:
    """The names of the reasons set in an NVML clocks-event bit mask, in bit order."""
    require_non_negative_int("mask (an NVML clocks-event bit mask)", mask)
    return [name for name, bit in sorted(NVML_THROTTLE_REASONS.items(), key=lambda kv: kv[1])
            if mask & bit]


def _nvml_or_none(read: Callable[[], Any]) -> Any:
    """One NVML reading, or None where this GPU or driver does not support it."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


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
        self.cuda_index = require_non_negative_int("cuda_index", cuda_index)
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


def measure_between_snapshots(
        produce: Callable[[], dict[str, Metric]], monitor: GpuStateMonitor, *,
        agree: Callable[[str | None], str | None] | None = None,
) -> tuple[dict[str, Metric], dict[str, Any]]:
    """Run `produce` between two GPU snapshots. A throttled measurement is taken again
    (THROTTLE_RETRIES times), then kept with its metrics marked unreliable: never judged as a
    regression. `agree` lets every rank of a distributed run take the same decision.
    Returns the metrics and the GPU state (before, after, attempts, throttle reasons)."""
    throttles: list[str] = []
    attempts = 0
    while True:
        attempts += 1
        before = monitor.snapshot()
        metrics = produce()
        after = monitor.snapshot()
        problem = throttle_problem(before, after)
        if agree is not None:  # every rank retries, or keeps, together
            problem = agree(problem)
        if problem is None:
            break
        throttles.append(problem)
        if attempts > THROTTLE_RETRIES:
            note = f"{problem}, in all {attempts} attempts"
            metrics = {n: m.with_changes(reliable=False,
                                         note=f"{m.note}; {note}" if m.note else note)
                       for n, m in metrics.items()}
            break
    return metrics, {"before": before, "after": after, "attempts": attempts,
                     "throttled": throttles}
