"""Which metrics of a test the A/B on this machine checks (`harness.gate.suspects`), and that a
failed test's A/B checks all of them: a foreach AdamW made the GPT-2 step's device time regress
and its host-bound step time +21% slower, which the calibration alone had called "environment
changed" (H200, 2026-12-02)."""

from __future__ import annotations

import random
from pathlib import Path

from harness.gate.fleet import RunSummary
from harness.gate.results import Metric, RunResults
from harness.gate.run_options import PerfOptions
from harness.gate.session import PerfSession
from harness.gate.suspects import noisy_improvement, suspects
from harness.gate.verdict import HOST_BOUND_RULE, Outcome, judge

BASE_HOST = {"host": {"calibration": {"launch_us": 5.0, "dispatch_us": 30.0}}}
SLOWER_HOST = {"host": {"calibration": {"launch_us": 7.0, "dispatch_us": 41.0}}}


def _pair(name: str, slowdown: float, *, host_bound: bool = False,
          noise: float = 0.001) -> tuple[Metric, Metric]:
    rng = random.Random(name)
    base = Metric(name=name, unit="s", better="lower", kind="time", host_bound=host_bound,
                  samples=tuple(0.1 * (1 + rng.gauss(0, noise)) for _ in range(20)))
    return base, base.with_changes(samples=tuple(s * (1 + slowdown) for s in base.samples))


def _session(strict: bool, *, ab_host_bound: bool = False,
             **pairs: tuple[Metric, Metric]) -> PerfSession:
    session = PerfSession(PerfOptions(baselines_dir=Path("b"), device="cpu", strict=strict,
                                      ab_host_bound=ab_host_bound),
                          {"fingerprint": "cpu", **SLOWER_HOST})
    session.reference = RunResults(kind="baseline", fingerprint="cpu", environment=BASE_HOST,
                                   metrics={f"t.py::t::{k}": base for k, (base, _) in
                                            pairs.items()})
    for _, now in pairs.values():
        session.record("t.py::t", now)
    return session


def test_a_regressed_test_has_its_host_excused_step_time_checked_by_ab_too() -> None:
    session = _session(False, device_time=_pair("device_time", 0.08),
                       step_time=_pair("step_time", 0.21, host_bound=True))
    decision = session.conclude_test("t.py::t")
    outcomes = {v.metric_id.rpartition("::")[2]: v.outcome for v in session.verdicts}
    assert outcomes == {"device_time": Outcome.REGRESSION,
                        "step_time": Outcome.ENVIRONMENT_CHANGED}
    assert decision.outcome == "failed" and decision.regression
    assert decision.suspects == ("t.py::t::device_time", "t.py::t::step_time")


def test_a_passed_test_is_rechecked_only_for_what_the_host_excused() -> None:
    session = _session(False, device_time=_pair("device_time", 0.0),
                       step_time=_pair("step_time", 0.21, host_bound=True))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == "passed"
    assert decision.suspects == ("t.py::t::step_time",)


def test_noisy_worsenings_are_suspects_under_strict_only() -> None:
    base, now = _pair("step_time", 0.05, noise=0.2)
    verdict = judge("t::step_time", now.with_changes(samples=now.samples[:3]),
                    base.with_changes(samples=base.samples[:3]))
    assert verdict.outcome is Outcome.UNRELIABLE
    assert suspects([verdict], strict=True).noisy == ("t::step_time",)
    assert suspects([verdict], strict=False).all == ()


def test_a_throttled_measurement_under_strict_is_left_to_ab() -> None:
    base, now = _pair("step_time", 0.0)
    throttled = now.with_changes(reliable=False, note="GPU throttled (HwSlowdown), in all 2 "
                                                      "attempts")
    strict = _session(True, step_time=(base, throttled))
    decision = strict.conclude_test("t.py::t")
    assert decision.outcome == "failed" and "measured unreliably" in decision.message
    assert decision.suspects == ("t.py::t::step_time",)
    lenient = _session(False, step_time=(base, throttled))
    assert lenient.conclude_test("t.py::t").outcome == "skipped"
    assert suspects(lenient.verdicts, strict=False).all == ()


def test_a_metric_of_another_unit_is_no_suspect() -> None:
    base, now = _pair("step_time", 0.0)
    other_unit = now.with_changes(reliable=False, unit="ms")
    session = _session(True, step_time=(base, other_unit))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == "failed" and decision.suspects == ()


def _fleet_pair(name: str, slowdown: float, *, host_bound: bool) -> tuple[Metric, Metric]:
    """A baseline whose three recorded runs span 30% (a host-sensitive wall time widens its
    tolerance to 30%), and this run `slowdown` slower than it."""
    base, now = _pair(name, slowdown, host_bound=host_bound)
    runs = tuple(RunSummary(median=0.1 * f, spread=0.01, count=20, host=f"h{i}", created="")
                 for i, f in enumerate((0.9, 1.0, 1.1)))
    return base.with_changes(runs=runs), now


def test_a_host_bound_wall_time_inside_the_fleets_tolerance_is_named_not_sent_to_ab() -> None:
    # 35 ms of Python per forward of the Llama-style step read +24.0% inside its 30% fleet
    # tolerance on a host whose calibration read 25% slower; unchanged steps moved 8-99%
    # between fresh hosts (H200, 2026-12-02/03). By default: a host-bound change, named.
    session = _session(False, device_time=_pair("device_time", 0.0),
                       step_time=_fleet_pair("step_time", 0.24, host_bound=True))
    decision = session.conclude_test("t.py::t")
    step_time = next(v for v in session.verdicts if v.metric_id.endswith("step_time"))
    assert step_time.outcome is Outcome.UNCHANGED and step_time.rule == HOST_BOUND_RULE
    assert not step_time.worse_on_one_machine
    assert "within what the baseline's 3 recorded runs measured; its device time +0.0%, " \
           "unchanged: the host's share" in step_time.reason
    assert decision.outcome == "passed" and decision.suspects == ()
    assert "1 host-bound metric(s) read worse" in "\n".join(session.summary_lines())


def test_a_host_bound_wall_time_inside_the_fleets_tolerance_goes_to_ab_when_asked() -> None:
    # --perf-ab-host-bound: the same step goes to A/B, whatever the host's calibration says.
    session = _session(False, ab_host_bound=True, device_time=_pair("device_time", 0.0),
                       step_time=_fleet_pair("step_time", 0.24, host_bound=True))
    decision = session.conclude_test("t.py::t")
    step_time = next(v for v in session.verdicts if v.metric_id.endswith("step_time"))
    assert step_time.outcome is Outcome.UNCHANGED and step_time.worse_on_one_machine
    assert "checks it where it can run (the step is host-bound, and this host's calibration " \
           "reads slower: launch_us 40% slower, dispatch_us 37% slower; a calibration alone " \
           "does not clear it)" in step_time.reason
    assert decision.outcome == "passed" and decision.suspects == ("t.py::t::step_time",)
    assert suspects(session.verdicts, strict=False).within_fleet == ("t.py::t::step_time",)


def test_a_regressed_device_time_takes_its_host_bound_wall_time_to_ab() -> None:
    # The foreach AdamW on an H200: device time +8% (a regression), wall time +12% inside the
    # fleet's tolerance; the wall time goes to the same A/B instead of passing unseen.
    session = _session(False, device_time=_pair("device_time", 0.08),
                       step_time=_fleet_pair("step_time", 0.12, host_bound=True))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == "failed"
    assert decision.suspects == ("t.py::t::device_time", "t.py::t::step_time")


def test_a_device_bound_slowdown_inside_the_fleets_tolerance_takes_its_host_bound_mate() -> None:
    session = _session(False, device_time=_fleet_pair("device_time", 0.05, host_bound=False),
                       step_time=_fleet_pair("step_time", 0.12, host_bound=True))
    decision = session.conclude_test("t.py::t")
    assert decision.outcome == "passed"
    assert decision.suspects == ("t.py::t::device_time", "t.py::t::step_time")


def test_a_host_bound_slowdown_on_a_host_no_slower_than_the_baselines_goes_to_ab_when_asked(
        ) -> None:
    # 35 ms of Python per forward of the Llama-style step: wall time +29.8%, inside a 30% fleet
    # tolerance, device time unchanged, on a host whose probes read as fast as the baseline's.
    for ab_host_bound in (False, True):
        session = _session(False, ab_host_bound=ab_host_bound,
                           device_time=_pair("device_time", 0.0),
                           step_time=_fleet_pair("step_time", 0.298, host_bound=True))
        session.environment = {"fingerprint": "cpu", **BASE_HOST}
        decision = session.conclude_test("t.py::t")
        step_time = next(v for v in session.verdicts if v.metric_id.endswith("step_time"))
        assert decision.outcome == "passed"
        if ab_host_bound:
            assert step_time.worse_on_one_machine
            assert step_time.reason.endswith("checks it where it can run")
            assert decision.suspects == ("t.py::t::step_time",)
        else:
            assert step_time.rule == HOST_BOUND_RULE and decision.suspects == ()


def test_a_noisy_improvement_neither_fails_a_strict_run_nor_skips_a_test() -> None:
    # A DataLoader's data-wait fraction on a fresh H200: -34.7%, spread 188%, p=0.67.
    rng = random.Random(7)
    base = Metric(name="data_wait_fraction", unit="s", better="lower", kind="time",
                  samples=tuple(0.1 * rng.uniform(0.1, 3.0) for _ in range(24)))
    now = base.with_changes(samples=tuple(0.065 * rng.uniform(0.1, 3.0) for _ in range(24)))
    for strict in (True, False):
        session = _session(strict, data_wait_fraction=(base, now))
        decision = session.conclude_test("t.py::t")
        (verdict,) = session.verdicts
        assert verdict.outcome is Outcome.UNRELIABLE and noisy_improvement(verdict)
        assert decision.outcome == "passed"
    worse = _session(True, data_wait_fraction=(base, base.with_changes(
        samples=tuple(s * 1.35 / 0.65 for s in now.samples))))
    assert worse.conclude_test("t.py::t").outcome == "failed"
    (verdict,) = worse.verdicts
    assert verdict.outcome is Outcome.UNRELIABLE and not noisy_improvement(verdict)
