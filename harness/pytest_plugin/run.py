"""The hooks of one pytest run (`PerfRun`): the perf session's start, the collection checks
(GPU and distributed tests), the verdict after each test with the re-run that confirms a
regression, and the end of the run.

Under torchrun every rank runs pytest: the run joins the process group, rank 0 alone prints,
judges, saves and writes baselines, and all ranks reach the same verdict for every test (see
`harness.distributed.group`). `distributed` tests are skipped, or refused under
`-m distributed`, without such a launch.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Generator
from typing import Any

import pytest

from harness.distributed import group
from harness.distributed.group import DistributedRun, RankOutcome
from harness.distributed.launch import DEFAULT_TIMEOUT_SECONDS, Launch, required_ranks
from harness.gate import store
from harness.gate.run_options import PerfOptions
from harness.gate.session import Decision, PerfSession
from harness.measure import devices, environment, host, memory
from harness.pytest_plugin.confirm import confirm_by_ab
from harness.pytest_plugin.options import no_cuda_detail, timing_policy


def _no_cuda_reason() -> str:
    """Why GPU tests cannot run here: the perf device is the CPU, or CUDA is not visible."""
    if environment.cuda_available():
        return "the perf device is cpu (--perf-device cpu); GPU tests measure on CUDA only"
    return f"no CUDA device visible: {no_cuda_detail()}"


def _gpu_markexpr(config: pytest.Config) -> str | None:
    """The -m expression when it names the gpu marker (GPU tests were asked for), else None."""
    return _markexpr_naming(config, "gpu")


def _markexpr_naming(config: pytest.Config, marker: str) -> str | None:
    """The -m expression when it names `marker`, else None."""
    markexpr = config.getoption("markexpr", "") or ""
    return markexpr if re.search(rf"\b{marker}\b", markexpr) else None


def _required_ranks(item: pytest.Item) -> int | None:
    """Ranks a test's `distributed` marker asks for; None for a test without the marker."""
    marker = item.get_closest_marker("distributed")
    if marker is None:
        return None
    try:
        return required_ranks(marker.args, marker.kwargs)
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def _agrees(exc: BaseException) -> bool:
    """Whether the ranks exchange this exception of a test body: everything but the ways a
    whole run ends (Ctrl-C, sys.exit, pytest.exit), after which no rank runs another test."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, pytest.exit.Exception))


class PerfRun:
    """The hooks of one pytest run, bound to its config and its `PerfSession`; the `perf`
    fixture takes the session, the timing policy and the process group from here."""

    PLUGIN_NAME = "harness-perf-run"

    def __init__(self, config: pytest.Config, options: PerfOptions,
                 launch: Launch | None = None) -> None:
        self.config = config
        self.options = options
        self.launch = launch
        self.policy = timing_policy(options)
        self.session: PerfSession | None = None
        # The process group of a torchrun launch, joined at the start of the session.
        self.distributed: DistributedRun | None = None
        # Tests whose body raised on this rank (their failure is this rank's to report).
        self.raised_here: set[str] = set()

    def _start_distributed(self) -> DistributedRun | None:
        if self.launch is None:
            return None
        timeout = self.options.dist_timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        try:
            return group.start(self.launch, self.options.device, timeout_seconds=timeout)
        except (ValueError, RuntimeError) as exc:
            raise pytest.UsageError(f"rank {self.launch.rank} could not join the process "
                                    f"group ({self.options.device}): {exc}") from None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Join the process group of a torchrun launch, record the environment and load the
        baseline (or --perf-compare file) once; a bad file ends the run here, naming it."""
        options = self.options
        run = self.distributed = self._start_distributed()
        run_environment = environment.run_environment(
            options.device, repo_dir=self.config.rootpath,
            world_size=None if run is None else run.world_size)
        if run is not None:
            run_environment["distributed"] = run.describe()
        gpu = devices.local_spec() if options.device == "cuda" else None
        perf_session = PerfSession(options, run_environment, gpu=gpu, distributed=run)
        try:
            if run is None or run.reports:  # the other ranks follow rank 0's verdicts
                perf_session.load_reference()
        except store.StoreError as exc:
            raise pytest.UsageError(str(exc)) from None
        numa = host.numa_warning(run_environment["host"])
        if numa is not None:
            perf_session.end_notes.append(f"WARNING: {numa}")
        self.session = perf_session

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """GPU tests without CUDA: skipped in a plain run, a usage error when -m asked for them.

        trylast: after -m/-k deselection, so only the tests that would run are considered.
        """
        self._check_distributed_items(items)
        if self.distributed is not None:
            try:
                self.distributed.check_same_tests([item.nodeid for item in items])
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
        if not gpu_items or self.options.device == "cuda":
            return
        why = _no_cuda_reason()
        markexpr = _gpu_markexpr(self.config)
        if markexpr is not None:
            raise pytest.UsageError(
                f"-m {markexpr!r} selected {len(gpu_items)} GPU test(s), but {why}. Nothing was "
                f"run: a GPU suite that skips everything would look green. Run it on a machine "
                f"with a CUDA device; for the CPU suite run pytest without -m gpu.")
        skip = pytest.mark.skip(reason=why)
        for item in gpu_items:
            item.add_marker(skip)

    def _check_distributed_items(self, items: list[pytest.Item]) -> None:
        """`distributed` tests: without a launch, skipped (a usage error under -m naming
        the marker); with one, skipped when they need more ranks than it has."""
        needs = {item.nodeid: ranks for item in items
                 if (ranks := _required_ranks(item)) is not None}
        if not needs:
            return
        launch = self.launch
        if launch is None:
            most = max(needs.values())
            command = f"torchrun --nproc-per-node {most} -m pytest -m distributed"
            markexpr = _markexpr_naming(self.config, "distributed")
            if markexpr is not None:
                raise pytest.UsageError(
                    f"-m {markexpr!r} selected {len(needs)} distributed test(s), but this "
                    f"pytest was not started by a launcher (WORLD_SIZE is not set). Nothing "
                    f"was run. Run them under torchrun: {command}")
            skip = pytest.mark.skip(reason=f"distributed test: run under torchrun, e.g. "
                                           f"`{command}`")
            for item in items:
                if item.nodeid in needs:
                    item.add_marker(skip)
            return
        visible = (f" ({len(devices.detect_gpus())} GPU(s) visible on this host)"
                   if self.options.device == "cuda" else "")
        for item in items:
            ranks = needs.get(item.nodeid)
            if ranks is not None and ranks > launch.world_size:
                item.add_marker(pytest.mark.skip(reason=(
                    f"needs {ranks} ranks (distributed(nprocs={ranks})), this launch has "
                    f"{launch.world_size}{visible}: run under "
                    f"`{launch.relaunch_command(ranks)}`")))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """After the test body: judge what it recorded; a regression fails the test.

        A suspected regression is confirmed before it fails the build. Where the baseline's
        commit is in this checkout, by A/B on this machine (`confirm.confirm_by_ab`): only code
        that is slower than the baseline's own code here fails, and a baseline's code that is
        just as slow here is "environment changed". Elsewhere the test body runs once more after
        --perf-confirm-delay (`_remeasure`): a GPU that spent a moment at lower clocks, or a
        neighbour's burst on a shared host, then costs one re-run instead of a red nightly.
        """
        try:
            result = yield  # the test's own exception propagates; nothing is judged then
        except BaseException as exc:
            self._report_raised(item, exc)
            raise
        assert self.session is not None
        decision = self._conclude(item)
        if decision.suspects and isinstance(item, pytest.Function) and self.distributed is None:
            confirmed = confirm_by_ab(self.session, item.nodeid, decision, self.config.rootpath,
                                      self._write_line)
            if confirmed is not None:
                decision = confirmed
            elif decision.regression:
                decision = self._remeasure(item, decision)
        elif decision.regression and isinstance(item, pytest.Function):
            decision = self._remeasure(item, decision)
        if decision.outcome == "failed":
            pytest.fail(decision.message, pytrace=False)
        if decision.outcome == "skipped":
            # _use_item_location: report the skip at the test, not at this line of the plugin
            # (as pytest's own skip markers do).
            raise pytest.skip.Exception(decision.message, _use_item_location=True)
        return result

    def _remeasure(self, item: pytest.Function, first: Decision) -> Decision:
        """Run the test body again after --perf-confirm-delay; only the second verdict counts,
        judged with `confirming=True` (the slowdown must persist beyond half the tolerance)."""
        assert self.session is not None
        self.session.discard_test(item.nodeid)
        delay = self.session.options.confirm_delay_seconds
        time.sleep(delay)
        # The first run's freed tensors are still reserved by the caching allocator: left
        # there, they inflate the re-run's reserved and device memory (on 2 H200s a re-run
        # read a single-GPU step's peak reserved as 20.26 GiB, 12.4% over its baseline and
        # exactly what the first run's DDP step had reserved, 2026-11-21).
        memory.release_cached_memory()
        try:
            item.runtest()
        except BaseException as exc:
            self._report_raised(item, exc)
            raise
        decision = self._conclude(item, confirming=True)
        if decision.regression:
            return dataclasses.replace(
                decision, message=f"{decision.message}\n\n(confirmed: the test was measured "
                                  f"twice, {delay:g} s apart, and regressed both times)")
        self.session.end_notes.append(
            f"{item.nodeid}: a first measurement regressed but a second did not; the second "
            f"counts ({first.message.splitlines()[0]})")
        return decision

    def _write_line(self, line: str) -> None:
        """A progress line on the terminal (A/B rounds), even under output capturing."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def _conclude(self, item: pytest.Item, *, confirming: bool = False) -> Decision:
        """This test's decision: the session's own, or in a distributed run the one every rank
        agreed on (rank 0's, or a failure when another rank's body raised)."""
        assert self.session is not None
        decision = self.session.conclude_test(item.nodeid, confirming=confirming)
        if self.distributed is None:
            return decision
        return self.distributed.agree_on_outcome(
            RankOutcome(rank=self.distributed.rank, decision=decision))

    def _report_raised(self, item: pytest.Item, exc: BaseException) -> None:
        """In a distributed run, tell the other ranks that this rank's test body raised (they
        are waiting for its outcome); the exception itself then propagates here."""
        if self.distributed is None or not _agrees(exc):
            return
        self.raised_here.add(item.nodeid)
        self.distributed.agree_on_outcome(RankOutcome(rank=self.distributed.rank,
                                                      error=group.describe_error(exc)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Remember failures (they block a baseline refresh) and which test bodies passed; on
        ranks other than 0, write this rank's own errors to stderr (nothing else is printed)."""
        run = self.distributed
        if run is not None and not run.reports and report.failed and (
                report.when != "call" or report.nodeid in self.raised_here):
            prefix = f"[rank {run.rank}] "
            text = f"{report.nodeid} failed in {report.when} on this rank:\n{report.longreprtext}"
            sys.stderr.write("".join(prefix + line + "\n" for line in text.splitlines()))
            sys.stderr.flush()
        if self.session is None:
            return
        if report.failed:
            self.session.failed_tests.add(report.nodeid)
        elif report.when == "call" and report.passed:
            self.session.passed_tests.add(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Let the session save the results (--perf-save) and refresh the baseline
        (--perf-update-baselines); a refused or failed write makes the run fail. A run stopped
        by a usage error (such as `-m gpu` without CUDA) measured nothing and writes nothing."""
        if self.session is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
            return
        if not self.session.finish(run_ok=exitstatus == pytest.ExitCode.OK):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The verdict table (regressions first), improvements, and what was saved or written."""
        lines = [] if self.session is None else self.session.summary_lines()
        if not lines:
            return
        terminalreporter.write_sep("=", "perf")
        for line in lines:
            terminalreporter.write_line(line, red=line.startswith("ERROR"))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Leave the process group of a distributed run, and drop the session (pytester runs
        many configs in one process)."""
        if self.distributed is not None:
            self._leave_process_group(self.distributed)
        self.session = None

    def _leave_process_group(self, run: DistributedRun) -> None:
        """Wait until every rank is done, rank 0's files and summary included, then leave the
        process group. torchrun stops every worker as soon as one exits with an error (a failed
        test), so no rank may exit before rank 0 has written and printed everything."""
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            run.barrier()
        except RuntimeError as exc:  # a rank is gone; leave anyway, torchrun reports it
            sys.stderr.write(f"[rank {run.rank}] the final barrier failed: {exc}\n")
        finally:
            run.shutdown()
            self.distributed = None


# The run of a config, for its fixtures.
RUN_KEY = pytest.StashKey[PerfRun]()
