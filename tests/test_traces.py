"""`--perf-trace=DIR`: where each measurement's trace goes, that only regressed tests keep theirs,
and the option's checks (the plugin through pytester, the session directly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch  # noqa: F401  (loaded once here: the inner runs must not import it a second time)

from harness.gate import traces
from harness.gate.results import Metric, RunResults
from harness.gate.run_options import PerfOptions
from harness.gate.session import PerfSession
from harness.measure import environment

NODE = "perf_tests/test_training.py::test_step[gpt-none]"


def test_trace_paths_name_the_test_the_measurement_and_the_side(tmp_path: Path) -> None:
    path = traces.trace_path(tmp_path, NODE, "gpt2_train_step",
                             {"git_commit": "0123456789abcdef", "git_dirty": True})
    assert path == (tmp_path / "perf_tests_test_training.py_test_step_gpt-none"
                    / "gpt2_train_step.0123456789ab-dirty.trace.json.gz")
    assert traces.side_name({}) == "no-git"
    long_ids = {traces.slug(f"test.py::test[{'x' * 300}{i}]") for i in range(3)}
    assert len(long_ids) == 3 and all(len(s) <= traces.MAX_SLUG_LENGTH for s in long_ids)


def session_with_reference(tmp_path: Path, *, trace_all: bool = False) -> PerfSession:
    session = PerfSession(PerfOptions(baselines_dir=tmp_path / "b", device="cpu",
                                      trace_dir=tmp_path / "traces", trace_all=trace_all),
                          {"fingerprint": "nvidia-h200", "git_commit": "abc"})
    base = Metric(name="step_time", unit="s", better="lower", kind="time",
                  samples=tuple(0.05 * (1 + 0.001 * i) for i in range(10)))
    session.reference = RunResults(kind="baseline", fingerprint="nvidia-h200", environment={},
                                   metrics={f"{test}::step_time": base
                                            for test in ("t.py::slow", "t.py::same")})
    for test, factor in (("t.py::slow", 1.2), ("t.py::same", 1.0)):
        trace = session.trace_path(test, "train_step")
        assert trace is not None
        trace.parent.mkdir(parents=True)
        trace.write_bytes(b"trace")
        session.record(test, base.with_changes(samples=tuple(s * factor for s in base.samples)))
        session.conclude_test(test)
    return session


def test_only_the_traces_of_regressed_tests_are_kept(tmp_path: Path) -> None:
    session = session_with_reference(tmp_path)
    assert session.finish(run_ok=False)
    kept = sorted(p.parent.name for p in (tmp_path / "traces").rglob("*.trace.json.gz"))
    assert kept == ["t.py_slow"]
    assert any("kept 1 trace(s) of regressed tests" in note for note in session.end_notes)


def test_trace_all_keeps_every_trace(tmp_path: Path) -> None:
    session = session_with_reference(tmp_path, trace_all=True)
    session.finish(run_ok=False)
    assert len(list((tmp_path / "traces").rglob("*.trace.json.gz"))) == 2


def test_without_the_option_no_trace_is_asked_for(tmp_path: Path) -> None:
    session = PerfSession(PerfOptions(baselines_dir=tmp_path, device="cpu"),
                          {"fingerprint": "cpu"})
    assert session.trace_path(NODE, "time") is None


TARGET_TEST = """
from harness.measure import kernels

def test_target(perf):
    seen = []
    perf.time(lambda: seen.append(kernels._TRACE_TARGET.get()), name="gemm", profile=False)
    print("TARGET", seen[0])
"""


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_target=TARGET_TEST)
    return pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                              "--perf-device", "cpu", "-s", *args)


def test_a_measurement_traces_into_its_tests_folder(pytester: pytest.Pytester,
                                                    no_cuda: None) -> None:
    result = run(pytester, f"--perf-trace={pytester.path / 'traces'}")
    result.stdout.fnmatch_lines([f"*TARGET {pytester.path / 'traces'}/test_target.py_test_target/"
                                 f"gemm.*.trace.json.gz*"])


def test_without_perf_trace_a_measurement_writes_no_trace(pytester: pytest.Pytester,
                                                          no_cuda: None) -> None:
    run(pytester).stdout.fnmatch_lines(["*TARGET None*"])


def test_trace_all_without_a_trace_directory_is_a_usage_error(pytester: pytest.Pytester,
                                                              no_cuda: None) -> None:
    result = run(pytester, "--perf-trace-all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-trace-all (command line) only applies to "
                                 "--perf-trace*"])


def test_a_trace_directory_that_is_a_file_is_a_usage_error(pytester: pytest.Pytester,
                                                           no_cuda: None) -> None:
    (pytester.path / "traces").write_text("x")
    result = run(pytester, f"--perf-trace={pytester.path / 'traces'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*traces is a file; give a directory for the traces*"])
