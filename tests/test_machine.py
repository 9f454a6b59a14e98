"""What the end-of-run A/B leaves out: suspects that only follow their chip (a chip slower than
the fleet on every kernel is the chip: `harness.gate.machine` reads that offset from the run's
own device-bound metrics), and tests beyond its time budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.gate.fleet import RunSummary
from harness.gate.machine import MIN_PEERS, machine_offset, stands_out
from harness.gate.results import Metric, RunResults
from harness.gate.run_options import PerfOptions
from harness.gate.session import Decision, PerfSession
from harness.gate.verdict import Verdict, judge
from harness.pytest_plugin.confirm import (
    CHILD_STARTUP_SECONDS,
    ABCheckout,
    PendingConfirmations,
    fit_budget,
)

# Three recorded runs 2.5% apart: a fleet tolerance of about 7.5%, one machine's 2%.
FLEET = tuple(RunSummary(median=m, spread=0.005, count=20, host=f"h{i}", created="")
              for i, m in enumerate((1.0, 1.025, 0.975)))


def _time(median: float, *, runs: tuple[RunSummary, ...] = FLEET,
          host_bound: bool = False) -> Metric:
    samples = tuple(median * (1 + 0.0005 * (i - 10)) for i in range(21))
    return Metric(name="gemm", unit="s", better="lower", kind="time", samples=samples,
                  runs=runs, host_bound=host_bound)


def _verdicts(*medians: float, host_bound: bool = False) -> list[Verdict]:
    return [judge(f"t.py::test_{i}::gemm", _time(m, host_bound=host_bound), _time(1.0))
            for i, m in enumerate(medians)]


def test_a_chip_slower_on_every_kernel_sets_the_offset_and_nothing_stands_out() -> None:
    verdicts = _verdicts(1.03, 1.032, 1.028, 1.035, 1.03, 1.031)
    assert all(v.worse_on_one_machine for v in verdicts)
    offset, peers = machine_offset(verdicts)
    assert peers == 6 and offset == pytest.approx(0.0301, abs=1e-3)
    assert not any(stands_out(v, offset) for v in verdicts)


def test_one_kernel_slower_than_its_chip_mates_stands_out() -> None:
    # A chip 2% faster than the fleet; one test 5% slower by code reads +3% against the baseline.
    verdicts = _verdicts(0.98, 0.981, 0.979, 0.98, 0.982, 1.03)
    offset, _ = machine_offset(verdicts)
    assert offset == pytest.approx(-0.0198, abs=1e-3)
    assert [stands_out(v, offset) for v in verdicts] == [False] * 5 + [True]


def test_too_few_peers_or_host_bound_steps_set_no_offset() -> None:
    assert machine_offset(_verdicts(*[1.03] * (MIN_PEERS - 1))) == (0.0, MIN_PEERS - 1)
    assert machine_offset(_verdicts(*[1.03] * 8, host_bound=True)) == (0.0, 0)


def _pending(verdicts: list[Verdict]) -> PendingConfirmations:
    session = PerfSession(PerfOptions(baselines_dir=Path("b"), device="cpu"),
                          {"fingerprint": "cpu"})
    session.reference = RunResults(kind="baseline", fingerprint="cpu", environment={},
                                   metrics={})
    session.verdicts = list(verdicts)
    lines: list[str] = []
    pending = PendingConfirmations(session, ABCheckout(Path("."), Path("."), "0" * 40),
                                   Path("."), lines.append)
    for verdict in verdicts:
        nodeid = verdict.metric_id.rpartition("::")[0]
        pending.add(nodeid, session.decide(nodeid, [verdict]))
    return pending


def test_the_ab_leaves_out_suspects_that_only_follow_the_machine() -> None:
    pending = _pending(_verdicts(1.03, 1.032, 1.028, 1.035, 1.03, 1.031))
    assert len(pending.decisions) == 6
    assert pending.confirm() == {}  # nothing left to run: no A/B, no child process
    (note,) = pending.session.end_notes
    assert note.startswith("6 metric(s) worse than one machine's tolerance but within the "
                           "fleet's were left out of the A/B: this machine reads its 6 "
                           "device-bound metrics +3.0% from the baseline")


def test_the_ab_keeps_a_suspect_that_stands_out_and_every_regression() -> None:
    verdicts = _verdicts(0.98, 0.981, 0.979, 0.98, 0.982, 1.03)
    regression = judge("t.py::test_r::gemm", _time(1.2), _time(1.0))
    pending = _pending([*verdicts, regression])
    pending._leave_out_the_machine()
    assert list(pending.decisions) == ["t.py::test_5", "t.py::test_r"]
    assert pending.decisions["t.py::test_r"].outcome == "failed"
    assert isinstance(pending.decisions["t.py::test_5"], Decision)


def test_metrics_without_fleet_runs_are_no_peers() -> None:
    verdicts = [judge(f"t.py::test_{i}::gemm", _time(1.03, runs=()), _time(1.0, runs=()))
                for i in range(MIN_PEERS + 1)]
    assert all(v.machine_tolerance is None and not v.worse_on_one_machine for v in verdicts)
    assert machine_offset(verdicts) == (0.0, 0)


def test_the_ab_confirms_failed_tests_first_and_cheap_ones_within_the_budget() -> None:
    # Three rounds of two child runs: 6 x (start-up + the tests).
    startup = CHILD_STARTUP_SECONDS
    tests = [("pass_cheap", False, 1.0), ("fail_slow", True, 20.0), ("fail_cheap", True, 2.0)]
    chosen, everything = fit_budget(tests, budget_seconds=6 * (startup + 22))
    assert chosen == ["fail_cheap", "fail_slow"]
    assert everything == pytest.approx(6 * (startup + 23))
    assert fit_budget(tests, budget_seconds=1.0)[0] == ["fail_cheap"]  # never none
    assert fit_budget(tests, budget_seconds=1e6)[0] == ["fail_cheap", "fail_slow", "pass_cheap"]


def test_tests_beyond_the_budget_keep_their_first_verdicts_and_the_notes_say_how_to_run_them(
        ) -> None:
    verdicts = [judge("t.py::test_r::gemm", _time(1.2), _time(1.0)),
                judge("t.py::test_s::gemm", _time(1.25), _time(1.0))]
    pending = _pending(verdicts)
    pending.durations = {"t.py::test_r": 5.0, "t.py::test_s": 50.0}
    pending.session.options = dataclasses.replace(pending.session.options,
                                                  ab_budget_seconds=100.0)
    left_out = pending._fit_the_budget()
    assert list(pending.decisions) == ["t.py::test_r"]
    assert list(left_out) == ["t.py::test_s"] and left_out["t.py::test_s"].outcome == "failed"
    (note,) = pending.session.end_notes
    seconds = 6 * (CHILD_STARTUP_SECONDS + 55.0)
    assert note == ("1 suspected test(s) left out of the A/B, whose 3 rounds with them would "
                    f"take about {seconds:.0f} s, beyond --perf-ab-budget=100; their first "
                    "verdicts stand. Confirm them with a larger budget or `python -m harness ab "
                    "000000000000 -- t.py::test_s`")


def test_a_host_bound_wall_time_that_outruns_its_chip_keeps_its_test_in_the_ab() -> None:
    # Six GEMMs follow a chip 3% slower and leave the A/B; test_0's host-bound wall time is 6.5%
    # slower, inside the fleet's tolerance, on a host whose calibration reads slower: that does
    # not clear it, so test_0 goes to the A/B for its wall time alone.
    gemms = _verdicts(1.03, 1.032, 1.028, 1.035, 1.03, 1.031)
    wall = judge("t.py::test_0::step_time", _time(1.065, host_bound=True), _time(1.0),
                 baseline_environment={"host": {"calibration": {"dispatch_us": 30.0}}},
                 environment={"host": {"calibration": {"dispatch_us": 41.0}}})
    assert wall.worse_on_one_machine and stands_out(wall, machine_offset(gemms)[0])
    pending = _pending(gemms)
    session = pending.session
    session.verdicts.append(wall)
    pending.add("t.py::test_0", session.decide("t.py::test_0", [gemms[0], wall]))
    pending._leave_out_the_machine()
    assert list(pending.decisions) == ["t.py::test_0"]
    assert pending.decisions["t.py::test_0"].suspects == ("t.py::test_0::step_time",)
