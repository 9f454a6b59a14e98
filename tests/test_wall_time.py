"""The device time of a kernel-bound call follows its wall time (`harness.gate.wall_time`): a
profiled burst that reads a GEMM worse while its back-to-back wall time reads it unchanged
neither fails the test nor sends it to A/B; a step of many kernels keeps its own verdict."""

from __future__ import annotations

from pathlib import Path

from harness.gate.compare import compare_results
from harness.gate.fleet import RunSummary
from harness.gate.paired import PairedOutcome, paired_verdict
from harness.gate.profile import MAX_KERNEL_BOUND_LAUNCHES, DeviceProfile, KernelRow
from harness.gate.results import Metric, RunResults
from harness.gate.run_options import PerfOptions
from harness.gate.session import PerfSession
from harness.gate.suspects import suspects
from harness.gate.verdict import WALL_TIME_RULE, Outcome, Verdict, judge
from harness.gate.wall_time import defer_paired, defer_to_wall_time, kernel_bound, wall_time_twin

TEST = "perf_tests/test_gemm.py::test_square_gemm[bf16]"
# Three recorded runs of a 1 ms call 2.5% apart: a fleet tolerance of about 7.5%, one
# machine's 2%.
FLEET = tuple(RunSummary(median=m * 1e-3, spread=0.005, count=20, host=f"h{i}", created="")
              for i, m in enumerate((1.0, 1.025, 0.975)))


def _profile(*, launches: int = 2, idle: float = 0.01) -> DeviceProfile:
    rows = tuple(KernelRow(f"kernel_{i}", 1.0, 1e-3 / launches) for i in range(launches))
    return DeviceProfile(steps=5, device_seconds=1e-3, idle_fraction=idle,
                         host_issue_seconds=None, kernels=rows)


def _samples(median: float, count: int) -> tuple[float, ...]:
    return tuple(median * (1 + 0.001 * (i - count // 2)) for i in range(count))


def _wall(median: float, name: str = "gemm") -> Metric:
    return Metric(name=name, unit="s", better="lower", kind="time",
                  samples=_samples(median * 1e-3, 41))


def _device(median: float, *, launches: int = 2, idle: float = 0.01,
            name: str = "gemm_device_time", runs: tuple[RunSummary, ...] = ()) -> Metric:
    return Metric(name=name, unit="s", better="lower", kind="time",
                  samples=_samples(median * 1e-3, 5), runs=runs,
                  profile=_profile(launches=launches, idle=idle))


def _judged(wall: float, device: float, **device_options: object) -> list[Verdict]:
    """One test's verdicts: wall and device time at these medians (ms) against 1 ms each."""
    name = str(device_options.pop("name", "gemm_device_time"))
    runs = device_options.pop("runs", ())
    twin = "step_time" if name == "device_time" else "gemm"
    return [judge(f"{TEST}::{twin}", _wall(wall, twin), _wall(1.0, twin)),
            judge(f"{TEST}::{name}", _device(device, name=name, **device_options),  # type: ignore[arg-type]
                  _device(1.0, name=name, runs=runs))]  # type: ignore[arg-type]


def test_the_twin_of_a_profiled_metric_is_its_wall_time() -> None:
    ids = {f"{TEST}::gemm", f"{TEST}::step_time", f"{TEST}::x_step_time"}
    assert wall_time_twin(f"{TEST}::gemm_device_time", ids) == f"{TEST}::gemm"
    assert wall_time_twin(f"{TEST}::device_time", ids) == f"{TEST}::step_time"
    assert wall_time_twin(f"{TEST}::x_device_time", ids) == f"{TEST}::x_step_time"
    assert wall_time_twin(f"{TEST}::other_device_time", ids) is None
    assert wall_time_twin(f"{TEST}::gemm", ids) is None


def test_a_call_of_few_launches_that_kept_the_gpu_busy_is_kernel_bound() -> None:
    assert kernel_bound(_device(1.0))
    assert not kernel_bound(_device(1.0, launches=MAX_KERNEL_BOUND_LAUNCHES + 1))
    assert not kernel_bound(_device(1.0, idle=0.5))  # host-bound: the host set the pace
    assert not kernel_bound(_wall(1.0))  # no profile


def test_a_burst_that_reads_a_gemm_worse_follows_its_unchanged_wall_time() -> None:
    first = _judged(1.005, 1.05)
    assert first[1].outcome is Outcome.REGRESSION
    wall, device = defer_to_wall_time(first)
    assert wall == first[0]
    assert device.outcome is Outcome.UNCHANGED and device.rule == WALL_TIME_RULE
    assert "the wall time decides" in device.reason and "'gemm' (+0.5%)" in device.reason
    assert device.change == first[1].change  # the reading stays visible
    assert not suspects([wall, device], strict=True).all


def test_a_burst_worse_only_within_the_fleet_is_no_suspect_once_deferred() -> None:
    first = _judged(1.0, 1.04, runs=FLEET)
    assert first[1].worse_on_one_machine  # without the wall time, a within-fleet suspect
    deferred = defer_to_wall_time(first)
    assert not deferred[1].worse_on_one_machine
    assert not suspects(deferred, strict=True).all


def test_a_moved_wall_time_leaves_the_device_time_its_own_verdict() -> None:
    first = _judged(1.05, 1.05)
    assert defer_to_wall_time(first) == first
    assert suspects(first, strict=True).regressions == tuple(v.metric_id for v in first)


def test_a_faster_wall_time_rules_out_a_slower_burst() -> None:
    # The fp8 GEMM on a fresh H200: wall time 3.2% faster than the fleet, burst 10% slower.
    first = _judged(0.968, 1.10)
    assert first[0].outcome is Outcome.IMPROVEMENT and first[1].outcome is Outcome.REGRESSION
    wall, device = defer_to_wall_time(first)
    assert wall == first[0]
    assert device.outcome is Outcome.UNCHANGED and device.rule == WALL_TIME_RULE
    assert "'gemm' (-3.2%) over 41 back-to-back samples was judged better" in device.reason
    assert not suspects([wall, device], strict=True).all
    # Both faster: the burst keeps its improvement.
    both = _judged(0.968, 0.95)
    assert defer_to_wall_time(both) == both


def test_a_step_of_many_kernels_or_a_host_bound_call_keeps_its_device_time() -> None:
    many = _judged(1.0, 1.05, launches=30, name="device_time")
    assert defer_to_wall_time(many) == many
    host_bound = _judged(1.0, 1.05, idle=0.4)
    assert defer_to_wall_time(host_bound) == host_bound


def test_an_ab_follows_the_wall_time_of_a_kernel_bound_call() -> None:
    base, noisy = [1.0, 1.0, 1.0], [1.04, 0.98, 1.05]
    verdicts = {f"{TEST}::gemm": paired_verdict(f"{TEST}::gemm", "lower", base, [1.0, 1.002, 0.999],
                                                tolerance=0.02, alpha=0.01),
                f"{TEST}::gemm_device_time": paired_verdict(
                    f"{TEST}::gemm_device_time", "lower", base, noisy, tolerance=0.02,
                    alpha=0.01)}
    assert verdicts[f"{TEST}::gemm_device_time"].outcome is PairedOutcome.UNDECIDED
    head = {f"{TEST}::gemm": _wall(1.0), f"{TEST}::gemm_device_time": _device(1.0)}
    deferred = defer_paired(verdicts, head)
    assert deferred[f"{TEST}::gemm_device_time"].outcome is PairedOutcome.UNCHANGED
    assert "the wall time decides" in deferred[f"{TEST}::gemm_device_time"].reason
    # A wall time the rounds judged better lets an undecided burst follow it too.
    faster = dict(verdicts)
    faster[f"{TEST}::gemm"] = paired_verdict(f"{TEST}::gemm", "lower", base, [0.95, 0.951, 0.949],
                                             tolerance=0.02, alpha=0.01)
    assert faster[f"{TEST}::gemm"].outcome is PairedOutcome.IMPROVEMENT
    followed = defer_paired(faster, head)[f"{TEST}::gemm_device_time"]
    assert followed.outcome is PairedOutcome.UNCHANGED and "judged better" in followed.reason
    # A step of many kernels keeps what its rounds said.
    head[f"{TEST}::gemm_device_time"] = _device(1.0, launches=30)
    assert defer_paired(verdicts, head) == verdicts


def test_a_session_passes_a_gemm_whose_burst_alone_reads_worse(tmp_path: Path) -> None:
    session = PerfSession(PerfOptions(baselines_dir=tmp_path, device="cpu", strict=True),
                          {"fingerprint": "cpu"})
    session.reference = RunResults(
        kind="baseline", fingerprint="cpu", environment={},
        metrics={f"{TEST}::gemm": _wall(1.0), f"{TEST}::gemm_device_time": _device(1.0)})
    session.record(TEST, _wall(1.004))
    session.record(TEST, _device(1.06))
    decision = session.conclude_test(TEST)
    assert decision.outcome == "passed" and not decision.suspects
    assert [v.rule for v in session.verdicts][1] == WALL_TIME_RULE


def test_compare_judges_a_kernel_bound_device_time_by_its_wall_time() -> None:
    def run(wall: float, device: float) -> RunResults:
        return RunResults(kind="results", fingerprint="cpu", environment={},
                          metrics={f"{TEST}::gemm": _wall(wall),
                                   f"{TEST}::gemm_device_time": _device(device)},
                          created=f"{wall}-{device}")

    comparison = compare_results(run(1.0, 1.0), run(1.003, 1.06), base_path=Path("base.json"),
                                 new_path=Path("new.json"))
    assert {v.metric_id: v.rule for v in comparison.verdicts}[f"{TEST}::gemm_device_time"] \
        == WALL_TIME_RULE
    assert Outcome.REGRESSION not in comparison.outcomes()
