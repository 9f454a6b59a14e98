"""The tolerance rule: how far a median may move before it counts, in one place.

A tolerance is a relative change of the median (0.05 = 5%), above 0 and below MAX_TOLERANCE.
Which one applies is decided by `choose_tolerance`, the single precedence used by the verdict,
the `baselines` and `plot` commands: an explicit one (`--perf-tolerance`, `compare --tolerance`),
else the measured metric's own, else the baseline's, else the default of the metric's kind.

Pure and free of other gate imports, so `results.Metric` can check its tolerance with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from harness.checks import require_finite, shown

# Upper bound (exclusive) of a tolerance: a relative change of 1000%. No real gate is that loose,
# so anything at or beyond it is a typo (5 meant as 5%).
MAX_TOLERANCE = 10.0

# What a valid tolerance is, in the words of an option's error message ("it must be ...").
TOLERANCE_RULE = f"a relative change between 0 and {MAX_TOLERANCE:g}, such as 0.05 for 5%"

# Relative tolerance of the median per metric kind (0.05 = 5%), used when neither the caller nor
# the metrics give one. The keys are results.METRIC_KINDS (tests/test_verdict.py pins that).
DEFAULT_TOLERANCES: Mapping[str, float] = {
    # Step time and kernel time: 2%, from benchmarks/detection_power on an H200 (2026-11-21,
    # fourth run; README "Does the gate work?"): no false alarm in 20 unchanged re-measurements
    # of a bf16 GEMM or of a GPU-bound training step, and 17 and 20 of 20 3% slowdowns caught;
    # at 3% only 10 of 20, at 5% none. Work that follows the host CPU gets a wider tolerance per
    # test (harness/workloads/tolerances.py).
    "time": 0.02,
    # TFLOP/s, MFU, tokens/s are the reciprocal of a time: the same drift, the same tolerance.
    "throughput": 0.02,
    # The caching allocator is deterministic for the same code and torch, so memory barely moves;
    # 2% leaves room for library workspaces (cuBLAS, cuDNN) chosen by heuristics that can change
    # with a driver update without any change of ours.
    "memory": 0.02,
    # Dataloader wait and copy times depend on worker scheduling and on other processes sharing
    # the host's CPUs and PCIe link; run-to-run variation of 10% is common, hence 15%.
    "dataloader": 0.15,
    # Anything else: the same as time, the most common case.
    "other": 0.02,
}

# A regression is confirmed by measuring again (the plugin re-runs the test): the second
# measurement must still be worse beyond this fraction of the tolerance, with the same
# statistical support. Half the tolerance: a real 3% slowdown at the 2% tolerance stays beyond
# 1% in nearly every re-measurement, while a transient disturbance (a 13 s episode of 10-35%
# slower steps on a shared H200 host, 2026-11-21) has passed and the change is back near 0.
CONFIRM_TOLERANCE_FRACTION = 0.5

# Where a chosen tolerance came from, highest precedence first.
ToleranceSource = Literal["explicit", "metric", "baseline", "default"]


@dataclass(frozen=True)
class Tolerance:
    """A tolerance and where it came from (the `baselines` command marks the kind's defaults)."""

    value: float
    source: ToleranceSource

    @property
    def is_default(self) -> bool:
        """Whether no one chose it: it is the default of the metric's kind."""
        return self.source == "default"


def is_tolerance(value: object) -> bool:
    """Whether `value` is a valid tolerance: a finite number above 0 and below MAX_TOLERANCE."""
    try:
        number = require_finite("tolerance", value)
    except ValueError:
        return False
    return 0 < number < MAX_TOLERANCE


def require_tolerance(name: str, value: object) -> float:
    """`value` as a float when it is a valid tolerance; a ValueError naming `name` otherwise."""
    if not is_tolerance(value):
        raise ValueError(f"{name} must be a relative change above 0 and below "
                         f"{MAX_TOLERANCE:g} ({MAX_TOLERANCE:.0%}), such as 0.05 for 5%, "
                         f"got {shown(value)}{_as_fraction_hint(value)}")
    return require_finite(name, value)


def parse_tolerance(name: str, text: str) -> float:
    """A tolerance given as text (a command-line option): "0.05" -> 0.05; "5%" and anything
    else that is not a valid tolerance is a ValueError naming `name` and the fraction to write."""
    try:
        value: object = float(text)
    except ValueError:
        value = text
    return require_tolerance(name, value)


def _as_fraction_hint(value: object) -> str:
    """For a percentage written as text ("5%", "5 %"): how to write it as a fraction."""
    if not isinstance(value, str) or not value.strip().endswith("%"):
        return ""
    try:
        percent = float(value.strip()[:-1])
    except ValueError:
        return ""
    return f"; a tolerance is a fraction, write {percent / 100:g} for {value.strip()}"


def choose_tolerance(kind: str, *, explicit: float | None = None, own: float | None = None,
                     baseline: float | None = None) -> Tolerance:
    """The tolerance that applies: `explicit`, else the metric's `own`, else the `baseline`
    metric's, else DEFAULT_TOLERANCES[kind]; each given one is checked."""
    given: tuple[tuple[ToleranceSource, float | None], ...] = (
        ("explicit", explicit), ("metric", own), ("baseline", baseline))
    for source, value in given:
        if value is not None:
            name = "tolerance" if source == "explicit" else f"{source} tolerance"
            return Tolerance(require_tolerance(name, value), source)
    if kind not in DEFAULT_TOLERANCES:
        raise ValueError(f"kind must be one of {', '.join(DEFAULT_TOLERANCES)}, got {kind!r}")
    return Tolerance(DEFAULT_TOLERANCES[kind], "default")
