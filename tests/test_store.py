"""Baselines on disk: round trip, validation errors that name the file, atomic writes, history,
and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import subprocess
import sys
from pathlib import Path

import pytest

from harness.gate.results import SCHEMA_VERSION, Metric, RunResults
from harness.gate.store import (
    HISTORY_NAME_PATTERN,
    StoreError,
    baseline_path,
    history,
    list_fingerprints,
    load_baseline,
    load_results,
    save_results,
    write_baseline,
)

FINGERPRINT = "nvidia-h100-80gb-hbm3-x1"
STEP_TIME_ID = "perf_tests/test_train.py::test_gpt2_step::step_time"
PEAK_MEMORY_ID = "perf_tests/test_train.py::test_gpt2_step::peak_allocated_bytes"


def make_results(*, fingerprint: str = FINGERPRINT, version: int = 0,
                 kind: str = "baseline") -> RunResults:
    """A small but complete run; `version` makes every document distinguishable."""
    step_time = Metric(name="step_time", unit="s", better="lower", kind="time",
                       samples=(0.101, 0.100 + version * 1e-4, 0.102, 0.099), tolerance=0.05)
    memory = Metric(name="peak_allocated_bytes", unit="bytes", better="lower", kind="memory",
                    samples=(14.2 * 2**30,), theory=14.0 * 2**30)
    return RunResults(kind=kind, fingerprint=fingerprint,  # type: ignore[arg-type]
                      environment={"gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.13.0",
                                   "version": version},
                      metrics={STEP_TIME_ID: step_time, PEAK_MEMORY_ID: memory},
                      created=f"2026-01-01T00:00:{version % 60:02d}Z")


def write_document(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def version_of(results: RunResults) -> int:
    return int(results.environment["version"])


# --- round trip and paths -------------------------------------------------------------------


def test_save_and_load_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = make_results()
    path = tmp_path / "nested" / "dir" / "run.json"
    save_results(path, original)
    loaded = load_results(path)
    assert loaded == original
    assert loaded.metrics[STEP_TIME_ID].samples == original.metrics[STEP_TIME_ID].samples


def test_saved_file_holds_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    save_results(path, make_results())
    document = json.loads(path.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["environment"]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    stored = document["metrics"][STEP_TIME_ID]
    assert {"unit", "better", "median", "spread", "count", "samples", "tolerance"} <= set(stored)
    assert stored["count"] == 4 and stored["median"] == pytest.approx(0.1005)


def test_baseline_path_is_fingerprint_dot_json(tmp_path: Path) -> None:
    assert baseline_path(tmp_path, "nvidia-h200") == tmp_path / "nvidia-h200.json"


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "h100 x8", None])
def test_baseline_path_rejects_fingerprints_that_are_not_file_names(tmp_path: Path,
                                                                    bad: object) -> None:
    with pytest.raises(ValueError, match="fingerprint must be a file-name-safe slug"):
        baseline_path(tmp_path, bad)  # type: ignore[arg-type]


def test_saved_file_is_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    save_results(path, make_results())
    assert path.stat().st_mode & 0o777 == 0o644


# --- loading errors name the file and the problem ----------------------------------------------


def test_missing_results_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(StoreError, match=r"nowhere\.json: file does not exist"):
        load_results(path)


def test_missing_baseline_is_none_not_an_error(tmp_path: Path) -> None:
    assert load_baseline(tmp_path, FINGERPRINT) is None
    assert load_baseline(tmp_path / "not-created-yet", FINGERPRINT) is None


def test_truncated_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / f"{FINGERPRINT}.json"
    save_results(path, make_results())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(StoreError) as info:
        load_baseline(tmp_path, FINGERPRINT)
    assert str(info.value).startswith(str(path))
    assert "truncated JSON" in str(info.value)


def test_empty_file_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text("")
    with pytest.raises(StoreError, match=r"empty\.json: truncated JSON"):
        load_results(path)


def test_garbage_in_the_middle_is_reported_as_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"schema_version": 1, oops, "kind": "baseline"}')
    with pytest.raises(StoreError, match=r"bad\.json: invalid JSON at line 1"):
        load_results(path)


def test_directory_instead_of_file_is_refused_naming_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"is a directory, not a regular file; give the path"):
        load_results(tmp_path)


def test_unknown_schema_version_names_the_file_and_version(tmp_path: Path) -> None:
    document = make_results().to_json()
    document["schema_version"] = SCHEMA_VERSION + 1
    path = write_document(tmp_path / "future.json", document)
    with pytest.raises(StoreError) as info:
        load_results(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert f"schema_version {SCHEMA_VERSION + 1}" in message


@pytest.mark.parametrize("field", ["kind", "fingerprint", "environment", "metrics"])
def test_missing_top_level_field_names_the_file_and_field(tmp_path: Path, field: str) -> None:
    document = make_results().to_json()
    del document[field]
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError) as info:
        load_results(path)
    assert str(info.value).startswith(str(path))
    assert f"missing field {field!r}" in str(info.value)


@pytest.mark.parametrize("field", ["unit", "better", "samples", "median", "spread", "count"])
def test_missing_metric_field_names_the_file_metric_and_field(tmp_path: Path, field: str) -> None:
    document = make_results().to_json()
    del document["metrics"][STEP_TIME_ID][field]
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError) as info:
        load_results(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert STEP_TIME_ID in message and f"missing field {field!r}" in message


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("unit", 5, "field 'unit' must be str, got 5"),
    ("better", True, "field 'better' must be str, got True"),
    ("samples", "0.1", "field 'samples' must be list"),
    ("median", "0.1", "field 'median' must be a number, got '0.1'"),
    ("count", 4.0, "field 'count' must be int, got 4.0"),
    ("tolerance", "5%", "'tolerance' must be a number or null"),
    ("reliable", "no", "field 'reliable' must be bool, got 'no'"),
    ("kind", 3, "kind must be one of time, throughput, memory, dataloader, other; got 3"),
])
def test_mistyped_metric_field_names_the_file_and_field(tmp_path: Path, field: str,
                                                        value: object, expected: str) -> None:
    document = make_results().to_json()
    document["metrics"][STEP_TIME_ID][field] = value
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError) as info:
        load_results(path)
    message = str(info.value)
    assert message.startswith(f"{path}: metric {STEP_TIME_ID!r}")
    assert expected in message


def test_mistyped_environment_names_the_field(tmp_path: Path) -> None:
    document = make_results().to_json()
    document["environment"] = ["torch", "2.13"]
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError, match=r"doc\.json: field 'environment' must be dict"):
        load_results(path)


def test_hand_edited_median_that_disagrees_with_samples_is_refused(tmp_path: Path) -> None:
    document = make_results().to_json()
    document["metrics"][STEP_TIME_ID]["median"] = 0.09
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError, match=r"stored median 0\.09 disagrees with the median"):
        load_results(path)


def test_count_that_disagrees_with_samples_is_refused(tmp_path: Path) -> None:
    document = make_results().to_json()
    document["metrics"][STEP_TIME_ID]["count"] = 7
    path = write_document(tmp_path / "doc.json", document)
    with pytest.raises(StoreError, match=r"stored count 7 disagrees with its 4 samples"):
        load_results(path)


@pytest.mark.parametrize("foreign_fingerprint", ["nvidia-a100-sxm4-80gb-x1", "../not a slug"])
def test_another_hardwares_file_is_never_used(tmp_path: Path, foreign_fingerprint: str) -> None:
    path = baseline_path(tmp_path, FINGERPRINT)
    save_results(path, make_results(fingerprint=foreign_fingerprint))
    with pytest.raises(StoreError) as info:
        load_baseline(tmp_path, FINGERPRINT)
    message = str(info.value)
    assert message.startswith(str(path))
    assert repr(foreign_fingerprint) in message and repr(FINGERPRINT) in message


# --- atomic writes -------------------------------------------------------------------------


def test_failed_serialisation_leaves_the_old_file_intact(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    save_results(path, make_results(version=1))
    before = path.read_bytes()

    def dump_half_then_fail(document: object, stream, **kwargs: object) -> None:
        stream.write(json.dumps(document)[:40])
        raise RuntimeError("disk vanished mid-write")

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(RuntimeError, match="disk vanished"):
        save_results(path, make_results(version=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left


def test_failed_baseline_write_keeps_old_file_and_adds_no_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_baseline(tmp_path, make_results(version=1))
    before = baseline_path(tmp_path, FINGERPRINT).read_bytes()

    def dump_half_then_fail(document: object, stream, **kwargs: object) -> None:
        stream.write("{\"schema_version\": 1, \"kind\": ")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(StoreError, match="No space left on device"):
        write_baseline(tmp_path, make_results(version=2))
    assert baseline_path(tmp_path, FINGERPRINT).read_bytes() == before
    assert not (tmp_path / "history").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_failed_rename_removes_the_history_copy(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_baseline(tmp_path, make_results(version=1))
    before = baseline_path(tmp_path, FINGERPRINT).read_bytes()
    real_replace = __import__("os").replace

    def replace_fails_for_the_baseline(src: str, dst: str) -> None:
        if Path(dst) == baseline_path(tmp_path, FINGERPRINT):
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr("os.replace", replace_fails_for_the_baseline)
    with pytest.raises(StoreError, match="replacing the file failed"):
        write_baseline(tmp_path, make_results(version=2))
    assert baseline_path(tmp_path, FINGERPRINT).read_bytes() == before
    assert list((tmp_path / "history" / FINGERPRINT).iterdir()) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_unserialisable_environment_is_a_store_error(tmp_path: Path) -> None:
    results = make_results()
    results.environment["device"] = object()
    with pytest.raises(StoreError, match=r"run\.json: the results cannot be written as JSON"):
        save_results(tmp_path / "run.json", results)
    assert not (tmp_path / "run.json").exists()
    assert list(tmp_path.iterdir()) == []


# --- baselines and history -----------------------------------------------------------------


def test_first_baseline_has_no_history(tmp_path: Path) -> None:
    assert write_baseline(tmp_path, make_results(version=1)) is None
    loaded = load_baseline(tmp_path, FINGERPRINT)
    assert loaded is not None and version_of(loaded) == 1


def test_write_baseline_stores_kind_baseline(tmp_path: Path) -> None:
    write_baseline(tmp_path, make_results(kind="results"))
    loaded = load_baseline(tmp_path, FINGERPRINT)
    assert loaded is not None and loaded.kind == "baseline"


def test_replaced_baseline_moves_to_history_byte_for_byte(tmp_path: Path) -> None:
    write_baseline(tmp_path, make_results(version=1))
    old_bytes = baseline_path(tmp_path, FINGERPRINT).read_bytes()
    archived = write_baseline(tmp_path, make_results(version=2))
    assert archived is not None
    assert archived.parent == tmp_path / "history" / FINGERPRINT
    assert archived.read_bytes() == old_bytes
    current = load_baseline(tmp_path, FINGERPRINT)
    assert current is not None and version_of(current) == 2


def test_write_replaces_rather_than_merges(tmp_path: Path) -> None:
    write_baseline(tmp_path, make_results(version=1))
    smaller = make_results(version=2)
    del smaller.metrics[PEAK_MEMORY_ID]
    write_baseline(tmp_path, smaller)
    current = load_baseline(tmp_path, FINGERPRINT)
    assert current is not None and set(current.metrics) == {STEP_TIME_ID}


def test_history_is_listed_oldest_first_with_current_last(tmp_path: Path) -> None:
    for version in range(1, 6):
        write_baseline(tmp_path, make_results(version=version))
    entries = history(tmp_path, FINGERPRINT)
    assert [version_of(results) for _, results in entries] == [1, 2, 3, 4, 5]
    assert entries[-1][0] == baseline_path(tmp_path, FINGERPRINT)
    assert all(path.parent.name == FINGERPRINT for path, _ in entries[:-1])


def test_history_of_unknown_fingerprint_is_empty(tmp_path: Path) -> None:
    assert history(tmp_path, "nvidia-b200-x8") == []


def test_a_damaged_old_baseline_is_kept_byte_for_byte_apart_from_the_history(
        tmp_path: Path) -> None:
    path = baseline_path(tmp_path, FINGERPRINT)
    path.write_text('{"schema_version": 1, "kind": "base')
    archived = write_baseline(tmp_path, make_results(version=1))
    assert archived is not None and archived.name.endswith(".json.unreadable")
    assert archived.read_text() == '{"schema_version": 1, "kind": "base'
    # The history still loads: the unreadable copy is kept, but not as a baseline.
    assert [version_of(results) for _, results in history(tmp_path, FINGERPRINT)] == [1]


def test_a_damaged_history_entry_is_named_when_the_history_is_read(tmp_path: Path) -> None:
    write_baseline(tmp_path, make_results(version=1))
    archived = write_baseline(tmp_path, make_results(version=2))
    assert archived is not None
    archived.write_text('{"schema_version": 1, "kind": "base')
    with pytest.raises(StoreError, match=rf"{archived.name}: truncated JSON"):
        history(tmp_path, FINGERPRINT)


def test_list_fingerprints_lists_current_baselines_only(tmp_path: Path) -> None:
    assert list_fingerprints(tmp_path / "absent") == []
    write_baseline(tmp_path, make_results(fingerprint="nvidia-h200-x8", version=1))
    write_baseline(tmp_path, make_results(fingerprint="nvidia-a100-sxm4-80gb-x1", version=1))
    write_baseline(tmp_path, make_results(fingerprint="nvidia-h200-x8", version=2))
    (tmp_path / "notes.txt").write_text("not a baseline")
    assert list_fingerprints(tmp_path) == ["nvidia-a100-sxm4-80gb-x1", "nvidia-h200-x8"]


# --- concurrent writers --------------------------------------------------------------------

WRITES_PER_PROCESS = 15


def _write_many(directory: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    for i in range(WRITES_PER_PROCESS):
        write_baseline(Path(directory), make_results(version=writer * 1000 + i))


def test_concurrent_writer_processes_never_interleave_or_lose_a_version(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    writers = [context.Process(target=_write_many, args=(str(tmp_path), w, start))
               for w in (1, 2)]
    for process in writers:
        process.start()
    start.set()
    # While they write, every read sees a complete, valid file (or none yet).
    while any(p.is_alive() for p in writers):
        load_baseline(tmp_path, FINGERPRINT)
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    entries = history(tmp_path, FINGERPRINT)
    versions = [version_of(results) for _, results in entries]
    expected = {w * 1000 + i for w in (1, 2) for i in range(WRITES_PER_PROCESS)}
    assert len(versions) == len(expected) and set(versions) == expected  # each exactly once
    for writer in (1, 2):  # each writer's own versions appear in the order it wrote them
        own = [v for v in versions if v // 1000 == writer]
        assert own == sorted(own)
    assert not list(tmp_path.glob(".*.tmp"))


# A refresh in a fresh process (forking the test process, which may run threads, is not safe):
# merge this writer's metric into the baseline as `--perf-update-baselines` does, many times over,
# each round's samples one higher than the last.
REFRESHER = """
import sys
from pathlib import Path
from harness.gate import store
from harness.gate.results import Metric, RunResults

directory, fingerprint, mid, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for round_ in range(rounds):
    def merge(current, round_=round_):
        metrics = {} if current is None else dict(current.metrics)
        metrics[mid] = Metric(name="step_time", unit="s", better="lower", kind="time",
                              samples=(1.0 + round_,))
        return RunResults(kind="baseline", fingerprint=fingerprint, environment={},
                          metrics=metrics, created="2026-01-01T00:00:00+00:00")
    store.update_baseline(directory, fingerprint, merge)
"""

REFRESH_ROUNDS = 25


def test_concurrent_refreshes_of_different_tests_lose_no_metric_and_roll_none_back(
        tmp_path: Path) -> None:
    ids = [f"perf_tests/test_{name}.py::test_step::step_time" for name in ("gpt2", "llama")]
    writers = [subprocess.Popen([sys.executable, "-c", REFRESHER, str(tmp_path), FINGERPRINT,
                                 mid, str(REFRESH_ROUNDS)]) for mid in ids]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    entries = history(tmp_path, FINGERPRINT)
    assert len(entries) == 2 * REFRESH_ROUNDS  # every write kept, none overwritten unseen
    final = entries[-1][1].metrics
    assert {mid: final[mid].median for mid in ids} == dict.fromkeys(ids, REFRESH_ROUNDS)
    for mid in ids:  # once written, a writer's metric never vanishes or goes back in time
        seen = [results.metrics[mid].median if mid in results.metrics else None
                for _, results in entries]
        first = seen.index(1.0)
        assert None not in seen[first:]
        assert seen[first:] == sorted(seen[first:])
        assert set(seen[first:]) == {1.0 + r for r in range(REFRESH_ROUNDS)}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- a refresh through the plugin, into a directory outside the rootdir ----------------------

PLUGIN_CONFTEST = """
import pytest

from harness.testing import FakeClock, FakeGpuMonitor


@pytest.fixture
def perf_clock():
    return FakeClock(seed=1, base_seconds=1e-3, noise_cv=0.01)


@pytest.fixture
def perf_gpu_monitor():
    return FakeGpuMonitor()
"""


def test_a_refresh_outside_the_rootdir_keeps_the_old_baseline_in_its_history_and_says_where(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import environment

    monkeypatch.setattr(environment, "cuda_available", lambda: False)
    pytester.makeini("[pytest]\n")  # pins the rootdir to the project
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_kernel="def test_kernel(perf):\n    perf.time(lambda: None)\n")
    baselines = tmp_path_factory.mktemp("baselines_elsewhere")
    assert not baselines.is_relative_to(pytester.path)
    fingerprint = environment.cpu_fingerprint()
    args = ("-p", "harness.pytest_plugin", "-p", "no:cacheprovider", "--perf-device", "cpu",
            "--perf-confirm-delay", "0", "--perf-update-baselines",
            f"--perf-baselines={baselines}")
    assert pytester.runpytest(*args).ret == 0
    current = baselines / f"{fingerprint}.json"
    first = current.read_bytes()

    result = pytester.runpytest(*args)

    assert result.ret == 0, result.stdout.str()
    kept = sorted((baselines / "history" / fingerprint).iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == first
    assert HISTORY_NAME_PATTERN.fullmatch(kept[0].name.removesuffix(".json"))
    assert sorted(p.name for p in baselines.iterdir()) == [f"{fingerprint}.json", "history"]
    assert not list(pytester.path.rglob("*.json"))  # nothing went to the project
    assert not list(baselines.parent.glob("*.json"))  # nor beside the baselines directory
    wrote = [line for line in result.outlines if line.startswith("wrote ")]
    assert wrote == [f"wrote {current} (1 metric(s)); the previous one is kept as {kept[0]}"]
