"""Baselines that know the fleet: one summary per recorded run (machine, day) of a metric, and
the tolerance that the spread of those runs calls for.

The unit that varies is the run, not the sample: samples of one run share its machine and its
moment. Recording the same fingerprint on several fresh machines (`--perf-add-run`) keeps one
`RunSummary` per run; with MIN_FLEET_RUNS or more, a metric's tolerance widens to
FLEET_SPREAD_MULTIPLE times the relative spread of the run medians, and a metric whose run medians
span HOST_SENSITIVE_SPAN or more is host-sensitive: only A/B on the machine at hand can judge it.
The baseline is then centred on the median of the run medians (`FleetSpread.center`), not on the
run recorded last: with one machine's samples as the centre, every machine of the fleet reads the
distance to that one machine (the Llama-style step's last run stored 88.5 ms, its four runs'
median is 98.0 ms, H200 2026-12-02), and a fresh machine of the fleet that reads the fleet's
usual value looks worse than one machine's tolerance and is sent to A/B for nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks import require_non_negative, require_positive_int, require_text
from harness.gate.profile import DeviceProfile

# Runs of a metric needed before their spread sets the tolerance: two runs give a spread with no
# spread of its own; three is the fewest that says anything about the fleet.
MIN_FLEET_RUNS = 3
# Tolerance = this many relative standard deviations of the run medians: an unchanged run on
# another machine of the fleet then falls inside with ~99.7% probability for normal run-to-run
# variation (three sigma), so the gate does not cry wolf on the fleet it has seen.
FLEET_SPREAD_MULTIPLE = 3.0
# Run medians spanning this much (max/min - 1) mark a metric host-sensitive. Host-bound training
# steps spanned 35-65% over fresh H200 machines while GEMMs spanned 2-5%: 30% separates them.
HOST_SENSITIVE_SPAN = 0.30


@dataclass(frozen=True)
class RunSummary:
    """One recorded run of a metric: its median, relative spread and sample count, the host it
    ran on and when."""

    median: float
    spread: float
    count: int
    host: str
    created: str
    # The run's device profile (kernel table), for the per-run spread of each kernel's time
    # (`harness.gate.kernel_diff`); None for runs recorded without one.
    profile: DeviceProfile | None = None

    def __post_init__(self) -> None:
        require_non_negative("run median", abs(self.median))
        require_non_negative("run spread", self.spread)
        require_positive_int("run sample count", self.count)
        require_text("run host", self.host)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"median": self.median, "spread": self.spread,
                                "count": self.count, "host": self.host, "created": self.created}
        if self.profile is not None:
            data["profile"] = self.profile.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunSummary:
        """Parse one stored run; a ValueError naming `where` and the problem otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: each of 'runs' must be an object, got {data!r}")
        profile = data.get("profile")
        try:
            return cls(median=float(data["median"]), spread=float(data["spread"]),
                       count=data["count"], host=data["host"],
                       created=str(data.get("created", "")),
                       profile=None if profile is None
                       else DeviceProfile.from_json(profile, f"{where}: a stored run"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: a stored run is malformed ({exc}); runs need median, "
                             f"spread, count and host") from None


@dataclass(frozen=True)
class FleetSpread:
    """What the recorded runs of a metric say about the fleet."""

    runs: int
    relative_deviation: float
    span: float
    # The median of the run medians: the value a machine of the fleet usually reads.
    center: float

    @property
    def tolerance(self) -> float:
        """The tolerance the fleet calls for (never below the caller's own)."""
        return FLEET_SPREAD_MULTIPLE * self.relative_deviation

    @property
    def host_sensitive(self) -> bool:
        return self.span >= HOST_SENSITIVE_SPAN


def fleet_spread(runs: Sequence[RunSummary]) -> FleetSpread | None:
    """The spread of the run medians, or None with fewer than MIN_FLEET_RUNS runs (or a median
    of 0, where a relative spread means nothing)."""
    if len(runs) < MIN_FLEET_RUNS:
        return None
    medians = [run.median for run in runs]
    center = statistics.fmean(medians)
    low, high = min(medians), max(medians)
    if center == 0 or low <= 0 or not all(math.isfinite(m) for m in medians):
        return None
    return FleetSpread(runs=len(runs),
                       relative_deviation=statistics.stdev(medians) / abs(center),
                       span=high / low - 1, center=statistics.median(medians))
