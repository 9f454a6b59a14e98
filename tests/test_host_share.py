"""The host's share of host-bound work (`harness.gate.host_share`): a wall time of a host-bound
step that reads worse only within what the fleet measured, with its device time held, is named
as a host-bound change and passes; one beyond the fleet, or whose device time moved, stays a
suspect for the A/B."""

from __future__ import annotations

from pathlib import Path

from harness.gate import report
from harness.gate.compare import compare_results
from harness.gate.fleet import RunSummary
from harness.gate.host_share import (
    device_time_partner,
    name_host_shares,
    note_host_shares,
    worse_than_the_fleet_measured,
)
from harness.gate.profile import DeviceProfile, KernelRow
from harness.gate.results import Metric, RunResults
from harness.gate.suspects import suspects
from harness.gate.verdict import HOST_BOUND_RULE, Outcome, Verdict, judge

NODE = "perf_tests/test_training.py::test_step[llama-none]"


def _runs(*medians: float) -> tuple[RunSummary, ...]:
    return tuple(RunSummary(median=m, spread=0.01, count=20, host=f"h{i}", created="")
                 for i, m in enumerate(medians))


def _metric(name: str, median: float, *, runs: tuple[RunSummary, ...] = (),
            kind: str = "time", better: str = "lower", host_bound: bool = False,
            profile: DeviceProfile | None = None) -> Metric:
    samples = tuple(median * (1 + 0.001 * (i - 10)) for i in range(21))
    return Metric(name=name, unit="s" if kind == "time" else "x", better=better, kind=kind,
                  samples=samples, runs=runs, host_bound=host_bound, profile=profile)


# The Llama-style step of the committed H200 baseline: wall time over three fresh machines 82.7,
# 88.7 and 126.5 ms (host-sensitive: 53% apart), device time 67.0-67.3 ms.
STEP_RUNS = _runs(0.0827, 0.0887, 0.1265)
DEVICE_RUNS = _runs(0.06699, 0.06706, 0.06731)
PROFILE = DeviceProfile(steps=5, device_seconds=0.0672, idle_fraction=0.42,
                        host_issue_seconds=0.11, kernels=())


def _step(step_time: float, device_time: float = 0.0672) -> list[Verdict]:
    """The verdicts of a step measured at `step_time` s (host-bound) and `device_time` s."""
    return [judge(f"{NODE}::step_time", _metric("step_time", step_time, host_bound=True),
                  _metric("step_time", 0.0887, runs=STEP_RUNS)),
            judge(f"{NODE}::device_time",
                  _metric("device_time", device_time, profile=PROFILE),
                  _metric("device_time", 0.06706, runs=DEVICE_RUNS))]


def test_the_partner_of_a_wall_time_is_its_measurements_device_time() -> None:
    ids = {"t::step_time", "t::device_time", "t::decode_step", "t::decode_step_gbps",
           "t::decode_step_device_time", "u::device_time"}
    assert device_time_partner("t::step_time", ids) == "t::device_time"
    assert device_time_partner("t::decode_step_gbps", ids) == "t::decode_step_device_time"
    assert device_time_partner("t::decode_step", ids) == "t::decode_step_device_time"
    assert device_time_partner("u::step_time", ids) == "u::device_time"
    assert device_time_partner("v::step_time", ids) is None
    assert device_time_partner("t::device_time", {"t::device_time"}) is None


def test_a_host_sensitive_step_inside_the_fleets_range_is_named_with_its_device_time() -> None:
    # Unchanged code on a fresh H200: the step read 116.3 ms (+31.1%, beyond the 30% cap of a
    # host-sensitive metric's tolerance), its device time +0.2% (2026-12-03).
    first = _step(0.1163)
    assert first[0].outcome is Outcome.UNRELIABLE and first[0].rule == "host-sensitive"
    named, device = name_host_shares(first)
    assert named.outcome is Outcome.UNCHANGED and named.rule == HOST_BOUND_RULE
    assert device.outcome is Outcome.UNCHANGED and device.rule != HOST_BOUND_RULE
    assert "+31.1% vs baseline, worse than one machine's 2.0% tolerance, on a step that is " \
           "host-bound here (the GPU idled 42.0% of it), within what the baseline's 3 " \
           "recorded runs measured; its device time +0.2%, unchanged: the host's share" \
           in named.reason
    assert suspects([named, device], strict=True).all == ()
    assert report.outcome_word(named) == "host-bound change"


def test_a_step_slower_than_every_recorded_machine_stays_a_suspect() -> None:
    # 35 ms of Python on the slowest recorded host: beyond its 126.5 ms by more than 2%.
    verdicts = name_host_shares(_step(0.1265 + 0.035))
    assert verdicts[0].outcome is Outcome.UNRELIABLE and verdicts[0].rule == "host-sensitive"
    assert suspects(verdicts, strict=True).host_sensitive == (f"{NODE}::step_time",)
    assert worse_than_the_fleet_measured(verdicts[0])


def test_a_step_whose_device_time_moved_goes_to_ab_with_it() -> None:
    # A for-loop AdamW: device time +8%, the host-bound wall time with it (H200, 2026-12-02).
    verdicts = name_host_shares(_step(0.1163, device_time=0.0672 * 1.08))
    assert [v.rule == HOST_BOUND_RULE for v in verdicts] == [False, False]
    assert suspects(verdicts, strict=True).all == (f"{NODE}::device_time",
                                                   f"{NODE}::step_time")


def test_a_device_bound_slowdown_inside_the_fleet_is_no_host_share() -> None:
    # A GEMM 5% slower on a chip of a fleet whose tolerance is 7.5%: A/B checks it.
    runs = _runs(1.0, 1.025, 0.975)
    (verdict,) = name_host_shares([judge("t::gemm", _metric("gemm", 1.05),
                                         _metric("gemm", 1.0, runs=runs))])
    assert verdict.worse_on_one_machine and verdict.rule != HOST_BOUND_RULE


def test_a_measurement_of_the_host_itself_is_named_without_a_device_time() -> None:
    # Pinned over pageable copies, 8.1x/8.8x/7.4x on three hosts, 6.7x here: a host property.
    ratio = judge("t::pinned_over_pageable",
                  _metric("pinned_over_pageable", 6.7, kind="dataloader", better="higher"),
                  _metric("pinned_over_pageable", 8.1, kind="dataloader", better="higher",
                          runs=_runs(8.10, 8.80, 7.41)))
    assert ratio.worse_on_one_machine
    (named,) = name_host_shares([ratio])
    assert named.rule == HOST_BOUND_RULE
    assert "on a measurement of the host (kind 'dataloader')" in named.reason


def test_the_end_of_run_note_names_each_host_share_and_how_to_confirm_it() -> None:
    verdicts = name_host_shares(_step(0.1163))
    note = note_host_shares(verdicts, "9c7b528170d9aaaa")
    assert note is not None
    assert note.startswith("1 host-bound metric(s) read worse than one machine's tolerance")
    assert f"{NODE}: step_time +31.1%" in note
    assert note.endswith(f"rerun with --perf-ab-host-bound, or `python -m harness ab "
                         f"9c7b528170d9 -- {NODE}`")
    assert note_host_shares(_step(0.0887), None) is None
    counts = report.render_summary(verdicts)
    assert "1 unchanged, 1 host-bound change (2 metrics)" in counts


def test_a_comparison_of_two_files_names_the_host_share_too() -> None:
    base = RunResults(kind="baseline", fingerprint="h200", environment={}, created="a",
                      metrics={f"{NODE}::step_time": _metric("step_time", 0.0887,
                                                             runs=STEP_RUNS),
                               f"{NODE}::device_time": _metric("device_time", 0.06706,
                                                               runs=DEVICE_RUNS)})
    new = RunResults(kind="results", fingerprint="h200", environment={}, created="b",
                     metrics={f"{NODE}::step_time": _metric("step_time", 0.1163,
                                                            host_bound=True),
                              f"{NODE}::device_time": _metric("device_time", 0.0672,
                                                              profile=PROFILE)})
    comparison = compare_results(base, new, base_path=Path("b.json"), new_path=Path("n.json"))
    assert {v.rule for v in comparison.verdicts} >= {HOST_BOUND_RULE}
    assert Outcome.UNRELIABLE not in comparison.outcomes()


def test_a_wall_time_of_many_launches_whose_device_time_held_is_named_too() -> None:
    # The GPT-2 step on a fresh H200 (2026-12-03): 17% idle, so not host-bound, its wall time
    # +3% against the fleet (8% spread), its device time -0.6%.
    node = "perf_tests/test_training.py::test_step[gpt-none]"
    kernels = tuple(KernelRow(f"kernel_{i}", 10.0, 0.0757 / 300) for i in range(30))
    idle = DeviceProfile(steps=5, device_seconds=0.0757, idle_fraction=0.17,
                         host_issue_seconds=None, kernels=kernels)
    verdicts = [judge(f"{node}::step_time", _metric("step_time", 0.0911),
                      _metric("step_time", 0.0884, runs=_runs(0.0865, 0.0935, 0.0884))),
                judge(f"{node}::device_time", _metric("device_time", 0.0757, profile=idle),
                      _metric("device_time", 0.0761, runs=_runs(0.0758, 0.0762, 0.0761)))]
    assert verdicts[0].worse_on_one_machine
    named = name_host_shares(verdicts)[0]
    assert named.rule == HOST_BOUND_RULE
    assert "on a measurement of many launches (the GPU idled 17.0% of it)" in named.reason


def test_a_kernel_bound_calls_wall_time_is_never_the_hosts() -> None:
    # A GEMM's wall time measures its kernels: within the fleet but worse, A/B checks it.
    busy = DeviceProfile(steps=5, device_seconds=1e-3, idle_fraction=0.01,
                         host_issue_seconds=None, kernels=())
    runs = _runs(1.0e-3, 1.025e-3, 0.975e-3)
    verdicts = [judge("t::gemm", _metric("gemm", 1.05e-3), _metric("gemm", 1.0e-3, runs=runs)),
                judge("t::gemm_device_time", _metric("gemm_device_time", 1.0e-3, profile=busy),
                      _metric("gemm_device_time", 1.0e-3, runs=runs))]
    assert busy.kernel_bound and verdicts[0].worse_on_one_machine
    assert name_host_shares(verdicts)[0].rule != HOST_BOUND_RULE


def test_a_device_time_is_never_the_hosts_share() -> None:
    # Two measurements in one test, one unprefixed: the prefixed device time must not take the
    # unprefixed one for its partner and be named.
    kernels = tuple(KernelRow(f"kernel_{i}", 10.0, 1e-4) for i in range(30))
    idle = DeviceProfile(steps=5, device_seconds=0.03, idle_fraction=0.3,
                         host_issue_seconds=None, kernels=kernels)
    runs = _runs(0.030, 0.0309, 0.0291)
    verdicts = [judge("t::device_time", _metric("device_time", 0.030, profile=idle),
                      _metric("device_time", 0.030, runs=runs)),
                judge("t::x_device_time", _metric("x_device_time", 0.0315, profile=idle),
                      _metric("x_device_time", 0.030, runs=runs))]
    assert verdicts[1].worse_on_one_machine
    assert name_host_shares(verdicts)[1].rule != HOST_BOUND_RULE
