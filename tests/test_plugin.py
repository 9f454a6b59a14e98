"""The pytest plugin end to end through `pytester`: options, markers, verdicts, baselines, reports.

Measured tests run with a seeded FakeClock (1 ms per call) and a scripted FakeGpuMonitor, put in
place by a conftest.py that overrides the `perf_clock` and `perf_gpu_monitor` fixtures, exactly as
a user would. The outer test sets the clock's seed, noise and slowdown through the environment.
CUDA is reported absent (`environment.cuda_available`), so these tests mean the same on a GPU box.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.gate import store
from harness.gate.results import Metric, RunResults
from harness.measure import environment, memory
from harness.measure.sampling import TimingPolicy
from harness.pytest_plugin.options import DEFAULT_BUDGET_SECONDS

# The hardware key of this machine's CPU runs ("cpu-<model>"), and so its baseline file's name.
FINGERPRINT = environment.cpu_fingerprint()
BASELINE_FILE = f"{FINGERPRINT}.json"

CONFTEST = """
import os

import pytest

from harness.testing import FakeClock, FakeGpuMonitor


@pytest.fixture
def perf_clock():
    return FakeClock(seed=int(os.environ["FAKE_SEED"]), base_seconds=1e-3,
                     noise_cv=float(os.environ["FAKE_NOISE"]),
                     slowdown=float(os.environ["FAKE_SLOWDOWN"]))


@pytest.fixture
def perf_gpu_monitor():
    throttled = int(os.environ["FAKE_THROTTLED_SNAPSHOTS"])
    return FakeGpuMonitor(throttle_reasons=["HwThermalSlowdown"] if throttled else [],
                          throttled_snapshots=throttled)
"""

KERNEL_TEST = """
def test_kernel(perf):
    calls = []
    measurement = perf.time(lambda: calls.append(1), flops=2e9)
    assert calls, "the timed function was never called"
    assert measurement["time"].count >= 10
"""

NODEID = "test_kernel.py::test_kernel"


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin asks `environment.cuda_available`; these tests pin the CPU-only answer."""
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with the fake-clock conftest and one measured test."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_kernel=KERNEL_TEST)
    return pytester


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, seed: int = 1,
        slowdown: float = 1.0, noise: float = 0.01,
        throttled_snapshots: int = 0) -> pytest.RunResult:
    """Run the inner suite with the plugin on the CPU device and a scripted clock and GPU."""
    monkeypatch.setenv("FAKE_SEED", str(seed))
    monkeypatch.setenv("FAKE_SLOWDOWN", str(slowdown))
    monkeypatch.setenv("FAKE_NOISE", str(noise))
    monkeypatch.setenv("FAKE_THROTTLED_SNAPSHOTS", str(throttled_snapshots))
    # No pause before confirming a regression: the tests of the pause set it themselves.
    return pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                              "--perf-device", "cpu", "--perf-confirm-delay", "0", *args)


def record_baseline(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                    *args: str) -> Path:
    result = run(pytester, monkeypatch, "--perf-update-baselines", *args, seed=1)
    assert result.ret == 0, result.stdout.str()
    path = pytester.path / "baselines" / BASELINE_FILE
    assert path.is_file()
    return path


# -- options, markers, devices ----------------------------------------------------------------


def test_help_lists_the_perf_options_and_their_ini_keys(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--help")
    result.stdout.fnmatch_lines([
        "perf-harness: measured tests against stored baselines:",
        "*--perf-baselines=DIR*", "*--perf-update-baselines*", "*--perf-force*",
        "*--perf-save=PATH*", "*--perf-compare=PATH*", "*--perf-device=DEVICE*",
        "*--perf-strict*", "*--perf-tolerance=FLOAT*", "*--perf-budget=SECONDS*",
    ])
    for key in ("perf_baselines", "perf_update_baselines", "perf_force", "perf_save",
                "perf_compare", "perf_device", "perf_strict", "perf_tolerance", "perf_budget"):
        result.stdout.fnmatch_lines([f"  {key} (*"])


def test_help_names_the_default_sampling_budget_of_the_timing_policy(
        pytester: pytest.Pytester) -> None:
    assert DEFAULT_BUDGET_SECONDS == TimingPolicy().budget_seconds
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--help")
    text = " ".join(result.stdout.str().split())  # argparse wraps the help text
    assert (f"--perf-budget=SECONDS sampling time budget of one measurement in seconds "
            f"(default {DEFAULT_BUDGET_SECONDS:g})") in text


def test_markers_lists_gpu_distributed_and_perf(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gpu: (perf-harness) measures on a CUDA device*",
                                 "@pytest.mark.distributed: (perf-harness) reserved for "
                                 "multi-GPU*",
                                 "@pytest.mark.perf: (perf-harness) set on every test that uses "
                                 "the perf fixture*"])


# The markers' meaning for every test, as this repository's own suite has it (an unrelated
# project's own gpu marker is left alone: tests/test_plugin_citizen.py).
ALL_TESTS_INI = "[pytest]\nperf_marker_scope = all\n"

GPU_TEST = """
import pytest

@pytest.mark.gpu
def test_on_gpu(tmp_path_factory):
    (tmp_path_factory.getbasetemp().parent / "gpu-test-ran").write_text("yes")

def test_on_cpu():
    pass
"""


def test_gpu_tests_are_skipped_without_cuda_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makeini(ALL_TESTS_INI)
    pytester.makepyfile(test_gpu=GPU_TEST)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_gpu.py:*: no CUDA device visible: "
                                 "torch.cuda.is_available() is False*"])


def test_dash_m_gpu_without_cuda_stops_before_running_anything(
        pytester: pytest.Pytester) -> None:
    pytester.makeini(ALL_TESTS_INI)
    pytester.makepyfile(test_gpu=GPU_TEST)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-m", "gpu", "--perf-save=out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not (pytester.path / "out.json").exists(), "an aborted run must not save results"
    result.stderr.fnmatch_lines(["ERROR: -m 'gpu' selected 1 GPU test(s), but no CUDA device "
                                 "visible*Nothing was run*without -m gpu*"])
    assert not list(pytester.path.parent.rglob("gpu-test-ran"))
    assert "passed" not in result.stdout.str()


def test_dash_m_gpu_with_perf_device_cpu_is_refused_even_with_cuda(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "cuda_available", lambda: True)
    pytester.makeini(ALL_TESTS_INI)
    pytester.makepyfile(test_gpu=GPU_TEST)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-m", "gpu and not slow",
                                "--perf-device", "cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the perf device is cpu (--perf-device cpu); GPU tests "
                                 "measure on CUDA only*"])


def test_dash_m_not_gpu_runs_the_cpu_tests(pytester: pytest.Pytester) -> None:
    pytester.makeini(ALL_TESTS_INI)
    pytester.makepyfile(test_gpu=GPU_TEST)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-m", "not gpu")
    result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.parametrize(("args", "message"), [
    (["--perf-tolerance", "-1"], "--perf-tolerance (command line): '-1' is not valid; it must be "
                                 "a relative change between 0 and 10, such as 0.05 for 5%"),
    (["--perf-tolerance", "five"], "--perf-tolerance (command line): 'five' is not valid*"),
    (["--perf-budget", "0"], "--perf-budget (command line): '0' is not valid; it must be a "
                             "number of seconds greater than 0*"),
    (["--perf-device", "tpu"], "--perf-device (command line): 'tpu' is not a device; choose "
                               "one of auto, cuda, cpu"),
    (["--perf-device", "cuda"], "--perf-device (command line): no CUDA device is visible*"),
    (["--perf-update-baselines", "--perf-compare", "old.json"],
     "--perf-update-baselines (command line) and --perf-compare (command line) conflict*"),
    (["--perf-force"], "--perf-force (command line) only applies to --perf-update-baselines*"),
])
def test_malformed_or_conflicting_options_are_usage_errors_naming_the_option(
        pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_nothing="def test_nothing(): pass")
    result = pytester.runpytest("-p", "harness.pytest_plugin", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize(("ini_line", "message"), [
    ("perf_tolerance = -0.5", "ini key perf_tolerance in *tox.ini: '-0.5' is not valid*"),
    ("perf_device = tpu", "ini key perf_device in *tox.ini: 'tpu' is not a device*"),
    ("perf_strict = sometimes", "ini key perf_strict in *tox.ini: invalid truth value "
                                "'sometimes'; use true or false"),
])
def test_malformed_ini_values_name_the_ini_key_and_file(pytester: pytest.Pytester, ini_line: str,
                                                        message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini_line}\n")
    pytester.makepyfile(test_nothing="def test_nothing(): pass")
    result = pytester.runpytest("-p", "harness.pytest_plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_override_ini_is_named_as_the_source(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing(): pass")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-o", "perf_budget=-3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key perf_budget (from -o/--override-ini): '-3'*"])


def test_ini_keys_set_defaults_and_the_command_line_wins(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makeini("[pytest]\nperf_baselines = from_ini\nperf_update_baselines = true\n")
    result = run(suite, monkeypatch)
    assert result.ret == 0, result.stdout.str()
    assert (suite.path / "from_ini" / BASELINE_FILE).is_file()
    result = run(suite, monkeypatch, "--perf-baselines", "from_cli")
    assert result.ret == 0, result.stdout.str()
    assert (suite.path / "from_cli" / BASELINE_FILE).is_file()


# -- verdicts -----------------------------------------------------------------------------------


def test_unchanged_run_passes_with_the_verdict_table(suite: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, seed=2)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*= perf =*",
        f"against {suite.path / 'baselines' / BASELINE_FILE} (hardware fingerprint "
        f"{FINGERPRINT})",
        "test*metric*baseline*measured*change*verdict",
        f"{NODEID}*time *s*s*unchanged",
        f"{NODEID}*time_tflops*TFLOP/s*TFLOP/s*unchanged",
    ])


def test_ten_percent_slower_fails_that_test_with_the_detail_table(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(
        test_other="def test_other(perf):\n    perf.metric('score', 1.0, unit='ratio')\n")
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, seed=2, slowdown=1.1)
    result.assert_outcomes(failed=1, passed=1, errors=0)
    result.stdout.re_match_lines([
        rf"perf regression in {NODEID}: time, time_tflops worse than "
        rf".*{re.escape(BASELINE_FILE)} beyond "
        rf"tolerance",
        rf"(?i){NODEID}::time: regression \(lower is better\)",
        r"median .*s .*s",
        r"change .*\+1\d\.\d %",
        # The confirming re-measurement is judged at half the 2% default tolerance.
        r"tolerance .*1\.0 %",
        r"p-value .*\(alpha 0\.01\)",
    ])
    result.stdout.re_match_lines([rf"(?i){NODEID} +time .*regression \(lower is better\)",
                                  r".*2 regressions.*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


COUNTING_TEST = """
def test_kernel(perf, perf_clock):
    perf_clock.runs = getattr(perf_clock, "runs", 0) + 1
    print("run", perf_clock.runs)
    perf.time(lambda: None)
"""

SLOW_FIRST_RUN_CONFTEST = """
import pytest

from harness.testing import FakeClock


class SlowFirstRun(FakeClock):
    \"\"\"10% slow while the test body runs for the first time, normal afterwards.\"\"\"

    def time(self, fn, iterations):
        self.slowdown = 1.1 if getattr(self, "runs", 1) == 1 else 1.0
        return super().time(fn, iterations)


@pytest.fixture
def perf_clock():
    return SlowFirstRun(seed=3, base_seconds=1e-3)
"""


def test_a_regression_is_confirmed_by_measuring_the_test_twice(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel=COUNTING_TEST)
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, "-s", seed=2, slowdown=1.1)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*run 1*", "*run 2*",
                                 "*measured twice, 0 s apart, and regressed both times*"])


def test_the_confirming_run_starts_with_the_cuda_cache_emptied(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel=COUNTING_TEST)
    record_baseline(suite, monkeypatch)
    releases: list[None] = []
    monkeypatch.setattr(memory, "release_cached_memory", lambda: releases.append(None))
    run(suite, monkeypatch, seed=2).assert_outcomes(passed=1)
    assert releases == []  # nothing regressed, nothing re-run
    run(suite, monkeypatch, seed=2, slowdown=1.1).assert_outcomes(failed=1)
    assert len(releases) == 1


def test_the_confirming_measurement_waits_the_confirm_delay(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel=COUNTING_TEST)
    record_baseline(suite, monkeypatch)
    start = time.monotonic()
    # The last --perf-confirm-delay wins over the helper's 0.
    result = run(suite, monkeypatch, "-s", "--perf-confirm-delay", "0.5", seed=2, slowdown=1.1)
    assert time.monotonic() - start >= 0.5
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*measured twice, 0.5 s apart, and regressed both times*"])


@pytest.mark.parametrize("value", ["-1", "nan", "3600", "soon"])
def test_a_bad_confirm_delay_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device", "cpu",
                                f"--perf-confirm-delay={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-confirm-delay*not valid*seconds from 0 to under 3600*"])


def test_a_transient_regression_that_a_second_measurement_clears_passes_with_a_note(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel=COUNTING_TEST)
    record_baseline(suite, monkeypatch)
    suite.makeconftest(SLOW_FIRST_RUN_CONFTEST)
    result = run(suite, monkeypatch, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*run 1*", "*run 2*",
                                 "*a first measurement regressed but a second did not*"])


def test_noise_without_a_slowdown_is_not_a_regression(suite: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A noisy machine: 30% noise and the 10 samples a tiny budget allows, for the baseline and
    # for the run. The medians wander past the 2% tolerance, but the samples do not support a
    # shift that is not there: "too noisy to decide" (or unchanged), never a failure.
    noisy = ("--perf-budget", "0.001")
    result = run(suite, monkeypatch, "--perf-update-baselines", *noisy, seed=1, noise=0.3)
    assert result.ret == 0, result.stdout.str()
    result = run(suite, monkeypatch, "-rs", *noisy, seed=2, noise=0.3)
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes, result.stdout.str()
    result.stdout.re_match_lines([rf"{NODEID} +time +.* (unreliable|unchanged)$",
                                  rf"{NODEID} +time_tflops +.* (unreliable|unchanged)$"])


def test_throttled_measurement_is_unreliable_not_a_failure(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    # Throttled in both attempts (two snapshots each), and slower because of it.
    result = run(suite, monkeypatch, "-rs", seed=2, slowdown=1.3, throttled_snapshots=4)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([
        "SKIPPED [[]1[]] test_kernel.py:*: perf: unreliable, not judged (not a regression): "
        "time: measured unreliably (*GPU throttled (HwThermalSlowdown): SM clock 1410 -> 1410 "
        "MHz of max 1980*, in all 2 attempts)*",
    ])
    assert "regression (" not in result.stdout.str().lower()


def test_throttle_in_the_first_attempt_only_is_retried_and_judged(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel=KERNEL_TEST + """
def test_attempts(perf):
    measurement = perf.time(lambda: None)
    assert measurement.gpu_state["attempts"] == 2
    assert "HwThermalSlowdown" in measurement.gpu_state["throttled"][0]
    assert measurement.reliable
""")
    result = run(suite, monkeypatch, "-k", "attempts", "--perf-update-baselines",
                 throttled_snapshots=2)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1, deselected=1)


def test_strict_mode_fails_an_unreliable_measurement_without_calling_it_a_regression(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, "--perf-strict", seed=2, throttled_snapshots=4)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["perf (--perf-strict: every measured metric must be checked): "
                                 "unreliable, not judged (not a regression)*"])


def test_improvement_passes_and_suggests_a_refresh(suite: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, seed=2, slowdown=0.8)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*mprovement (lower is better)*",
                                 "2 metric(s) improved beyond tolerance; if the change is real, "
                                 "refresh the baseline: pytest -m gpu --perf-update-baselines"])


def test_perf_tolerance_overrides_every_tolerance(suite: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    result = run(suite, monkeypatch, "--perf-tolerance", "0.2", seed=2, slowdown=1.1)
    result.assert_outcomes(passed=1)


def test_missing_baseline_skips_naming_the_file_and_the_command(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(suite, monkeypatch, "-rs")
    result.assert_outcomes(skipped=1)
    path = suite.path / "baselines" / BASELINE_FILE
    result.stdout.fnmatch_lines([
        f"SKIPPED [[]1[]] test_kernel.py:*: perf: no baseline for time, time_tflops: {path} "
        f"does not exist; record it with `pytest {NODEID} --perf-update-baselines "
        f"--perf-device cpu`"])


def test_metric_missing_from_an_existing_baseline_skips(suite: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    record_baseline(suite, monkeypatch)
    suite.makepyfile(test_new="def test_new(perf):\n    perf.metric('score', 2.0, unit='ratio')\n")
    result = run(suite, monkeypatch, "-rs", seed=2)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*test_new.py:*: perf: no baseline for score: "
                                 f"*{BASELINE_FILE} has no entry for it*"])


def test_strict_mode_fails_a_metric_without_baseline(suite: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(suite, monkeypatch, "--perf-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["perf (--perf-strict: every measured metric must be checked): "
                                 "no baseline for time, time_tflops*"])


def test_a_second_measurement_without_a_name_is_a_clear_error(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel="""
def test_twice(perf):
    perf.time(lambda: None)
    perf.time(lambda: None)
""")
    result = run(suite, monkeypatch)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: metric 'time' was already recorded by "
                                 "test_kernel.py::test_twice; give each measurement of a test "
                                 "its own name*"])


def test_train_step_and_dataloader_record_prefixed_metrics(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_kernel="""
import torch
from torch.utils.data import DataLoader, TensorDataset


def test_step_and_loader(perf):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs = (torch.randn(8, 16), torch.randn(8, 4))
    step = perf.train_step(model, inputs, torch.nn.functional.mse_loss, optimizer,
                           autocast_dtype=None, name_prefix="linear_")
    assert {"linear_step_time", "linear_tflops", "linear_flops_per_step"} <= set(step.metrics)
    # Forward 2*8*16*4 FLOPs and the weight gradient's as many (the input needs no gradient).
    assert step["linear_flops_per_step"].median == 2 * (2 * 8 * 16 * 4)
    loader = DataLoader(TensorDataset(torch.randn(64, 8)), batch_size=4)
    batches = perf.dataloader(loader, steps=8, name_prefix="rows_", tolerance=0.4)
    assert batches["rows_wait_time"].count == 8
    assert "rows_batches_per_s" in batches
    tolerant = perf.train_step(model, inputs, torch.nn.functional.mse_loss, optimizer,
                               autocast_dtype=None, name_prefix="host_bound_", tolerance=0.3)
    assert tolerant["host_bound_step_time"].tolerance == 0.3
""")
    result = run(suite, monkeypatch, "--perf-update-baselines")
    assert result.ret == 0, result.stdout.str()
    recorded = store.load_results(suite.path / "baselines" / BASELINE_FILE).metrics
    prefix = "test_kernel.py::test_step_and_loader::"
    assert {f"{prefix}linear_step_time", f"{prefix}rows_wait_time"} <= set(recorded)
    # A tolerance given to perf.train_step / perf.dataloader lands on their timing metrics.
    assert recorded[f"{prefix}rows_wait_time"].tolerance == 0.4
    assert recorded[f"{prefix}host_bound_tflops"].tolerance == 0.3
    assert recorded[f"{prefix}linear_step_time"].tolerance is None


@pytest.mark.parametrize(("call", "message"), [
    ("perf.time(lambda: None, flops=-1)", "flops must be a positive finite number, got -1"),
    ("perf.time(42)", "fn must be a callable taking no arguments, got 42"),
    ("perf.time(lambda: None, name='a::b')", "metric name must be a non-empty string without "
                                             "'::', got 'a::b'"),
    ("perf.metric('x', [], unit='s')", "value_or_samples must be a number or a non-empty list "
                                       "of numbers, got []"),
    ("perf.metric('x', 1.0, unit='s', better='faster')", "better must be 'higher' or 'lower', "
                                                         "got 'faster'"),
])
def test_bad_arguments_to_perf_are_value_errors_naming_them(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, call: str,
        message: str) -> None:
    suite.makepyfile(test_kernel=f"def test_bad(perf):\n    {call}\n")
    result = run(suite, monkeypatch)
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([rf"E +ValueError: {re.escape(message)}$"])


# -- bad reference files end the run --------------------------------------------------------


def _valid_document(fingerprint: str) -> dict:
    metric = Metric(name="time", unit="s", better="lower", samples=(1e-3, 1.1e-3), kind="time")
    return RunResults(kind="baseline", fingerprint=fingerprint, environment={},
                      metrics={f"{NODEID}::time": metric}).to_json()


@pytest.mark.parametrize(("content", "message"), [
    ('{"schema_version": 1, "kind": "basel', "truncated JSON"),
    (json.dumps({**_valid_document(FINGERPRINT), "schema_version": 99}),
     "schema_version 99 is not supported"),
    (json.dumps(_valid_document("nvidia-h100-80gb-hbm3")),
     "recorded on hardware 'nvidia-h100-80gb-hbm3'"),
])
def test_bad_baseline_file_ends_the_run_naming_the_file(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, content: str,
        message: str) -> None:
    path = suite.path / "baselines" / BASELINE_FILE
    path.parent.mkdir()
    path.write_text(content)
    result = run(suite, monkeypatch)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {path}: *{message}*"])
    assert "passed" not in result.stdout.str() and "skipped" not in result.stdout.str()


def test_compare_file_of_other_hardware_is_refused(suite: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = suite.path / "gpu-results.json"
    path.write_text(json.dumps(_valid_document("nvidia-h200")))
    result = run(suite, monkeypatch, f"--perf-compare={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {path}: recorded on hardware 'nvidia-h200', but this "
                                 f"run is on '{FINGERPRINT}'*"])


def test_existing_path_after_a_path_option_asks_for_the_equals_form(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (suite.path / "elsewhere").mkdir()
    result = run(suite, monkeypatch, "--perf-baselines", "elsewhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --perf-baselines elsewhere (command line): write "
                                 "--perf-baselines=elsewhere. pytest chose its rootdir*"])


# -- saved results, compare, JUnit --------------------------------------------------------------


def test_save_writes_the_runs_results_with_raw_samples(suite: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(suite, monkeypatch, "--perf-save", "out/results.json")
    result.assert_outcomes(skipped=1)
    path = suite.path / "out" / "results.json"
    result.stdout.fnmatch_lines([f"saved 2 metric(s) of this run to {path}"])
    saved = store.load_results(path)
    assert saved.kind == "results"
    assert saved.fingerprint == FINGERPRINT
    assert set(saved.metrics) == {f"{NODEID}::time", f"{NODEID}::time_tflops"}
    time = saved.metrics[f"{NODEID}::time"]
    assert time.count >= 10 and time.unit == "s" and time.better == "lower"
    # 1 ms per call from the fake clock, 1% noise.
    assert time.median == pytest.approx(1e-3, rel=0.02)
    tflops = saved.metrics[f"{NODEID}::time_tflops"]
    assert tflops.samples == pytest.approx([2e9 / s / 1e12 for s in time.samples])
    assert saved.environment["device"] == "cpu"
    assert saved.environment["torch"]


def test_compare_judges_against_a_saved_results_file(suite: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(suite, monkeypatch, "--perf-save", "main.json").ret == 0
    result = run(suite, monkeypatch, "--perf-compare=main.json", seed=2, slowdown=1.1)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"perf regression in {NODEID}: *worse than "
                                 f"{suite.path / 'main.json'} beyond tolerance"])
    assert not (suite.path / "baselines").exists()


def test_metrics_are_junit_properties(suite: pytest.Pytester,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run(suite, monkeypatch, "--junitxml=junit.xml")
    tree = ET.parse(suite.path / "junit.xml")
    properties = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert properties["perf:time"].endswith(" s")
    assert float(properties["perf:time"].split()[0]) == pytest.approx(1e-3, rel=0.02)
    assert properties["perf:time_tflops"].endswith(" TFLOP/s")
    assert properties["perf:time:gpu"] == "SM 1980/1980 MHz, 60 C, 500.0 W, throttle: none"


# -- baseline refresh ---------------------------------------------------------------------------


def test_update_writes_the_baseline_and_keeps_the_old_one_in_history(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    path = record_baseline(suite, monkeypatch)
    first = store.load_results(path)
    assert first.kind == "baseline" and first.fingerprint == FINGERPRINT
    result = run(suite, monkeypatch, "--perf-update-baselines", seed=2, slowdown=1.1)
    assert result.ret == 0
    history = list((suite.path / "baselines" / "history" / FINGERPRINT).glob("*.json"))
    assert len(history) == 1
    assert store.load_results(history[0]).metrics == first.metrics
    result.stdout.fnmatch_lines([f"wrote {path} (2 metric(s)); the previous one is kept as "
                                 f"{history[0]}",
                                 f"baseline for {FINGERPRINT}: 2 metrics updated, 0 added, 0 "
                                 f"removed",
                                 f"{NODEID}::time *ms*ms*+1?.?*"])


def test_update_keeps_the_metrics_of_tests_that_did_not_run(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(
        test_other="def test_other(perf):\n    perf.metric('score', 1.0, unit='ratio')\n")
    path = record_baseline(suite, monkeypatch)
    suite.makepyfile(
        test_other="def test_other(perf):\n    perf.metric('score', 2.0, unit='ratio')\n")
    result = run(suite, monkeypatch, "--perf-update-baselines", "test_other.py")
    assert result.ret == 0
    merged = store.load_results(path)
    assert merged.metrics["test_other.py::test_other::score"].samples == (2.0,)
    assert set(merged.metrics) == {f"{NODEID}::time", f"{NODEID}::time_tflops",
                                   "test_other.py::test_other::score"}


FAILING_TEST = "def test_broken():\n    assert 1 + 1 == 3\n"


def test_update_refuses_after_a_failed_test(suite: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makepyfile(test_broken=FAILING_TEST)
    result = run(suite, monkeypatch, "--perf-update-baselines")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"ERROR: baseline *{BASELINE_FILE} not written: 1 test(s) "
                                 f"failed: test_broken.py::test_broken. Fix and re-run, or pass "
                                 f"--perf-force*"])
    assert not (suite.path / "baselines" / BASELINE_FILE).exists()
    forced = run(suite, monkeypatch, "--perf-update-baselines", "--perf-force")
    assert forced.ret == pytest.ExitCode.TESTS_FAILED  # the test still failed
    assert (suite.path / "baselines" / BASELINE_FILE).is_file()


def test_update_refuses_unreliable_measurements(suite: pytest.Pytester,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(suite, monkeypatch, "--perf-update-baselines", throttled_snapshots=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"ERROR: baseline *{BASELINE_FILE} not written: 2 metric(s) were "
                                 f"measured unreliably: {NODEID}::time*"])
    assert not (suite.path / "baselines" / BASELINE_FILE).exists()
