"""What the GPU did during a measured step, as stored beside a metric (schema version 2): device
time, the GPU's idle share, the host's issue time and the kernel table.

Pure records: `harness.measure.kernels` fills them from a profiled pass; the gate stores them,
shows them and, later, explains a regression with them (which kernel moved, or the host).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Idle share of the GPU (1 - device time / timed wall time) above which a step counts as
# host-bound. On an H200: two Llama-2-7B layers 0.8%, gpt2-medium 9%, a 336M Llama-style model
# 33% (2026-12-02); the last is the step that moved +35% between fresh machines. 20% keeps the
# partly host-bound gpt2-medium step with the GPU-bound ones, where its device time and wall
# time still agree within 10%.
HOST_BOUND_IDLE_FRACTION = 0.20


class ProfileError(ValueError):
    """A stored profile that does not follow the schema; the message says which field."""


@dataclass(frozen=True)
class KernelRow:
    """One kernel (or copy, or the sum of the small rest) with calls and device seconds per
    step."""

    name: str
    calls_per_step: float
    seconds_per_step: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "calls_per_step": self.calls_per_step,
                "seconds_per_step": self.seconds_per_step}


@dataclass(frozen=True)
class DeviceProfile:
    """Per step: device seconds (kernel intervals, overlaps once), the share of the step's
    window the GPU idled, the host's seconds to issue the step, and the kernel table."""

    steps: int
    device_seconds: float
    idle_fraction: float
    host_issue_seconds: float | None
    kernels: tuple[KernelRow, ...]

    @property
    def host_bound(self) -> bool:
        """Whether the host, not the GPU, set the pace of the step."""
        return self.idle_fraction > HOST_BOUND_IDLE_FRACTION

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "device_seconds": self.device_seconds,
                "idle_fraction": self.idle_fraction,
                "host_issue_seconds": self.host_issue_seconds,
                "kernels": [row.to_json() for row in self.kernels]}

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
                   kernels=tuple(_row(row, where) for row in rows))


def _row(data: Any, where: str) -> KernelRow:
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ProfileError(f"{where}: every kernel row needs a 'name' string, got {data!r}")
    return KernelRow(data["name"], _number(data, "calls_per_step", where),
                     _number(data, "seconds_per_step", where))


def _number(data: Mapping[str, Any], key: str, where: str, upper: float = math.inf) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= upper:
        limit = "" if upper == math.inf else f" up to {upper:g}"
        raise ProfileError(f"{where}: profile '{key}' must be a number from 0{limit}, "
                           f"got {value!r}")
    return float(value)
