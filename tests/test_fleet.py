"""Baselines that know the fleet: recorded runs widen a metric's tolerance to their spread, mark
host-sensitive metrics for A/B, and `--perf-add-run` keeps one run per recording."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.gate.fleet import MIN_FLEET_RUNS, RunSummary, fleet_spread
from harness.gate.results import Metric, RunResults, SchemaError
from harness.gate.run_options import PerfOptions
from harness.gate.session import PerfSession
from harness.gate.verdict import Outcome, judge

pytest_plugins = ["pytester"]


def _runs(*medians: float) -> tuple[RunSummary, ...]:
    return tuple(RunSummary(median=m, spread=0.01, count=20, host=f"host{i}", created="")
                 for i, m in enumerate(medians))


def _metric(median: float, runs: tuple[RunSummary, ...] = ()) -> Metric:
    samples = tuple(median * (1 + 0.001 * (i - 10)) for i in range(21))
    return Metric(name="step_time", unit="s", better="lower", kind="time", samples=samples,
                  runs=runs)


def test_fewer_than_three_runs_say_nothing_about_the_fleet() -> None:
    assert fleet_spread(_runs(1.0, 1.2)) is None
    assert MIN_FLEET_RUNS == 3


def test_the_spread_of_run_medians() -> None:
    spread = fleet_spread(_runs(1.00, 1.04, 0.96))
    assert spread is not None and spread.runs == 3
    assert spread.relative_deviation == pytest.approx(0.04)
    assert spread.tolerance == pytest.approx(0.12)
    assert spread.span == pytest.approx(1.04 / 0.96 - 1)
    assert not spread.host_sensitive


def test_recorded_runs_widen_the_tolerance_to_the_fleet() -> None:
    baseline = _metric(1.0, _runs(1.00, 1.04, 0.96))
    verdict = judge("t::step_time", _metric(1.08), baseline)
    assert verdict.outcome is Outcome.UNCHANGED
    assert verdict.tolerance == pytest.approx(0.12)
    without_runs = judge("t::step_time", _metric(1.08), _metric(1.0))
    assert without_runs.outcome is Outcome.REGRESSION


def test_an_explicit_tolerance_is_kept_as_given() -> None:
    baseline = _metric(1.0, _runs(1.00, 1.04, 0.96))
    verdict = judge("t::step_time", _metric(1.08), baseline, tolerance=0.02)
    assert verdict.outcome is Outcome.REGRESSION and verdict.tolerance == 0.02


def test_a_host_sensitive_metric_is_left_to_ab() -> None:
    baseline = _metric(1.0, _runs(1.00, 1.40, 1.20))
    verdict = judge("t::step_time", _metric(1.6), baseline)  # +33% from the runs' median
    assert verdict.outcome is Outcome.UNRELIABLE and verdict.rule == "host-sensitive"
    assert "3 recorded runs span 40.0%" in verdict.reason


def test_the_baseline_is_centred_on_the_median_of_its_runs() -> None:
    # The last run (whose samples the baseline keeps) was the fleet's fastest machine: a machine
    # reading the fleet's usual value is unchanged, not 11% worse than that one machine.
    baseline = _metric(0.9, _runs(1.0, 1.1, 1.0, 0.9))
    verdict = judge("t::step_time", _metric(1.0), baseline)
    assert verdict.outcome is Outcome.UNCHANGED and not verdict.worse_on_one_machine
    assert verdict.change == pytest.approx(0.0)
    assert verdict.baseline is not None and verdict.baseline.median == pytest.approx(1.0)
    # The run's shape is kept around the new centre, and the stored runs with it.
    assert verdict.baseline.spread == pytest.approx(baseline.spread)
    assert verdict.baseline.runs == baseline.runs
    # Without recorded runs the stored samples are the centre, as before.
    assert judge("t::step_time", _metric(1.0), _metric(0.9)).change == pytest.approx(1 / 0.9 - 1)


def test_a_malformed_stored_run_names_the_problem() -> None:
    entry = _metric(1.0, _runs(1.0, 1.1, 1.2)).to_json()
    del entry["runs"][1]["host"]
    with pytest.raises(SchemaError, match="a stored run is malformed"):
        Metric.from_json("step_time", entry, "f.json")


TEST_FILE = '''
def test_step(perf):
    perf.metric("step_time", [1.0] * 5, unit="s", better="lower", kind="time")
'''


def test_add_run_keeps_one_run_per_recording(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_step=TEST_FILE)
    common = ("-p", "no:cacheprovider", "--perf-device=cpu", "--perf-update-baselines")
    pytester.runpytest(*common).assert_outcomes(passed=1)
    for _ in range(2):
        pytester.runpytest(*common, "--perf-add-run").assert_outcomes(passed=1)
    (path,) = (pytester.path / "baselines").glob("*.json")
    metric = json.loads(path.read_text())["metrics"]["test_step.py::test_step::step_time"]
    assert len(metric["runs"]) == 3  # the first recording counts as one run
    assert all(run["median"] == 1.0 for run in metric["runs"])
    pytester.runpytest(*common).assert_outcomes(passed=1)  # without --perf-add-run: anew
    metric = json.loads(Path(path).read_text())["metrics"]["test_step.py::test_step::step_time"]
    assert metric["runs"] == []


def test_add_run_needs_update_baselines(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--perf-add-run")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-add-run (command line) only applies to "
                                 "--perf-update-baselines*"])


def _session(strict: bool) -> PerfSession:
    session = PerfSession(PerfOptions(baselines_dir=Path("b"), device="cpu", strict=strict),
                          {"fingerprint": "cpu"})
    session.reference = RunResults(kind="baseline", fingerprint="cpu", environment={},
                                   metrics={"t.py::t::step_time":
                                            _metric(1.0, _runs(1.00, 1.40, 1.20))})
    return session


@pytest.mark.parametrize(("strict", "outcome"), [(False, "skipped"), (True, "failed")])
def test_a_worse_host_sensitive_metric_is_a_suspect_for_ab(strict: bool, outcome: str) -> None:
    session = _session(strict)
    session.record("t.py::t", _metric(1.6))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == outcome
    assert decision.suspects == ("t.py::t::step_time",)
    assert "host-sensitive" in decision.message


def test_a_slowdown_inside_the_fleets_tolerance_is_a_suspect_for_ab() -> None:
    # Runs 1.00 / 1.04 / 0.96 widen the 2% time tolerance to 12%: +5% passes across machines,
    # but is beyond what one machine allows, so A/B on this machine checks it.
    session = _session(strict=True)
    session.reference = RunResults(kind="baseline", fingerprint="cpu", environment={},
                                   metrics={"t.py::t::step_time":
                                            _metric(1.0, _runs(1.00, 1.04, 0.96))})
    session.record("t.py::t", _metric(1.05))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == "passed"
    assert decision.suspects == ("t.py::t::step_time",)
    (verdict,) = session.verdicts
    assert verdict.outcome is Outcome.UNCHANGED and verdict.worse_on_one_machine
    assert verdict.tolerance == pytest.approx(0.12)
    assert verdict.one_machine_tolerance == pytest.approx(0.02)
    assert "worse than the 2.0% tolerance of one machine" in verdict.reason


@pytest.mark.parametrize("median", [1.01, 0.95])
def test_no_suspect_within_one_machines_tolerance_or_better(median: float) -> None:
    baseline = _metric(1.0, _runs(1.00, 1.04, 0.96))
    verdict = judge("t::step_time", _metric(median), baseline)
    assert verdict.outcome is Outcome.UNCHANGED
    assert not verdict.worse_on_one_machine


def _host(dispatch_us: float) -> dict[str, object]:
    return {"host": {"calibration": {"launch_us": 5.0, "dispatch_us": dispatch_us}}}


@pytest.mark.parametrize("dispatch_us", [30.0, 28.0, 41.0])
def test_a_host_bound_slowdown_inside_the_fleet_is_a_suspect_on_any_host(
        dispatch_us: float) -> None:
    # +5% on a host-bound step: a suspect on a host as fast as the baseline's (the code may have
    # added host work), and on one whose calibration reads 37% slower too, since a calibration
    # misreads (one H200 host read 25% slower, then ran the unchanged steps 13-31% faster).
    baseline = dataclasses.replace(_metric(1.0, _runs(1.00, 1.04, 0.96)), host_bound=True)
    measured = dataclasses.replace(_metric(1.05), host_bound=True)
    verdict = judge("t::step_time", measured, baseline, baseline_environment=_host(30.0),
                    environment=_host(dispatch_us))
    assert verdict.outcome is Outcome.UNCHANGED and verdict.worse_on_one_machine
    assert ("calibration reads slower" in verdict.reason) is (dispatch_us > 30.0)


def test_without_recorded_runs_one_machines_tolerance_is_the_tolerance() -> None:
    verdict = judge("t::step_time", _metric(1.01), _metric(1.0))
    assert verdict.machine_tolerance is None
    assert verdict.one_machine_tolerance == verdict.tolerance == pytest.approx(0.02)
