"""The results document: one versioned JSON file with every raw sample, written atomically after
each phase and validated on reading, so `--analyse` can re-judge a run offline."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.detection_power.design import (
    AB_PHASE,
    MEMORY_POLICY,
    TIME_BUDGET_SECONDS,
    Condition,
    Sizes,
)
from harness.gate.results import Metric, SchemaError
from harness.measure.sampling import TimingPolicy

# Name and version of the JSON written here; `load_document` rejects anything else. Version 2
# added the A/B phase ("ab"), which version 1 readers cannot read; version 1 files have none and
# are read as they are.
FORMAT = "perf-harness/detection-power"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def utc_now() -> str:
    """An ISO 8601 UTC time stamp with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_document(*, device: str, quick: bool, repeats: int, policy: TimingPolicy,
                 conditions: Sequence[Condition], sizes: Sizes | None,
                 environment: dict[str, Any], clock: str) -> dict[str, Any]:
    """An empty results document: what was run, how, on what; phases are added as they end."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": utc_now(),
        "complete": False,
        "device": device,
        "quick": quick,
        "repeats": repeats,
        "clock": clock,
        "policy": dataclasses.asdict(policy),
        "policy_is_fixture_default": policy == TimingPolicy(),
        "memory_policy": dataclasses.asdict(MEMORY_POLICY),
        "conditions": [c.to_json() for c in conditions],
        "sizes": None if sizes is None else sizes.describe(),
        "environment": environment,
        "time_budget_seconds": TIME_BUDGET_SECONDS,
        "phases": {},
        "fidelity": None,
        "wall_seconds": {},
    }


def save_document(path: Path, data: dict[str, Any]) -> None:
    """Write the document atomically (temp file + rename): a run killed mid-write leaves the
    previous complete file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def load_document(path: Path) -> dict[str, Any]:
    """Read and validate a results document; errors name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the detection-power results ({exc.strerror}); "
                         f"write them with --out {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc})") from None
    check_document(data, str(path))
    return data


def conditions_of(data: dict[str, Any]) -> list[Condition]:
    """The conditions a document was recorded with (targets included)."""
    return [Condition(name=c["name"], fraction=float(c["fraction"]),
                      min_flagged_share=float(c["min_flagged_share"]),
                      max_flagged_share=float(c["max_flagged_share"]))
            for c in data["conditions"]]


def check_document(data: Any, where: str) -> None:
    """Raise SchemaError (prefixed with `where`) unless `data` is a readable results document."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a JSON object at the top level")
    if data.get("format") != FORMAT:
        raise SchemaError(f"{where}: format {data.get('format')!r} is not {FORMAT!r}; this is "
                          f"not a detection-power results file")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise SchemaError(f"{where}: format_version {data.get('format_version')!r} is not "
                          f"supported (this script reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}); re-run the benchmark")
    conditions = data.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        raise SchemaError(f"{where}: 'conditions' must be a non-empty list")
    for position, condition in enumerate(conditions):
        keys = ("name", "fraction", "min_flagged_share", "max_flagged_share")
        if not isinstance(condition, dict) or any(k not in condition for k in keys):
            raise SchemaError(f"{where}: conditions[{position}] must have {', '.join(keys)}; "
                              f"got {condition!r}")
    names = {c["name"] for c in conditions}
    phases = data.get("phases")
    if not isinstance(phases, dict):
        raise SchemaError(f"{where}: 'phases' must be an object of phase name -> results")
    for phase, result in phases.items():
        at = f"{where}: phase {phase!r}"
        if not isinstance(result, dict):
            raise SchemaError(f"{at}: expected an object, got {type(result).__name__}")
        if "skipped" in result:
            continue
        if phase == AB_PHASE:
            check_ab_result(result, names, at)
            continue
        judged = result.get("judged_metric")
        if not isinstance(judged, str):
            raise SchemaError(f"{at}: 'judged_metric' must name a metric, got {judged!r}")
        if not isinstance(result.get("injections"), dict):
            raise SchemaError(f"{at}: 'injections' must be an object of condition -> injection")
        records = [("warmup", result.get("warmup")), ("baseline", result.get("baseline"))]
        repetitions = result.get("repetitions")
        if not isinstance(repetitions, list):
            raise SchemaError(f"{at}: 'repetitions' must be a list")
        records += [(f"repetitions[{i}]", r) for i, r in enumerate(repetitions)]
        for label, record in records:
            if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
                raise SchemaError(f"{at}: {label} must be an object with 'metrics'")
            if record.get("condition") not in names:
                raise SchemaError(f"{at}: {label} has condition {record.get('condition')!r}, "
                                  f"not one of {', '.join(sorted(names))}")
            if judged not in record["metrics"]:
                raise SchemaError(f"{at}: {label} has no {judged!r} metric")
            Metric.from_json(judged, record["metrics"][judged], f"{at}: {label}: {judged}")


def check_ab_result(result: dict[str, Any], names: set[str], at: str) -> None:
    """Raise SchemaError unless the A/B phase's `result` holds what `analyse_ab` replays: its
    metric and settings, and per repetition a known condition and equally many positive base
    and head run medians."""
    metric, settings = result.get("metric"), result.get("settings")
    if not isinstance(metric, dict) or any(k not in metric for k in ("unit", "better", "kind")):
        raise SchemaError(f"{at}: 'metric' must be an object with unit, better and kind")
    keys = ("metric_id", "tolerance", "alpha", "max_rounds", "budget_seconds")
    if not isinstance(settings, dict) or any(k not in settings for k in keys):
        raise SchemaError(f"{at}: 'settings' must be an object with {', '.join(keys)}")
    repetitions = result.get("repetitions")
    if not isinstance(repetitions, list):
        raise SchemaError(f"{at}: 'repetitions' must be a list")
    for position, record in enumerate(repetitions):
        label = f"{at}: repetitions[{position}]"
        if not isinstance(record, dict) or record.get("condition") not in names:
            raise SchemaError(f"{label} must be an object whose condition is one of "
                              f"{', '.join(sorted(names))}")
        base, head = record.get("base_medians"), record.get("head_medians")
        if not (isinstance(base, list) and isinstance(head, list) and base
                and len(base) == len(head) and all(_positive(v) for v in base + head)):
            raise SchemaError(f"{label}: 'base_medians' and 'head_medians' must be equally long "
                              f"non-empty lists of positive run medians")


def _positive(value: object) -> bool:
    """Whether `value` is a positive finite number (a run median)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < float("inf"))
