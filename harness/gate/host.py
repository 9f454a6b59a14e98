"""How the hosts of two runs compare: the calibration probes of `harness.measure.host` that moved
beyond their noise, signed as slowdowns of the new host.

A host-bound step (the GPU idles while the host issues it) follows the host: between fresh H200
machines such steps were measured 35-65% apart on unchanged code. When its host's calibration
moved too, the verdict says so instead of blaming the code (`harness.gate.verdict.judge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Calibration probes: key -> direction. Units: launch_us (us per kernel launch), dispatch_us
# (us per 1000 Python calls), pageable_h2d_gbps (GB/s of a 64 MiB pageable copy).
CALIBRATION_KEYS: dict[str, str] = {
    "launch_us": "lower",
    "dispatch_us": "lower",
    "pageable_h2d_gbps": "higher",
}
# Relative move of a probe that counts as another host; provisional. Host-bound steps moved
# 35-65% between fresh H200 machines, so a host that slows them is well beyond 15%. Within one
# process on one H200 host the probes (medians of 5 then) moved 4-6% on one machine, but up to
# 37% (launch) and 116% (dispatch) on another while its CPU clock ramped up (2026-12-02); the
# probes now take the best reading after a warm-up, not yet re-measured. Because a probe can
# misread, a verdict resting on it is re-checked by A/B wherever A/B can run.
CALIBRATION_THRESHOLD = 0.15


def calibration_differences(base: Mapping[str, Any], new: Mapping[str, Any], *,
                            threshold: float = CALIBRATION_THRESHOLD) -> dict[str, float]:
    """Probes of two run environments that moved beyond `threshold`: key -> relative slowdown of
    the new host (positive: slower). Environments without a host record compare as equal."""
    old_probes = _calibration(base)
    new_probes = _calibration(new)
    moved: dict[str, float] = {}
    for key, better in CALIBRATION_KEYS.items():
        old, now = _positive(old_probes.get(key)), _positive(new_probes.get(key))
        if old is None or now is None:
            continue
        change = now / old - 1
        if abs(change) > threshold:
            moved[key] = change if better == "lower" else -change
    return moved


def describe_differences(moved: Mapping[str, float]) -> str:
    """"launch_us 35% slower, pageable_h2d_gbps 12% faster"."""
    return ", ".join(f"{key} {abs(value) * 100:.0f}% {'slower' if value > 0 else 'faster'}"
                     for key, value in moved.items())


def _calibration(environment: Mapping[str, Any]) -> Mapping[str, Any]:
    host = environment.get("host")
    probes = host.get("calibration") if isinstance(host, Mapping) else None
    return probes if isinstance(probes, Mapping) else {}


def _positive(value: object) -> float | None:
    """`value` as a float when it is a positive number, else None (absent, damaged)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
