"""What the GPU did during a measured step, as stored beside a metric (schema version 2): device
time, the GPU's idle share, the host's issue time and the kernel table; optionally (added within
version 2, absent from older files) the device seconds per class of work and per phase of the
step, and each kernel's phase (`harness.gate.anatomy`).

Pure records: `harness.measure.kernels` fills them from a profiled pass; the gate stores them,
shows them and, later, explains a regression with them (which kernel moved, or the host).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Idle share of the GPU (1 - device time / timed wall time) above which a step counts as
# host-bound. On an H200: two Llama-2-7B layers 0.8%, gpt2-medium 9%, a 336M Llama-style model
# 33% (2026-12-02); the last is the step that moved +35% between fresh machines. 20% keeps the
# partly host-bound gpt2-medium step with the GPU-bound ones, where its device time and wall
# time still agree within 10%.
HOST_BOUND_IDLE_FRACTION = 0.20

# Launches per step up to which a step that is not host-bound is kernel-bound: a call of this
# few kernels, timed back to back, keeps the GPU's queue full, so its wall time per call is its
# device time per call (`harness.gate.wall_time`). The GEMM tests launch one or two (the GEMM,
# and a small kernel beside it) and the copy tests one; a transformer's forward pass launches
# hundreds, short ones among them, that the host can fall behind.
MAX_KERNEL_BOUND_LAUNCHES = 4

# The name of the kernel table's last row, which sums the kernels below its coverage:
# "(other 12 kernels)".
OTHER_ROW_PREFIX = "(other "


class ProfileError(ValueError):
    """A stored profile that does not follow the schema; the message says which field."""


@dataclass(frozen=True)
class KernelRow:
    """One kernel (or copy, or the sum of the small rest) with calls and device seconds per
    step."""

    name: str
    calls_per_step: float
    seconds_per_step: float
    # The phase of the step (forward, backward, optimizer, other) most of its time ran in;
    # None when the step named no phases (or the file predates them).
    phase: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "calls_per_step": self.calls_per_step,
                                "seconds_per_step": self.seconds_per_step}
        if self.phase is not None:
            data["phase"] = self.phase
        return data


@dataclass(frozen=True)
class DeviceProfile:
    """Per step: device seconds (kernel intervals, overlaps once), the share of the step's
    window the GPU idled, the host's seconds to issue the step, and the kernel table; kernel
    seconds per class of work (all kernels, not only the table's) and per phase, empty when
    not recorded."""

    steps: int
    device_seconds: float
    idle_fraction: float
    host_issue_seconds: float | None
    kernels: tuple[KernelRow, ...]
    classes: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def launches_per_step(self) -> float:
        """Kernels, copies and memsets the GPU ran per step (every row, the rest's included)."""
        return sum(row.calls_per_step for row in self.kernels)

    @property
    def host_bound(self) -> bool:
        """Whether the host, not the GPU, set the pace of the step."""
        return self.idle_fraction > HOST_BOUND_IDLE_FRACTION

    @property
    def kernel_bound(self) -> bool:
        """Whether the step is a call of a few kernels that kept the GPU busy: its idle share
        then says how far the profiled burst's clocks were from the timed samples', not what
        the host did."""
        return not self.host_bound and self.launches_per_step <= MAX_KERNEL_BOUND_LAUNCHES

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"steps": self.steps, "device_seconds": self.device_seconds,
                                "idle_fraction": self.idle_fraction,
                                "host_issue_seconds": self.host_issue_seconds,
                                "kernels": [row.to_json() for row in self.kernels]}
        if self.classes:
            data["classes"] = dict(self.classes)
        if self.phases:
            data["phases"] = dict(self.phases)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> DeviceProfile:
        """Parse a stored profile; a `ProfileError` naming `where` and the field otherwise."""
        if not isinstance(data, Mapping):
            raise ProfileError(f"{where}: 'profile' must be an object, got {data!r}")
        steps = data.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ProfileError(f"{where}: profile 'steps' must be a positive integer, "
                               f"got {steps!r}")
        host = data.get("host_issue_seconds")
        rows = data.get("kernels")
        if not isinstance(rows, list):
            raise ProfileError(f"{where}: profile 'kernels' must be a list, got {rows!r}")
        return cls(steps=steps,
                   device_seconds=_number(data, "device_seconds", where),
                   idle_fraction=_number(data, "idle_fraction", where, upper=1.0),
                   host_issue_seconds=None if host is None
                   else _number(data, "host_issue_seconds", where),
                   kernels=tuple(_row(row, where) for row in rows),
                   classes=_seconds_by_name(data, "classes", where),
                   phases=_seconds_by_name(data, "phases", where))


def _row(data: Any, where: str) -> KernelRow:
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ProfileError(f"{where}: every kernel row needs a 'name' string, got {data!r}")
    phase = data.get("phase")
    if phase is not None and not isinstance(phase, str):
        raise ProfileError(f"{where}: a kernel row's 'phase' must be a string, got {phase!r}")
    return KernelRow(data["name"], _number(data, "calls_per_step", where),
                     _number(data, "seconds_per_step", where), phase)


def _seconds_by_name(data: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    """An optional {name: seconds} object of the profile ({} when absent)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise ProfileError(f"{where}: profile '{key}' must be an object of seconds by name, "
                           f"got {value!r}")
    return {name: _number(value, name, f"{where}: profile '{key}'") for name in value}


def _number(data: Mapping[str, Any], key: str, where: str, upper: float = math.inf) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= upper:
        limit = "" if upper == math.inf else f" up to {upper:g}"
        raise ProfileError(f"{where}: profile '{key}' must be a number from 0{limit}, "
                           f"got {value!r}")
    return float(value)
