"""Schema version 2 (device profiles, host-bound flags): old files load through the upgrade,
new fields round-trip, and damaged or foreign ones are refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.gate import store
from harness.gate.profile import DeviceProfile, KernelRow
from harness.gate.results import SCHEMA_VERSION, Metric, RunResults, SchemaError

REPO = Path(__file__).resolve().parents[1]
# A committed baseline of schema version 1: the H200's, before its refresh in version 2.
VERSION_1_BASELINE = REPO / "baselines" / "history" / "nvidia-h200" / "20261121T161728.000000Z.json"


def test_the_committed_version_1_baselines_still_load() -> None:
    path = VERSION_1_BASELINE
    assert json.loads(path.read_text())["schema_version"] == 1
    results = store.load_results(path)
    assert results.schema_version == SCHEMA_VERSION == 2
    assert results.metrics and all(m.profile is None and not m.host_bound
                                   for m in results.metrics.values())


def test_an_upgraded_file_is_written_in_the_current_version(tmp_path: Path) -> None:
    old = store.load_results(VERSION_1_BASELINE)
    store.save_results(tmp_path / "new.json", old)
    assert json.loads((tmp_path / "new.json").read_text())["schema_version"] == 2
    assert store.load_results(tmp_path / "new.json").metrics == old.metrics


def _profiled_metric() -> Metric:
    profile = DeviceProfile(steps=5, device_seconds=0.06, idle_fraction=0.02,
                            host_issue_seconds=0.012,
                            kernels=(KernelRow("sm90_xmma_gemm_bf16", 14.0, 0.04),
                                     KernelRow("(other 80 kernels)", 600.0, 0.02)))
    return Metric(name="device_time", unit="s", better="lower", kind="time",
                  samples=(0.06, 0.061, 0.059, 0.06, 0.06), profile=profile, host_bound=False)


def test_a_profile_round_trips(tmp_path: Path) -> None:
    results = RunResults(kind="results", fingerprint="cpu", environment={},
                         metrics={"t.py::test_a::device_time": _profiled_metric()})
    store.save_results(tmp_path / "r.json", results)
    loaded = store.load_results(tmp_path / "r.json")
    assert loaded.metrics == results.metrics


@pytest.mark.parametrize("version", [3, "2", True, None])
def test_unknown_versions_are_refused(version: object) -> None:
    with pytest.raises(SchemaError, match=r"schema_version .* is not supported .*versions 1, 2"):
        RunResults.from_json({"schema_version": version, "kind": "results", "fingerprint": "c",
                              "environment": {}, "metrics": {}}, "f.json")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("idle_fraction", 1.5, "profile 'idle_fraction' must be a number from 0 up to 1"),
    ("steps", 0, "profile 'steps' must be a positive integer"),
    ("kernels", "gemm", "profile 'kernels' must be a list"),
    ("device_seconds", float("nan"), "profile 'device_seconds' must be a number from 0"),
])
def test_a_damaged_profile_names_the_field(field: str, value: object, message: str) -> None:
    entry = _profiled_metric().to_json()
    entry["profile"][field] = value
    with pytest.raises(SchemaError, match=message):
        Metric.from_json("device_time", entry, "f.json: metric 'x'")


def test_host_bound_must_be_a_boolean() -> None:
    entry = _profiled_metric().to_json()
    entry["host_bound"] = "yes"
    with pytest.raises(SchemaError, match="'host_bound' must be true or false"):
        Metric.from_json("device_time", entry, "f.json")
