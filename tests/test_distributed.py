"""Distributed runs on CPU: the torchrun launch end to end with gloo, and the pieces of
`harness.distributed` on their own.

Two real launches (`python -m torch.distributed.run --standalone --nproc-per-node 2 -m pytest`)
of a small generated project check what only a launch shows: both ranks run every test and reach
the same outcome, rank 0 alone prints, saves and writes baselines, the fingerprint counts the
ranks, timing is in lockstep, and collectives and DDP's gradient traffic measure on gloo. Each
launch costs seconds of process start-up on 2 cores, so everything else is tested in process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import harness
from harness.distributed.group import InitMemory, LockstepClock, RankOutcome, agreed_decision
from harness.distributed.launch import (
    LAUNCH_VARIABLES,
    Launch,
    launch_from_environment,
    required_ranks,
)
from harness.distributed.training import AllReduceByteCounter, accumulate_gradients
from harness.gate import store
from harness.gate.formatting import format_size
from harness.gate.results import Metric, RunResults
from harness.gate.session import Decision
from harness.measure import environment
from harness.measure.collectives import collective_call, collective_metrics
from harness.testing import FakeClock

# A launch of two ranks that hangs (a bug in the agreement) must fail this test, not CI: two
# launches take 10-15 s each on a 2-core runner, four times that is a hang.
LAUNCH_TIMEOUT_SECONDS = 120
# Seconds a collective of the inner run waits for the other rank: well above the inner tests'
# own gaps (milliseconds), well below LAUNCH_TIMEOUT_SECONDS.
INNER_COLLECTIVE_TIMEOUT = "60"
# Sampling budget of the inner measurements: the warmup (0.5 s) dominates anyway.
INNER_BUDGET = "0.05"

INNER_CONFTEST = """
import json
import os
from pathlib import Path

from harness.gate import store

RANK = os.environ["RANK"]
HERE = Path(__file__).parent


def _logged(name, function):
    def call(*args, **kwargs):
        with open(HERE / f"writes-rank{RANK}.txt", "a") as log:
            log.write(name + "\\n")
        return function(*args, **kwargs)
    return call


# Record which rank writes files (the plugin calls these through the module).
store.save_results = _logged("save_results", store.save_results)
store.update_baseline = _logged("update_baseline", store.update_baseline)


def pytest_sessionfinish(session):
    (HERE / f"junitxml-rank{RANK}.txt").write_text(str(session.config.option.xmlpath))


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        with open(HERE / f"outcomes-rank{RANK}.jsonl", "a") as log:
            log.write(json.dumps({"test": report.nodeid.split("::")[-1], "when": report.when,
                                  "outcome": report.outcome,
                                  "text": report.longreprtext}) + "\\n")
"""

INNER_TESTS = """
import json
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from harness.distributed.training import AllReduceByteCounter, accumulate_gradients

HERE = Path(__file__).parent


@pytest.mark.distributed(nprocs=2)
def test_collectives(perf):
    samples = {}
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        measured = perf.collective(op, 64 * 1024)
        samples.update({name: list(m.samples) for name, m in measured.metrics.items()})
    (HERE / f"samples-rank{perf.distributed.rank}.json").write_text(json.dumps(samples))


@pytest.mark.distributed(nprocs=2)
def test_regressed(perf):
    perf.metric("throughput", 10.0, unit="items/s")


@pytest.mark.distributed(nprocs=2)
def test_unchanged(perf):
    perf.metric("throughput", 20.0, unit="items/s")


@pytest.mark.distributed(nprocs=2)
def test_fails_on_rank_1(perf):
    assert perf.distributed.rank != 1, "rank 1 disagrees"


@pytest.mark.distributed(nprocs=4)
def test_needs_four_ranks(perf):
    pass


@pytest.mark.distributed
def test_ddp_reduces_every_gradient_once_per_optimizer_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    ddp = DistributedDataParallel(model)
    counter = AllReduceByteCounter()
    ddp.register_comm_hook(None, counter.hook)
    batch = torch.randn(8, 16)

    def micro_step():
        ddp(batch).square().mean().backward()

    every_gradient = sum(p.numel() for p in model.parameters()) * 4
    for gas in (1, 3):
        counter.reset()
        accumulate_gradients(ddp, micro_step, gas)
        assert counter.bytes == every_gradient, (gas, counter.bytes, every_gradient)


def test_not_distributed():
    pass
"""

FILE = "test_launch.py"
# The hardware key of a 2-rank CPU launch on this machine ("cpu-<model>-x2").
CPU_X2 = environment.cpu_fingerprint(2)


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """What a torchrun launch of the inner project left: exit code, output, files."""

    project: Path
    returncode: int
    stdout: str
    stderr: str

    def outcomes(self, rank: int) -> dict[str, tuple[str, str, str]]:
        """{test name: (phase, outcome, report text)} as rank `rank` reported it."""
        path = self.project / f"outcomes-rank{rank}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {row["test"]: (row["when"], row["outcome"], row["text"]) for row in rows}

    def writes(self, rank: int) -> list[str]:
        """The store functions rank `rank` called, in order."""
        path = self.project / f"writes-rank{rank}.txt"
        return path.read_text().split() if path.exists() else []


def _project(root: Path, baseline: RunResults | None) -> Path:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text(INNER_CONFTEST)
    (root / FILE).write_text(INNER_TESTS)
    if baseline is not None:
        store.write_baseline(root / "baselines", baseline)
    return root


def _launch(project: Path, *args: str) -> LaunchResult:
    """Run the inner project under torchrun with 2 CPU ranks (gloo); the whole process group
    is killed when it outlives LAUNCH_TIMEOUT_SECONDS."""
    env = {key: value for key, value in os.environ.items()
           if key not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    # The inner pytest runs outside the repository: make the checkout importable even when the
    # package is not installed.
    repo = str(Path(harness.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "pytest", "-p", "harness.pytest_plugin",
               "-p", "no:cacheprovider", "--perf-device=cpu", f"--perf-budget={INNER_BUDGET}",
               f"--perf-dist-timeout={INNER_COLLECTIVE_TIMEOUT}", "--perf-confirm-delay=0",
               "-rs", *args]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks: its own session
        stdout, stderr = process.communicate()
        pytest.fail(f"the torchrun launch did not end within {LAUNCH_TIMEOUT_SECONDS} s: the "
                    f"ranks hang\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return LaunchResult(project, process.returncode, stdout, stderr)


def _metric(value: float) -> Metric:
    return Metric(name="throughput", unit="items/s", better="higher", samples=(value,))


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> LaunchResult:
    """One launch that judges against a baseline where test_regressed had twice the
    throughput, test_unchanged the same, and test_collectives nothing."""
    baseline = RunResults(kind="baseline", fingerprint=CPU_X2, environment={"device": "cpu"},
                          metrics={f"{FILE}::test_regressed::throughput": _metric(20.0),
                                   f"{FILE}::test_unchanged::throughput": _metric(20.0)})
    project = _project(tmp_path_factory.mktemp("judged") / "project", baseline)
    return _launch(project, "--perf-save=results.json", "--junitxml=report.xml")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> LaunchResult:
    """One launch that records a baseline of two tests (`-m distributed` selects them)."""
    project = _project(tmp_path_factory.mktemp("recorded") / "project", None)
    return _launch(project, "-m", "distributed", "-k", "unchanged or needs_four",
                   "--perf-update-baselines")


# -- the launch end to end --------------------------------------------------------------------


def test_both_ranks_run_every_test_and_reach_the_same_outcome(judged: LaunchResult) -> None:
    rank0, rank1 = judged.outcomes(0), judged.outcomes(1)
    summary = {test: (when, outcome) for test, (when, outcome, _) in rank0.items()}
    assert summary == {
        "test_collectives": ("call", "skipped"),  # no baseline for its metrics
        "test_regressed": ("call", "failed"),
        "test_unchanged": ("call", "passed"),
        "test_fails_on_rank_1": ("call", "failed"),
        "test_needs_four_ranks": ("setup", "skipped"),
        "test_ddp_reduces_every_gradient_once_per_optimizer_step": ("call", "passed"),
        "test_not_distributed": ("call", "passed"),
    }, judged.stdout + judged.stderr
    assert {test: (when, outcome) for test, (when, outcome, _) in rank1.items()} == summary
    assert judged.returncode != 0, "failed tests must fail the launch"


def test_a_regression_on_rank_0_fails_the_test_on_every_rank(judged: LaunchResult) -> None:
    for rank in (0, 1):
        text = judged.outcomes(rank)["test_regressed"][2]
        assert "perf regression in test_launch.py::test_regressed: throughput" in text
        assert "measured twice, 0 s apart, and regressed both times" in text


def test_a_failure_on_one_rank_fails_the_test_on_every_rank_naming_it(
        judged: LaunchResult) -> None:
    own = judged.outcomes(1)["test_fails_on_rank_1"][2]
    assert "AssertionError: rank 1 disagrees" in own
    agreed = judged.outcomes(0)["test_fails_on_rank_1"][2]
    assert ("the test body failed on 1 of 2 rank(s) (rank 1: AssertionError: rank 1 "
            "disagrees)") in agreed


def test_a_test_needing_more_ranks_than_launched_is_skipped_with_the_reason(
        judged: LaunchResult) -> None:
    for rank in (0, 1):
        reason = judged.outcomes(rank)["test_needs_four_ranks"][2]
        assert ("needs 4 ranks (distributed(nprocs=4)), this launch has 2: run under "
                "`torchrun --nproc-per-node 4 -m pytest`") in reason


def test_only_rank_0_prints_the_report_and_saves_the_results(judged: LaunchResult) -> None:
    assert judged.stdout.count("short test summary info") == 1
    assert judged.stdout.count(f"hardware fingerprint {CPU_X2}") == 1
    assert judged.writes(0) == ["save_results"]
    assert judged.writes(1) == []
    saved = store.load_results(judged.project / "results.json")
    assert saved.fingerprint == CPU_X2
    assert saved.environment["distributed"] == {"world_size": 2, "nodes": 1, "backend": "gloo",
                                                "nccl": None}


def test_only_rank_0_writes_the_junit_report(judged: LaunchResult) -> None:
    assert (judged.project / "junitxml-rank0.txt").read_text() == "report.xml"
    assert (judged.project / "junitxml-rank1.txt").read_text() == "None"
    assert (judged.project / "report.xml").read_text().count("<testcase ") == 7


def test_rank_1_prints_only_its_own_errors_on_stderr(judged: LaunchResult) -> None:
    lines = [line for line in judged.stderr.splitlines() if line.startswith("[rank 1]")]
    assert lines[0] == "[rank 1] test_launch.py::test_fails_on_rank_1 failed in call on this rank:"
    assert not any("test_regressed" in line for line in lines), "rank 0 reports regressions"
    assert not any(line.startswith("[rank 0]") for line in judged.stderr.splitlines())


def test_lockstep_timing_gives_every_rank_the_same_samples(judged: LaunchResult) -> None:
    rank0 = json.loads((judged.project / "samples-rank0.json").read_text())
    rank1 = json.loads((judged.project / "samples-rank1.json").read_text())
    assert set(rank0) == {f"{op}_64KiB{suffix}" for op in ("all_reduce", "all_gather",
                                                           "reduce_scatter")
                          for suffix in ("", "_busbw")}
    assert rank0 == rank1
    assert all(value > 0 for samples in rank0.values() for value in samples)


def test_only_rank_0_writes_the_baseline_of_the_rank_count(recorded: LaunchResult) -> None:
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert recorded.writes(0) == ["update_baseline"]
    assert recorded.writes(1) == []
    baseline = store.load_baseline(recorded.project / "baselines", CPU_X2)
    assert baseline is not None
    assert set(baseline.metrics) == {f"{FILE}::test_unchanged::throughput"}
    assert not (recorded.project / "baselines" / "history").exists(), "written more than once"


# -- without a launch ----------------------------------------------------------------------------

MARKED = """
import pytest

@pytest.mark.distributed(nprocs=2)
def test_on_two_ranks():
    pass

def test_alone():
    pass
"""


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> None:
    """A plain pytest process: no launcher variables, no CUDA; the markers apply to every test,
    as in this repository (the tests here do not use `perf`)."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(environment, "cuda_available", lambda: False)
    pytester.makeini("[pytest]\nperf_marker_scope = all\n")


def test_distributed_tests_are_skipped_without_a_launch_saying_how_to_run_them(
        pytester: pytest.Pytester, no_launch: None) -> None:
    pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_marked.py:*: distributed test: run under "
                                 "torchrun, e.g. `torchrun --nproc-per-node 2 -m pytest -m "
                                 "distributed`"])


def test_dash_m_distributed_without_a_launch_stops_before_running_anything(
        pytester: pytest.Pytester, no_launch: None) -> None:
    pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-m", "distributed")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: -m 'distributed' selected 1 distributed test(s), but "
                                 "this pytest was not started by a launcher (WORLD_SIZE is not "
                                 "set). Nothing was run. Run them under torchrun: torchrun "
                                 "--nproc-per-node 2 -m pytest -m distributed"])


def test_a_malformed_distributed_marker_is_a_usage_error_naming_the_test(
        pytester: pytest.Pytester, no_launch: None) -> None:
    pytester.makepyfile(test_bad="""
import pytest

@pytest.mark.distributed(nprocs=0)
def test_nobody():
    pass
""")
    result = pytester.runpytest("-p", "harness.pytest_plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_bad.py::test_nobody: distributed(nprocs=...) must "
                                 "be a positive integer number of ranks, got 0"])


def test_a_half_set_launch_environment_is_a_usage_error_naming_the_variable(
        pytester: pytest.Pytester, no_launch: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest("-p", "harness.pytest_plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: torch.distributed launch: RANK is not set, but "
                                 "WORLD_SIZE is*"])


def test_a_bad_collective_timeout_is_a_usage_error(pytester: pytest.Pytester,
                                                   no_launch: None) -> None:
    pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-dist-timeout", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --perf-dist-timeout (command line): '0' is not valid; "
                                 "it must be a number of seconds greater than 0*"])


# -- the pieces --------------------------------------------------------------------------------


def test_the_launch_is_read_from_torchrun_variables() -> None:
    assert launch_from_environment({}) is None
    launch = launch_from_environment({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1",
                                      "LOCAL_WORLD_SIZE": "4"})
    assert launch == Launch(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert launch.nodes == 2
    assert launch.relaunch_command() == "torchrun --nnodes 2 --nproc-per-node 4 -m pytest"
    single_node = launch_from_environment({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert single_node is not None and single_node.local_world_size == 2


@pytest.mark.parametrize(("environ", "message"), [
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK is not set, but WORLD_SIZE is"),
    ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"},
     "WORLD_SIZE='two' in the environment is not a non-negative integer"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
     "RANK=2 is not a rank of WORLD_SIZE=2 (valid: 0..1)"),
    ({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3"},
     "LOCAL_WORLD_SIZE=3 does not divide WORLD_SIZE=4 into whole nodes"),
    ({"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"},
     "LOCAL_RANK=2 is not a rank of LOCAL_WORLD_SIZE=2 (valid: 0..1)"),
])
def test_a_malformed_launch_environment_names_the_variable(environ: dict[str, str],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=_literal(message)):
        launch_from_environment(environ)


@pytest.mark.parametrize(("args", "kwargs", "ranks"), [
    ((), {}, 2), ((4,), {}, 4), ((), {"nprocs": 1}, 1),
])
def test_the_marker_says_how_many_ranks_a_test_needs(args: tuple[Any, ...],
                                                     kwargs: dict[str, Any], ranks: int) -> None:
    assert required_ranks(args, kwargs) == ranks


@pytest.mark.parametrize(("args", "kwargs"), [
    ((2, 4), {}), ((), {"ranks": 2}), ((), {"nprocs": "2"}), ((True,), {}),
])
def test_a_marker_with_anything_but_a_rank_count_is_refused(args: tuple[Any, ...],
                                                            kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="distributed"):
        required_ranks(args, kwargs)


def test_every_rank_follows_rank_0s_decision_when_no_body_raised() -> None:
    regression = Decision("failed", "perf regression", regression=True)
    outcomes = [RankOutcome(rank=1, decision=Decision("passed")),
                RankOutcome(rank=0, decision=regression)]
    assert agreed_decision(outcomes) == regression


def test_a_body_that_raised_on_any_rank_fails_the_test_everywhere() -> None:
    outcomes = [RankOutcome(rank=0, decision=Decision("passed")),
                RankOutcome(rank=1, error="RuntimeError: gloo timed out"),
                RankOutcome(rank=2, error="AssertionError: x")]
    decision = agreed_decision(outcomes)
    assert decision.outcome == "failed" and not decision.regression
    assert decision.message.startswith("the test body failed on 2 of 3 rank(s) (rank 1: "
                                       "RuntimeError: gloo timed out; rank 2: AssertionError: x)")
    with pytest.raises(ValueError, match="one RankOutcome per rank"):
        agreed_decision([])


class _TwoRanks:
    """A stand-in process group whose other rank is always 1.5x slower."""

    world_size = 2

    def __init__(self) -> None:
        self.barriers = 0

    def barrier(self) -> None:
        self.barriers += 1

    def max_over_ranks(self, value: float) -> float:
        return max(value, 1.5 * value)


def test_the_lockstep_clock_reads_the_slowest_rank_after_a_barrier() -> None:
    run = _TwoRanks()
    clock = LockstepClock(FakeClock(seed=0, base_seconds=1e-3, noise_cv=0.0),
                          run)  # type: ignore[arg-type]
    calls: list[int] = []
    assert clock.time(lambda: calls.append(1), 4) == pytest.approx(1.5 * 4e-3)
    assert clock.time(lambda: calls.append(1), 2) == pytest.approx(1.5 * 2e-3)
    assert len(calls) == 6 and run.barriers == 2
    assert clock.now() == pytest.approx(1.5 * 6e-3), "now() is the agreed time, not the local"
    assert clock.name == "fake, slowest of 2 ranks"
    with pytest.raises(ValueError, match="already a LockstepClock"):
        LockstepClock(clock, run)  # type: ignore[arg-type]


class _LeadingFakeClock(FakeClock):
    """A fake clock whose calls wait behind a lead, like QueuedCudaEventClock."""

    def lead_seconds(self, iterations: int) -> float:
        return 1e-3 + iterations * 1e-4


def test_the_lockstep_clock_counts_an_inner_lead_as_time_spent() -> None:
    clock = LockstepClock(_LeadingFakeClock(seed=0, base_seconds=1e-3, noise_cv=0.0),
                          _TwoRanks())  # type: ignore[arg-type]
    assert clock.time(lambda: None, 4) == pytest.approx(1.5 * 4e-3), "the lead is not timed"
    assert clock.now() == pytest.approx(1.5 * 4e-3 + 1.4e-3)


def test_collective_metrics_follow_the_nccl_tests_convention() -> None:
    metrics = collective_metrics("all_reduce_1GiB", "all_reduce", 2**30, 8, [5e-3, 4e-3],
                                 link_bandwidth_bytes_per_s=450e9, clock_name="cuda-events")
    assert set(metrics) == {"all_reduce_1GiB", "all_reduce_1GiB_busbw"}
    assert metrics["all_reduce_1GiB"].samples == (5e-3, 4e-3)
    busbw = metrics["all_reduce_1GiB_busbw"]
    assert busbw.samples == pytest.approx((2**30 / 5e-3 * 1.75 / 1e9, 2**30 / 4e-3 * 1.75 / 1e9))
    assert busbw.unit == "GB/s" and busbw.better == "higher" and busbw.theory == 450.0
    unknown = collective_metrics("x", "all_gather", 2**20, 2, [1e-3],
                                 link_bandwidth_bytes_per_s=None, clock_name="host")
    assert unknown["x_busbw"].theory is None
    assert unknown["x"].note == "all_gather of 1MiB over 2 ranks, per call; host clock"
    noted = collective_metrics("x", "all_gather", 2**20, 2, [1e-3], link_bandwidth_bytes_per_s=None,
                               clock_name="cuda-events, queued", clock_note="1 of 9 samples ...")
    assert noted["x"].note.endswith("; cuda-events, queued clock; 1 of 9 samples ...")


def test_a_collective_size_must_split_into_whole_elements_on_every_rank() -> None:
    with pytest.raises(ValueError, match=_literal(
            "nbytes must be a positive multiple of 16 bytes (world_size 4 x 4-byte "
            "torch.float32 elements, so every rank holds whole elements), got 1000")):
        collective_call("all_gather", 1000, world_size=4, device="cpu")
    with pytest.raises(ValueError, match="op must be one of all_reduce, all_gather, "
                                         "reduce_scatter; got 'broadcast'"):
        collective_call("broadcast", 1024, world_size=2, device="cpu")


@pytest.mark.parametrize(("nbytes", "name"), [
    (8 * 2**10, "8KiB"), (2**20, "1MiB"), (3 * 2**30, "3GiB"), (1000, "1000B"),
])
def test_sizes_are_named_in_binary_units(nbytes: int, name: str) -> None:
    assert format_size(nbytes) == name


def test_the_memory_of_joining_is_split_into_init_and_first_barrier() -> None:
    memory = InitMemory(before_init_bytes=500, after_init_bytes=1500, after_barrier_bytes=1700,
                        reserved_before_bytes=2, reserved_after_bytes=2, per_process=True)
    assert (memory.init_bytes, memory.barrier_bytes, memory.total_bytes) == (1000, 200, 1200)


def test_a_distributed_cpu_run_is_fingerprinted_by_its_rank_count() -> None:
    assert environment.run_environment("cpu", world_size=2)["fingerprint"] == CPU_X2
    assert environment.run_environment("cpu")["fingerprint"] == environment.cpu_fingerprint()
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        environment.run_environment("cpu", world_size=0)


def test_gradient_accumulation_needs_a_ddp_model() -> None:
    with pytest.raises(ValueError, match="model must be a DistributedDataParallel module, got "
                                         "Linear"):
        accumulate_gradients(torch.nn.Linear(2, 2), lambda: None, 2)  # type: ignore[arg-type]
    assert AllReduceByteCounter().bytes == 0


def _literal(text: str) -> str:
    import re

    return re.escape(text)
