"""Bad input a new user would give: every case ends in a clear error that names the thing and the
fix, never a silent pass, a raw traceback or lost data.

Grouped as the report of those cases was: data loss, silently accepted input, raw tracebacks,
files left behind. The concurrent-refresh case (two processes) is in tests/test_store.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

# Loaded here, in the outer process: pytester's in-process runs drop the modules they imported
# afterwards, and torch's C extension cannot be imported a second time.
import torch  # noqa: F401

from harness import cli
from harness.gate import atomic, store
from harness.gate.fleet import RunSummary
from harness.gate.paired import paired_verdict
from harness.gate.results import Metric, RunResults
from harness.gate.run_options import PerfOptions
from harness.gate.session import PerfSession
from harness.gate.tolerance import parse_tolerance, require_tolerance
from harness.measure import environment

FINGERPRINT = "nvidia-h100-80gb-hbm3-x1"
STEP_TIME = "perf_tests/test_gpt2.py::test_train_step::step_time"
OTHER_STEP_TIME = "perf_tests/test_llama.py::test_train_step::step_time"


def step_time(median: float = 0.1, **changes: Any) -> Metric:
    fields: dict[str, Any] = {"name": "step_time", "unit": "s", "better": "lower",
                              "kind": "time",
                              "samples": (median * 0.99, median, median * 1.01)}
    fields.update(changes)
    return Metric(**fields)


def results(metrics: dict[str, Metric], *, created: str = "2026-01-15T02:00:00+00:00",
            kind: str = "baseline") -> RunResults:
    return RunResults(kind=kind, fingerprint=FINGERPRINT,  # type: ignore[arg-type]
                      environment={"torch": "2.13.0"}, metrics=metrics, created=created)


def document() -> dict[str, Any]:
    return results({STEP_TIME: step_time()}).to_json()


def session(directory: Path, *, update: bool = True) -> PerfSession:
    return PerfSession(PerfOptions(baselines_dir=directory, device="cpu",
                                   update_baselines=update), {"fingerprint": FINGERPRINT})


def hidden_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- data loss 1: a bad field is refused when the Metric is made, and never written ---------


@pytest.mark.parametrize(("changes", "message"), [
    ({"theory": "abc"}, "metric 'step_time': theory (the analytic figure, or None) must be a "
                        "finite number, got 'abc'"),
    ({"theory": float("nan")}, "theory (the analytic figure, or None) must be a finite number"),
    ({"unit": ""}, "metric 'step_time': unit (such as 's', 'B' or 'TFLOP/s') must be a "
                   "non-empty string on one line, got ''"),
    ({"unit": 5}, "unit (such as 's', 'B' or 'TFLOP/s') must be a non-empty string"),
    ({"name": "step\ntime"}, "metric name must be on one line"),
    ({"samples": ("0.1",)}, "metric 'step_time': sample 0 must be a finite number, got '0.1'"),
    ({"samples": (True,)}, "sample 0 must be a finite number, got True"),
    ({"samples": "0.1"}, "samples must be a non-empty sequence of numbers, got '0.1'"),
    ({"samples": (10**400,)}, "sample 0 must be a finite number, got an integer of about 401 "
                              "digits"),
    ({"reliable": "no"}, "metric 'step_time': reliable must be True or False, got 'no'"),
    ({"host_bound": 1}, "metric 'step_time': host_bound must be True or False, got 1"),
    ({"note": 5}, "metric 'step_time': note must be a string, got 5"),
    ({"profile": {"kernels": []}}, "profile must be a DeviceProfile or None"),
    ({"runs": ("run",)}, "runs must be a tuple of RunSummary"),
])
def test_every_metric_field_is_checked_when_the_metric_is_made(changes: dict[str, Any],
                                                                 message: str) -> None:
    with pytest.raises(ValueError) as info:
        step_time(**changes)
    assert message in str(info.value)


def test_a_valid_metric_keeps_its_fields_as_given() -> None:
    run = RunSummary(median=0.1, spread=0.01, count=3, host="runner-1", created="2026-01-01")
    metric = step_time(theory=1, runs=[run])
    assert metric.theory == 1.0 and isinstance(metric.theory, float)
    assert metric.runs == (run,)


def test_a_baseline_that_would_not_load_back_is_never_written(tmp_path: Path) -> None:
    store.write_baseline(tmp_path, results({STEP_TIME: step_time()}))
    before = store.baseline_path(tmp_path, FINGERPRINT).read_bytes()
    broken = step_time(0.2)
    object.__setattr__(broken, "theory", "abc")  # what the old, unchecked Metric let through
    with pytest.raises(store.StoreError) as info:
        store.write_baseline(tmp_path, results({STEP_TIME: broken}))
    message = str(info.value)
    assert message.startswith(f"{store.baseline_path(tmp_path, FINGERPRINT)}: not written, the "
                              f"new version would not load back")
    assert "'theory' must be a number or null, got 'abc'" in message
    assert store.baseline_path(tmp_path, FINGERPRINT).read_bytes() == before
    assert not (tmp_path / "history").exists()
    assert hidden_leftovers(tmp_path) == []


def test_results_with_a_bad_schema_version_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match=r"schema_version must be 2 \(older versions are only "
                                         r"read, never written\), got True"):
        RunResults(kind="results", fingerprint=FINGERPRINT, environment={},
                   schema_version=True)  # type: ignore[arg-type]


# --- a corrupt baseline under --perf-update-baselines is kept and replaced ------------------


def test_refresh_over_a_corrupt_baseline_keeps_it_and_writes_the_new_one(tmp_path: Path) -> None:
    path = store.baseline_path(tmp_path, FINGERPRINT)
    path.write_text('{"schema_version": 2, "kind": "baseline", "metrics": {')
    given: list[RunResults | None] = []

    def merge(current: RunResults | None) -> RunResults:
        given.append(current)
        return results({STEP_TIME: step_time()})

    update = store.update_baseline(tmp_path, FINGERPRINT, merge)
    assert given == [None] and update.old is None
    assert update.archived is not None and update.archived.name.endswith(".json.unreadable")
    assert update.archived.read_text() == '{"schema_version": 2, "kind": "baseline", "metrics": {'
    loaded = store.load_baseline(tmp_path, FINGERPRINT)
    assert loaded is not None and set(loaded.metrics) == {STEP_TIME}


def test_session_under_update_baselines_reads_past_a_corrupt_baseline(tmp_path: Path) -> None:
    store.baseline_path(tmp_path, FINGERPRINT).write_text("{not json")
    with pytest.raises(store.StoreError, match=r"invalid JSON at line 1 column 2"):
        session(tmp_path, update=False).load_reference()
    refresh = session(tmp_path)
    refresh.load_reference()
    assert refresh.reference is None
    assert refresh.end_notes[0].startswith("WARNING: the current baseline cannot be read, so "
                                           "this run replaces it")
    refresh.record("perf_tests/test_gpt2.py::test_train_step", step_time())
    old, new, archived = refresh.write_baseline()
    assert old is None and archived is not None and archived.read_text() == "{not json"
    assert store.load_baseline(tmp_path, FINGERPRINT) == new


def test_session_refresh_merges_into_what_another_run_wrote_since_it_started(
        tmp_path: Path) -> None:
    """The lost-update case in one process: this run read no baseline at its start, another
    run wrote one since; this run's refresh keeps the other run's metric."""
    late = session(tmp_path)
    late.load_reference()
    store.write_baseline(tmp_path, results({OTHER_STEP_TIME: step_time(0.3)}))
    late.record("perf_tests/test_gpt2.py::test_train_step", step_time(0.1))
    old, new, _ = late.write_baseline()
    assert old is not None and set(old.metrics) == {OTHER_STEP_TIME}
    loaded = store.load_baseline(tmp_path, FINGERPRINT)
    assert loaded is not None and set(loaded.metrics) == {STEP_TIME, OTHER_STEP_TIME}
    assert loaded.metrics[OTHER_STEP_TIME].median == pytest.approx(0.3)


# --- silently accepted before ----------------------------------------------------------------


def write_json(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_schema_version_true_in_a_file_is_refused(tmp_path: Path) -> None:
    data = document()
    data["schema_version"] = True
    path = write_json(tmp_path / "run.json", json.dumps(data))
    with pytest.raises(store.StoreError, match=r"run\.json: schema_version True is not "
                                               r"supported"):
        store.load_results(path)


@pytest.mark.parametrize(("kind", "unit"), [("time", "s"), ("memory", "B"),
                                            ("throughput", "TFLOP/s"), ("dataloader", "s")])
def test_negative_samples_of_a_time_memory_or_rate_are_refused(kind: str, unit: str) -> None:
    with pytest.raises(ValueError, match=rf"metric 'm': sample 1 is -2\.0, but a {kind} metric "
                                         r"is a duration, a size or a rate and cannot be "
                                         r"negative; .* kind='other'"):
        Metric(name="m", unit=unit, better="lower", kind=kind,  # type: ignore[arg-type]
               samples=(1.0, -2.0))
    assert Metric(name="m", unit="B", better="lower", kind="other", samples=(-2.0,)).median == -2


def test_a_negative_time_sample_in_a_file_names_the_file_and_metric(tmp_path: Path) -> None:
    data = document()
    data["metrics"][STEP_TIME]["samples"] = [0.1, -0.1, 0.1]
    data["metrics"][STEP_TIME]["median"] = 0.1
    path = write_json(tmp_path / "run.json", json.dumps(data))
    with pytest.raises(store.StoreError) as info:
        store.load_results(path)
    assert str(info.value).startswith(f"{path}: metric {STEP_TIME!r}: ")
    assert "cannot be negative" in str(info.value)


def test_a_metric_id_twice_in_one_object_is_refused_with_its_line(tmp_path: Path) -> None:
    text = json.dumps(document(), indent=2)
    entry = json.dumps(document()["metrics"][STEP_TIME], indent=2)
    duplicated = text.replace('"metrics": {', f'"metrics": {{\n"{STEP_TIME}": {entry},', 1)
    path = write_json(tmp_path / "run.json", duplicated)
    second = duplicated.rindex(f'"{STEP_TIME}"')
    line = duplicated[:second].count("\n") + 1
    column = second - duplicated.rindex("\n", 0, second)
    with pytest.raises(store.StoreError) as info:
        store.load_results(path)
    assert str(info.value).startswith(f"{path}: key {STEP_TIME!r} appears twice in one object "
                                      f"(at line {line} column {column}); a reader would "
                                      f"silently keep only one")


def test_a_dangling_symlink_baseline_is_an_error_not_no_baseline(tmp_path: Path) -> None:
    path = store.baseline_path(tmp_path, FINGERPRINT)
    path.symlink_to(tmp_path / "moved-away.json")
    with pytest.raises(store.StoreError, match=rf"{path.name}: is a symbolic link to "
                                               r"'.*moved-away\.json', which does not exist; "
                                               r"point the link at .* or remove it"):
        store.load_baseline(tmp_path, FINGERPRINT)
    assert store.list_fingerprints(tmp_path) == [FINGERPRINT]


def test_a_looping_symlink_baseline_is_an_error_not_no_baseline(tmp_path: Path) -> None:
    path = store.baseline_path(tmp_path, FINGERPRINT)
    path.symlink_to(path.name)
    with pytest.raises(store.StoreError, match=r"is a symbolic link that leads back to itself"):
        store.load_baseline(tmp_path, FINGERPRINT)
    with pytest.raises(store.StoreError, match=r"leads back to itself"):
        store.write_baseline(tmp_path, results({STEP_TIME: step_time()}))


def test_reading_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "main.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            store.load_results(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # unblock the reader before failing, so no thread is left behind
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "w"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], store.StoreError)
    assert str(outcome[0]) == (f"{fifo}: is a FIFO (named pipe), not a regular file; give the "
                               f"path of a results or baseline .json file")


def test_a_baselines_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "baselines"
    not_a_directory.write_text("")
    with pytest.raises(store.StoreError, match=r"baselines: is a regular file, not a directory; "
                                               r"the baselines directory holds one"):
        store.load_baseline(not_a_directory, FINGERPRINT)
    with pytest.raises(store.StoreError, match=r"is a regular file, not a directory"):
        store.write_baseline(not_a_directory, results({STEP_TIME: step_time()}))


# --- the plugin's path options ----------------------------------------------------------------


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


def run_plugin(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_score="def test_score(perf):\n"
                                   "    perf.metric('score', 1.0, unit='ratio')\n")
    return pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                              "--perf-device", "cpu", *args)


@pytest.mark.usefixtures("cpu_only")
def test_perf_compare_with_a_fifo_is_a_usage_error(pytester: pytest.Pytester) -> None:
    os.mkfifo(pytester.path / "main.json")
    result = run_plugin(pytester, "--perf-compare=main.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-compare (command line): *main.json is a FIFO (named "
                                 "pipe), not a regular file; give a results file saved with "
                                 "--perf-save*"])


@pytest.mark.usefixtures("cpu_only")
def test_perf_baselines_pointing_at_a_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "baselines.json").write_text("{}")
    result = run_plugin(pytester, "--perf-baselines=baselines.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-baselines (command line): *baselines.json is a regular "
                                 "file, not a directory; give the directory that holds the "
                                 "<fingerprint>.json baselines*"])


@pytest.mark.usefixtures("cpu_only")
def test_perf_metric_with_a_text_theory_fails_its_test_and_writes_nothing(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_theory="def test_theory(perf):\n"
                                    "    perf.metric('score', 1.0, unit='ratio', theory='abc')\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                                "--perf-device", "cpu", "--perf-update-baselines",
                                "--perf-force", "test_theory.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: metric 'score': theory (the analytic figure, or "
                                 "None) must be a finite number, got 'abc'*"])
    assert not (pytester.path / "baselines").exists()


@pytest.mark.usefixtures("cpu_only")
def test_update_baselines_over_a_corrupt_baseline_replaces_it(pytester: pytest.Pytester) -> None:
    baselines = pytester.path / "baselines"
    baselines.mkdir()
    cpu = environment.cpu_fingerprint()
    (baselines / f"{cpu}.json").write_text('{"schema_version": 2, "kind": "base')
    result = run_plugin(pytester, "--perf-update-baselines")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"*WARNING: the current baseline cannot be read, so this run "
                                 f"replaces it: *{cpu}.json: truncated JSON*",
                                 f"*wrote *{cpu}.json (1 metric(s)); the previous one is kept "
                                 f"as *history/{cpu}/*.json.unreadable*"])
    loaded = store.load_baseline(baselines, cpu)
    assert loaded is not None and list(loaded.metrics) == ["test_score.py::test_score::score"]
    assert hidden_leftovers(baselines) == []


# --- compare that would judge nothing ---------------------------------------------------------


def test_compare_of_a_file_with_itself_exits_2_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "main.json"
    store.save_results(path, results({STEP_TIME: step_time()}, kind="results"))
    link = tmp_path / "also-main.json"
    link.symlink_to(path)
    assert cli.main(["compare", str(path), str(link)]) == 2
    assert (f"error: {link} is {path}: a file compared with itself changes by nothing"
            in capsys.readouterr().err)


def test_compare_of_a_copy_of_the_same_run_exits_2(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    base, new = tmp_path / "main.json", tmp_path / "pr.json"
    store.save_results(base, results({STEP_TIME: step_time()}, kind="results"))
    new.write_bytes(base.read_bytes())
    assert cli.main(["compare", str(base), str(new)]) == 2
    assert "hold the same run" in capsys.readouterr().err


def test_compare_against_a_base_without_metrics_exits_2(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base, new = tmp_path / "main.json", tmp_path / "pr.json"
    store.save_results(base, results({}, kind="results"))
    store.save_results(new, results({STEP_TIME: step_time()}, kind="results",
                                    created="2026-01-16T02:00:00+00:00"))
    assert cli.main(["compare", str(base), str(new)]) == 2
    assert (f"error: {base}: holds no metrics, so every metric of {new} would pass unjudged"
            in capsys.readouterr().err)


# --- raw tracebacks before ---------------------------------------------------------------------


def test_deeply_nested_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_json(tmp_path / "run.json", '{"metrics":\n' + "[" * 100_000)
    with pytest.raises(store.StoreError, match=r"run\.json: nested too deeply to read \(deepest "
                                               r"at line 2 column 100000\)"):
        store.load_results(path)


@pytest.mark.parametrize("digits", [309, 400, 5000])
def test_a_huge_integer_names_the_file_and_line(tmp_path: Path, digits: int) -> None:
    data = document()
    text = json.dumps(data, indent=2).replace('"count": 3', '"count": ' + "9" * digits)
    path = write_json(tmp_path / "run.json", text)
    line = text[:text.index("9" * digits)].count("\n") + 1
    with pytest.raises(store.StoreError, match=rf"run\.json: an integer of {digits} digits at "
                                               rf"line {line} column \d+; no number of a "
                                               r"results file is that large"):
        store.load_results(path)


def test_baselines_show_of_a_deeply_nested_file_exits_2(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_json(tmp_path / "run.json", "[" * 100_000)
    assert cli.main(["baselines", "show", str(path)]) == 2
    assert "run.json: nested too deeply to read" in capsys.readouterr().err


def test_a_tolerance_written_as_a_percentage_says_which_fraction_to_write() -> None:
    with pytest.raises(ValueError, match=r"got '5%'; a tolerance is a fraction, write 0\.05 for "
                                         r"5%"):
        step_time(tolerance="5%")
    with pytest.raises(ValueError, match=r"--tolerance must be .* got '5%'; .* write 0\.05"):
        parse_tolerance("--tolerance", "5%")
    assert parse_tolerance("--tolerance", "0.05") == 0.05
    with pytest.raises(ValueError, match=r"got an integer of about 401 digits"):
        require_tolerance("tolerance", 10**400)
    with pytest.raises(ValueError, match=r"got '5%'; a tolerance is a fraction, write 0\.05"):
        paired_verdict("t.py::t::step_time", "lower", [1.0] * 5, [1.0] * 5, tolerance="5%",
                       alpha=0.01)  # type: ignore[arg-type]


def test_compare_with_a_percentage_tolerance_exits_2_with_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "main.json"
    store.save_results(path, results({STEP_TIME: step_time()}, kind="results"))
    assert cli.main(["compare", str(path), str(path), "--tolerance", "5%"]) == 2
    assert "write 0.05 for 5%" in capsys.readouterr().err


# --- what a killed writer leaves behind -------------------------------------------------------


# A writer that stops for good once its temporary file is complete (fsync never returns), in a
# fresh interpreter: forking this one, which may have run threads, is not safe.
HANGING_WRITER = """
import os, sys, threading
from pathlib import Path
from harness.gate import store
from harness.gate.results import Metric, RunResults

os.fsync = lambda descriptor: threading.Event().wait()
metric = Metric(name="step_time", unit="s", better="lower", kind="time", samples=(0.2,))
store.write_baseline(Path(sys.argv[1]), RunResults(
    kind="baseline", fingerprint=sys.argv[2], environment={},
    metrics={"t.py::t::step_time": metric}, created="2026-01-15T02:00:00+00:00"))
"""


def test_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    store.write_baseline(tmp_path, results({STEP_TIME: step_time()}))
    writer = subprocess.Popen([sys.executable, "-c", HANGING_WRITER, str(tmp_path), FINGERPRINT])
    try:
        # A guard against hanging forever, not a speed target: the writer needs well under a
        # second; only a writer stuck before its write would reach this.
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(f".{FINGERPRINT}.json.*.tmp")):
            if writer.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the writer never wrote its temporary file")
            time.sleep(0.02)
    finally:
        writer.kill()
        writer.wait()
    assert (tmp_path / f".{FINGERPRINT}.lock").exists()  # it was killed holding the lock
    store.write_baseline(tmp_path, results({STEP_TIME: step_time(0.3)}))
    assert hidden_leftovers(tmp_path) == []
    loaded = store.load_baseline(tmp_path, FINGERPRINT)
    assert loaded is not None and loaded.metrics[STEP_TIME].median == pytest.approx(0.3)


def test_stale_rule_keeps_live_and_young_temporaries_and_removes_the_rest(tmp_path: Path) -> None:
    path = store.baseline_path(tmp_path, FINGERPRINT)
    host = atomic._host_tag()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".{path.name}.{host}.{finished.pid}.abc123.tmp"
    live = tmp_path / f".{path.name}.{host}.{os.getpid()}.def456.tmp"
    other_host_young = tmp_path / f".{path.name}.elsewhere.{finished.pid}.ghi789.tmp"
    old_without_writer = tmp_path / f".{path.name}.jkl012.tmp"
    for leftover in (dead, live, other_host_young, old_without_writer):
        leftover.write_text("{")
    stale = atomic.STALE_TEMPORARY_SECONDS + 60
    os.utime(old_without_writer, (os.path.getmtime(old_without_writer) - stale,) * 2)
    assert sorted(atomic.remove_stale_temporaries(tmp_path, path.name)) == sorted(
        [dead, old_without_writer])
    assert live.exists() and other_host_young.exists()


def test_no_lock_file_is_left_in_the_baselines_directory(tmp_path: Path) -> None:
    store.write_baseline(tmp_path, results({STEP_TIME: step_time()}))
    store.update_baseline(tmp_path, FINGERPRINT, lambda current: results({STEP_TIME:
                                                                         step_time(0.2)}))
    assert hidden_leftovers(tmp_path) == []


def test_a_waiter_woken_on_a_removed_lock_file_does_not_run_beside_the_next_holder(
        tmp_path: Path) -> None:
    """The holder removes the lock file before letting go. A waiter blocked on that file wakes
    holding the lock of a file no one else can see, while a newcomer creates and locks a new
    one; the waiter must notice and wait again, so the two never overlap."""
    lock_path = tmp_path / ".x.lock"
    order: list[str] = []

    def critical_section(name: str) -> None:
        with atomic.exclusive_lock(lock_path):
            order.append(f"{name} in")
            time.sleep(0.2)
            order.append(f"{name} out")

    waiter = threading.Thread(target=critical_section, args=("waiter",))
    with atomic.exclusive_lock(lock_path):
        waiter.start()
        time.sleep(0.3)  # the waiter has opened this lock file and blocks on it
    critical_section("newcomer")  # at once: creates and locks a new lock file
    waiter.join(timeout=10)
    assert order in (["waiter in", "waiter out", "newcomer in", "newcomer out"],
                     ["newcomer in", "newcomer out", "waiter in", "waiter out"])
    assert not lock_path.exists()
