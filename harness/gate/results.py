"""The data model of a run: metrics keep their raw samples; every statistic is derived from them.

One JSON schema family serves baselines (`baselines/<fingerprint>.json`) and saved results
(`--perf-save`): both are a `RunResults` with a `kind` of "baseline" or "results".

Schema versions: 1 (samples and statistics per metric), 2 (adds per metric the device profile of
a profiled pass, `profile`, whether its step was host-bound, `host_bound`, and in baselines one
summary per recorded run, `runs`; the environment gains the host). Older documents load through
`UPGRADES`, one function per version step, and are written back in the current version only
when a baseline is written.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from harness.checks import require_bool, require_finite, require_text, shown
from harness.gate.fleet import RunSummary
from harness.gate.profile import DeviceProfile, ProfileError
from harness.gate.stats import quartiles, relative_spread
from harness.gate.tolerance import require_tolerance

# Version of the on-disk format, independent of the package version. Loaders upgrade older
# versions (UPGRADES) and reject newer or unknown ones.
SCHEMA_VERSION = 2

Better = Literal["higher", "lower"]
MetricKind = Literal["time", "throughput", "memory", "dataloader", "other"]
RunKind = Literal["baseline", "results"]

BETTER_VALUES: tuple[str, ...] = ("higher", "lower")
METRIC_KINDS: tuple[str, ...] = ("time", "throughput", "memory", "dataloader", "other")
RUN_KINDS: tuple[str, ...] = ("baseline", "results")

# Kinds whose samples are durations, sizes in bytes or rates: below zero they are a bug in the
# measurement, and the relative change of a negative median points the wrong way.
NON_NEGATIVE_KINDS: tuple[str, ...] = ("time", "throughput", "memory", "dataloader")


class SchemaError(ValueError):
    """A results or baseline document that does not follow the schema; the message says where."""


def _require(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise SchemaError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise SchemaError(f"{where}: field {key!r} must be {_type_name(types)}, got {value!r}")
    if not isinstance(value, types):
        raise SchemaError(f"{where}: field {key!r} must be {_type_name(types)}, got {value!r}")
    return value


def _type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def _is_finite(value: object) -> bool:
    try:
        require_finite("value", value)
    except ValueError:
        return False
    return True


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    """The field as a float when it is a finite number, None when absent or null."""
    value = data.get(key)
    if value is None:
        return None
    try:
        return require_finite(key, value)
    except ValueError:
        raise SchemaError(f"{where}: {key!r} must be a number or null, got {value!r}") from None


def _checked_samples(where: str, samples: object, kind: object) -> tuple[float, ...]:
    """`samples` as floats: a non-empty sequence of finite numbers, none negative for the
    NON_NEGATIVE_KINDS."""
    if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Iterable):
        raise ValueError(f"{where}: samples must be a non-empty sequence of numbers, "
                         f"got {shown(samples)}")
    values = tuple(samples)
    if not values:
        raise ValueError(f"{where} has no samples")
    checked = tuple(require_finite(f"{where}: sample {i}", value)
                    for i, value in enumerate(values))
    if kind in NON_NEGATIVE_KINDS:
        for i, value in enumerate(checked):
            if value < 0:
                raise ValueError(
                    f"{where}: sample {i} is {value!r}, but a {kind} metric is a duration, a "
                    f"size or a rate and cannot be negative; fix the measurement, or record a "
                    f"signed quantity with kind='other'")
    return checked


@dataclass(frozen=True)
class Metric:
    """One measured quantity of one test.

    `samples` are the raw observations (seconds, bytes, TFLOP/s, ...); the median and the spread
    are computed from them on demand. `tolerance` is a relative change (0.05 = 5%) or None for the
    default of the metric's `kind`. `theory` is the analytic figure shown beside the measurement.
    """

    name: str
    unit: str
    better: Better
    samples: tuple[float, ...]
    kind: MetricKind = "other"
    tolerance: float | None = None
    reliable: bool = True
    note: str = ""
    theory: float | None = None
    # What the GPU did in the measured step (a profiled pass), and whether the host set its pace.
    profile: DeviceProfile | None = None
    host_bound: bool = False
    # In a baseline: one summary per recorded run (machine, day), oldest first (`--perf-add-run`).
    runs: tuple[RunSummary, ...] = ()

    def __post_init__(self) -> None:
        # Every field is checked here, so a bad value fails where it was given, never later
        # in a baseline file that no run can load.
        name = self.name
        if not isinstance(name, str) or not name.strip() or "::" in name:
            raise ValueError(f"metric name must be a non-empty string without '::', "
                             f"got {shown(name)}")
        if "\n" in name or "\r" in name:
            raise ValueError(f"metric name must be on one line (it is a key in reports and "
                             f"baselines), got {name!r}")
        where = f"metric {name!r}"
        require_text(f"{where}: unit (such as 's', 'B' or 'TFLOP/s')", self.unit)
        if self.better not in BETTER_VALUES:
            raise ValueError(f"{where}: better must be 'higher' or 'lower', "
                             f"got {shown(self.better)}")
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"{where}: kind must be one of "
                             f"{', '.join(METRIC_KINDS)}; got {shown(self.kind)}")
        object.__setattr__(self, "samples", _checked_samples(where, self.samples, self.kind))
        if self.tolerance is not None:
            object.__setattr__(self, "tolerance",
                               require_tolerance(f"{where}: tolerance", self.tolerance))
        if self.theory is not None:
            object.__setattr__(self, "theory", require_finite(
                f"{where}: theory (the analytic figure, or None)", self.theory))
        require_bool(f"{where}: reliable", self.reliable)
        require_bool(f"{where}: host_bound", self.host_bound)
        if not isinstance(self.note, str):
            raise ValueError(f"{where}: note must be a string, got {shown(self.note)}")
        if self.profile is not None and not isinstance(self.profile, DeviceProfile):
            raise ValueError(f"{where}: profile must be a DeviceProfile or None, "
                             f"got {shown(self.profile)}")
        runs = self.runs
        if isinstance(runs, (str, bytes)) or not isinstance(runs, Iterable) \
                or not all(isinstance(run, RunSummary) for run in runs):
            raise ValueError(f"{where}: runs must be a tuple of RunSummary, got {shown(runs)}")
        object.__setattr__(self, "runs", tuple(runs))

    @property
    def count(self) -> int:
        """The number of samples."""
        return len(self.samples)

    @property
    def median(self) -> float:
        """The median of the samples."""
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range (0 for fewer than two samples)."""
        q1, q3 = quartiles(self.samples)
        return q3 - q1

    @property
    def spread(self) -> float:
        """Relative spread: IQR / |median| (0 when the median is 0)."""
        return relative_spread(self.samples)

    def with_changes(self, **changes: Any) -> Metric:
        """A copy with `changes` applied (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The metric's entry in a results or baseline document."""
        return {
            "unit": self.unit,
            "better": self.better,
            "kind": self.kind,
            "median": self.median,
            "spread": self.spread,
            "count": self.count,
            "samples": list(self.samples),
            "tolerance": self.tolerance,
            "reliable": self.reliable,
            "note": self.note,
            "theory": self.theory,
            "host_bound": self.host_bound,
            "profile": None if self.profile is None else self.profile.to_json(),
            "runs": [run.to_json() for run in self.runs],
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any], where: str) -> Metric:
        """Parse one metric; `where` names the file and metric id for error messages."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected an object, got {type(data).__name__}")
        samples = _require(data, "samples", list, where)
        if not samples or not all(_is_finite(s) for s in samples):
            raise SchemaError(f"{where}: 'samples' must be a non-empty list of finite numbers")
        tolerance = _optional_number(data, "tolerance", where)
        theory = _optional_number(data, "theory", where)
        host_bound = data.get("host_bound", False)
        if not isinstance(host_bound, bool):
            raise SchemaError(f"{where}: 'host_bound' must be true or false, got {host_bound!r}")
        try:
            profile = (None if data.get("profile") is None
                       else DeviceProfile.from_json(data["profile"], where))
        except ProfileError as exc:
            raise SchemaError(str(exc)) from None
        raw_runs = data.get("runs", [])
        if not isinstance(raw_runs, list):
            raise SchemaError(f"{where}: 'runs' must be a list, got {raw_runs!r}")
        try:
            runs = tuple(RunSummary.from_json(run, where) for run in raw_runs)
        except ValueError as exc:
            raise SchemaError(str(exc)) from None
        try:
            return cls(
                name=name,
                unit=_require(data, "unit", str, where),
                better=_require(data, "better", str, where),
                samples=tuple(samples),
                kind=data.get("kind", "other"),
                tolerance=tolerance,
                reliable=bool(data.get("reliable", True)),
                note=str(data.get("note", "")),
                theory=theory,
                profile=profile,
                host_bound=host_bound,
                runs=runs,
            )
        except ValueError as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"{where}: {exc}") from None


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 had no profiles, no host-bound flags and no host: all stay absent."""
    return {**data, "schema_version": 2}


# version -> the function that lifts a document of that version to the next one.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def upgrade(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` lifted to SCHEMA_VERSION through UPGRADES; a SchemaError for an unknown version."""
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or not (version == SCHEMA_VERSION or version in UPGRADES):
        raise SchemaError(
            f"{where}: schema_version {version!r} is not supported (this harness reads "
            f"versions {', '.join(map(str, sorted({*UPGRADES, SCHEMA_VERSION})))}); re-record "
            f"it with this version of perf-harness, or upgrade perf-harness if it is newer")
    while data["schema_version"] != SCHEMA_VERSION:
        data = UPGRADES[data["schema_version"]](data)
    return data


def metric_id(nodeid: str, name: str) -> str:
    """The key a metric is stored under: `<test nodeid>::<metric name>`."""
    return f"{nodeid}::{name}"


def split_metric_id(mid: str) -> tuple[str, str]:
    """Inverse of `metric_id`: (nodeid, metric name)."""
    nodeid, sep, name = mid.rpartition("::")
    if not sep:
        raise ValueError(f"metric id {mid!r} has no '::<metric name>' part")
    return nodeid, name


@dataclass
class RunResults:
    """All metrics of one run (or one baseline) with the environment they were measured in."""

    kind: RunKind
    fingerprint: str
    environment: dict[str, Any]
    metrics: dict[str, Metric] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Checked when made, so what is written is what a later run can load.
        if self.kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {', '.join(RUN_KINDS)}, "
                             f"got {shown(self.kind)}")
        require_text("fingerprint", self.fingerprint)
        if not isinstance(self.environment, dict):
            raise ValueError(f"environment must be a dict, got {shown(self.environment)}")
        if not isinstance(self.metrics, dict) or not all(
                isinstance(mid, str) and isinstance(m, Metric) for mid, m in self.metrics.items()):
            raise ValueError(f"metrics must be a dict of metric id -> Metric, "
                             f"got {shown(self.metrics)}")
        if not isinstance(self.created, str):
            raise ValueError(f"created must be an ISO 8601 time as a string, "
                             f"got {shown(self.created)}")
        if isinstance(self.schema_version, bool) or self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version must be {SCHEMA_VERSION} (older versions are only "
                             f"read, never written), got {shown(self.schema_version)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "environment": self.environment,
            "metrics": {mid: m.to_json() for mid, m in sorted(self.metrics.items())},
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> RunResults:
        """Parse and validate a document; `where` (usually the file path) prefixes every error."""
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a JSON object at the top level")
        data = upgrade(data, where)
        kind = _require(data, "kind", str, where)
        if kind not in RUN_KINDS:
            raise SchemaError(f"{where}: kind must be one of {', '.join(RUN_KINDS)}, "
                              f"got {kind!r}")
        fingerprint = _require(data, "fingerprint", str, where)
        environment = _require(data, "environment", dict, where)
        raw_metrics = _require(data, "metrics", dict, where)
        metrics: dict[str, Metric] = {}
        for mid, raw in raw_metrics.items():
            try:
                _, name = split_metric_id(mid)
            except ValueError as exc:
                raise SchemaError(f"{where}: {exc}") from None
            metrics[mid] = Metric.from_json(name, raw, f"{where}: metric {mid!r}")
        created = data.get("created", "")
        try:
            return cls(kind=kind, fingerprint=fingerprint, environment=environment,
                       metrics=metrics, created=str(created))
        except ValueError as exc:
            raise SchemaError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Measurement(Mapping[str, Metric]):
    """What one `perf` fixture call produced: a read-only mapping of metric name to `Metric`
    (`m["step_time"]`, `for name, metric in m.items()`), and the GPU state around it."""

    metrics: Mapping[str, Metric]
    gpu_state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def __getitem__(self, name: str) -> Metric:
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r} in this measurement; it has "
                           f"{', '.join(self.metrics) or 'none'}")
        return self.metrics[name]

    def __contains__(self, name: object) -> bool:
        return name in self.metrics

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    @property
    def reliable(self) -> bool:
        return all(m.reliable for m in self.metrics.values())
