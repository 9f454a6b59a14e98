"""The hooks of one pytest run (`PerfRun`): the collection checks (GPU and distributed tests),
the perf session's start, the verdict after each test (a suspected regression goes to the
run's one A/B at its end, or is re-measured), and the end of the run.

The perf session starts after collection, and only when a selected test uses `perf` (or, for a
test that asks for it by name at run time, when it first does): a run without measured tests
imports no torch, records no environment, reads no baseline and prints nothing.

Under torchrun every rank runs pytest: the run joins the process group, rank 0 alone prints,
judges, saves and writes baselines, and all ranks reach the same verdict for every test (see
`harness.distributed.group`). `distributed` tests are skipped, or refused under
`-m distributed`, without such a launch. Under pytest-xdist measured tests are refused
(`xdist_role`): parallel workers would measure at once and slow each other down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from harness.distributed.launch import DEFAULT_TIMEOUT_SECONDS, Launch, launch_from_environment
from harness.gate.run_options import PerfOptions
from harness.measure.garbage import FrozenBetweenTests
from harness.pytest_plugin import markers, ranks
from harness.pytest_plugin.context import (
    XDIST_REFUSAL,
    check_baselines_location,
    nothing_measured_lines,
    rootdir_lines,
    xdist_role,
)
from harness.pytest_plugin.options import read_options, timing_policy

if TYPE_CHECKING:
    from harness.distributed.group import DistributedRun
    from harness.gate.session import Decision, PerfSession
    from harness.measure.sampling import TimingPolicy
    from harness.pytest_plugin.confirm import ABCheckout, PendingConfirmations


def _agrees(exc: BaseException) -> bool:
    """Whether the ranks exchange this exception of a test body: everything but the ways a
    whole run ends (Ctrl-C, sys.exit, pytest.exit), after which no rank runs another test."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, pytest.exit.Exception))


class PerfRun:
    """The hooks of one pytest run, bound to its config; its `PerfSession` once a test measures.
    The `perf` fixture takes the session, the timing policy and the process group from here."""

    PLUGIN_NAME = "harness-perf-run"

    def __init__(self, config: pytest.Config, options: PerfOptions, scope: str) -> None:
        self.config = config
        # As checked at configure time; `start` resolves the device ("auto" until then).
        self.options = options
        self.scope = scope
        self.policy: TimingPolicy | None = None
        self.session: PerfSession | None = None
        # The process group of a torchrun launch, joined at the start of the session.
        self.distributed: DistributedRun | None = None
        # Tests whose body raised on this rank (their failure is this rank's to report).
        self.raised_here: set[str] = set()
        # Outcomes of tests that ran before the session started (see `start`).
        self._failed_before: set[str] = set()
        self._passed_before: set[str] = set()
        # Measured tests a pytest-xdist worker refuses (those not skipped anyway).
        self._refused: set[str] = set()
        # The suspected tests the end-of-run A/B item confirms; None without that item.
        self.pending: PendingConfirmations | None = None
        # Seconds each test's call took: what confirming it costs in an A/B's child run.
        self.durations: dict[str, float] = {}
        # Objects that outlive the measured tests, frozen out of garbage collections.
        self.frozen = FrozenBetweenTests()

    @functools.cached_property
    def launch(self) -> Launch | None:
        """The torchrun launch this pytest runs in, read from the environment when first
        needed; None without one."""
        try:
            return launch_from_environment(os.environ)
        except ValueError as exc:
            raise pytest.UsageError(f"torch.distributed launch: {exc}") from None

    def _device(self) -> str:
        """The device measured tests run on, "cuda" or "cpu" (resolving "auto" asks torch)."""
        if self.options.device == "auto":
            self.options = read_options(self.config)
        return self.options.device

    def _start_distributed(self) -> DistributedRun | None:
        if self.launch is None:
            return None
        from harness.distributed import group

        timeout = self.options.dist_timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        try:
            return group.start(self.launch, self.options.device, timeout_seconds=timeout)
        except (ValueError, RuntimeError) as exc:
            raise pytest.UsageError(f"rank {self.launch.rank} could not join the process "
                                    f"group ({self.options.device}): {exc}") from None

    def start(self, session: pytest.Session) -> PerfSession:
        """The perf session, started on first use: join the process group of a torchrun launch,
        record the environment and load the baseline (or --perf-compare file) once; a bad file
        or a baseline left behind by a moved rootdir is a pytest.UsageError naming it."""
        if self.session is not None:
            return self.session
        if xdist_role(self.config) == "worker":
            raise pytest.UsageError(XDIST_REFUSAL)
        from harness.gate import store
        from harness.gate.ab import CHILD_RUN_VARIABLE
        from harness.gate.session import PerfSession
        from harness.measure import devices, environment, host

        self._device()
        options = self.options
        launch = self.launch
        if launch is not None and launch.rank != 0:
            ranks.quiet(session)
        self.policy = timing_policy(options)
        run = self.distributed = self._start_distributed()
        run_environment = environment.run_environment(
            options.device, repo_dir=self.config.rootpath,
            world_size=None if run is None else run.world_size,
            calibrate=os.environ.get(CHILD_RUN_VARIABLE) != "1")
        if run is not None:
            run_environment["distributed"] = run.describe()
        check_baselines_location(self.config, options, str(run_environment["fingerprint"]))
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
        perf_session.failed_tests |= self._failed_before
        perf_session.passed_tests |= self._passed_before
        self.session = perf_session
        return perf_session

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session,
                                      items: list[pytest.Item]) -> None:
        """GPU tests without CUDA: skipped in a plain run, a usage error when -m asked for them;
        `distributed` tests likewise without a launch (`perf_marker_scope` says which tests
        count). Then start the perf session if a selected test measures.

        trylast: after -m/-k deselection, so only the tests that would run are considered.
        """
        scoped = markers.in_scope(items, self.scope)
        skipped = (markers.skip_distributed_tests(self.config, scoped, lambda: self.launch,
                                                  self._device)
                   | markers.skip_gpu_tests(self.config, scoped, self._device))
        measured = [item.nodeid for item in items
                     if markers.uses_perf(item) and item.nodeid not in skipped]
        if xdist_role(self.config) == "worker":
            self._refused = set(measured)
            return
        if self.config.option.collectonly or not measured:
            return
        self.start(session)
        if self.distributed is not None:
            try:
                self.distributed.check_same_tests([item.nodeid for item in items])
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        self._add_confirmation(session, items)

    def _add_confirmation(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        """Where A/B against the baseline's commit can run, append the item that confirms every
        suspected test at the end of the run (`confirm.ABConfirmation`)."""
        from harness.pytest_plugin import confirm

        checkout = self._ab_checkout
        if not isinstance(checkout, confirm.ABCheckout):
            return
        assert self.session is not None
        self.pending = confirm.PendingConfirmations(self.session, checkout,
                                                    self.config.rootpath, self._write_line,
                                                    self.durations)
        items.append(confirm.ABConfirmation.from_parent(
            session, name=confirm.CONFIRMATION_NODEID, nodeid=confirm.CONFIRMATION_NODEID,
            pending=self.pending))

    @functools.cached_property
    def _ab_checkout(self) -> ABCheckout | str | None:
        """Where A/B can confirm a suspect (`confirm.ab_checkout`), found once per run, after
        the session started; None with --perf-update-baselines (nothing is judged)."""
        from harness.pytest_plugin.confirm import ab_checkout

        assert self.session is not None
        if self.session.options.update_baselines:
            return None
        return ab_checkout(self.session, self.config.rootpath)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Under pytest-xdist, a measured test errors with the reason (`XDIST_REFUSAL`).
        Before a measured test's fixtures are set up, what outlives it is frozen
        (`garbage.FrozenBetweenTests`), so that its garbage collections stay short."""
        if item.nodeid in self._refused:
            pytest.fail(XDIST_REFUSAL, pytrace=False)
        if markers.uses_perf(item):
            self.frozen.before_measured_test()

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[Any]) -> None:
        """A fixture wider than a test ended: let its objects be collected."""
        self.frozen.fixture_finalized(fixturedef.scope)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        """After the test body: judge what it recorded; a regression fails the test.

        A suspected regression is confirmed before it fails the build (`_confirm`). Where the
        baseline's commit is in this checkout, by the run's one A/B on this machine at its end
        (`confirm.ABConfirmation`): only code that is slower than the baseline's own code here
        fails, and a baseline's code that is just as slow here is "environment changed".
        Elsewhere the test body runs once more after --perf-confirm-delay (`_remeasure`): a GPU
        that spent a moment at lower clocks, or a neighbour's burst on a shared host, then costs
        one re-run instead of a red nightly.
        """
        try:
            result = yield  # the test's own exception propagates; nothing is judged then
        except BaseException as exc:
            self._report_raised(item, exc)
            raise
        if self.session is None:  # nothing measured in this run
            return result
        decision = self._conclude(item)
        if decision.suspects and isinstance(item, pytest.Function) and self.distributed is None:
            decision = self._confirm(item, decision)
        elif decision.regression and isinstance(item, pytest.Function):
            decision = self._remeasure(item, decision)
        if decision.outcome == "failed":
            pytest.fail(decision.message, pytrace=False)
        if decision.outcome == "skipped":
            # _use_item_location: report the skip at the test, not at this line of the plugin
            # (as pytest's own skip markers do).
            raise pytest.skip.Exception(decision.message, _use_item_location=True)
        return result

    def _confirm(self, item: pytest.Function, decision: Decision) -> Decision:
        """The decision to report now for a test with suspected metrics: with the end-of-run
        A/B item, the test is noted there and does not fail now (a skip stays a skip); in a
        session started by a test at run time (no such item), its own A/B runs at once; without
        A/B, a regression is re-measured after a pause and the notes say why there was no A/B."""
        from harness.pytest_plugin import confirm

        checkout = self._ab_checkout
        assert self.session is not None
        if not isinstance(checkout, confirm.ABCheckout):
            if isinstance(checkout, str):
                self.session.end_notes.append(f"{item.nodeid}: {checkout}")
            return self._remeasure(item, decision) if decision.regression else decision
        if self.pending is not None:
            self.pending.add(item.nodeid, decision)
            if decision.outcome == "failed":
                return dataclasses.replace(decision, outcome="passed")
            return decision
        alone = confirm.PendingConfirmations(self.session, checkout, self.config.rootpath,
                                             self._write_line)
        alone.add(item.nodeid, decision)
        # Absent when its only suspects followed the machine (`confirm`): the first decision.
        return alone.confirm().get(item.nodeid, decision)

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
        from harness.measure import memory

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
        """A progress line on the terminal (A/B rounds) as it happens. The end-of-run A/B is a
        test item, whose output pytest captures: capturing is suspended for the line, as pytest
        itself does for a debugger, or the rounds would show only after the run."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        suspended = (contextlib.nullcontext() if capture is None
                     else capture.global_and_fixture_disabled())
        with suspended:
            reporter.write_line(line)

    def _conclude(self, item: pytest.Item, *, confirming: bool = False) -> Decision:
        """This test's decision: the session's own, or in a distributed run the one every rank
        agreed on (rank 0's, or a failure when another rank's body raised)."""
        assert self.session is not None
        decision = self.session.conclude_test(item.nodeid, confirming=confirming)
        if self.distributed is None:
            return decision
        from harness.distributed.group import RankOutcome

        return self.distributed.agree_on_outcome(
            RankOutcome(rank=self.distributed.rank, decision=decision))

    def _report_raised(self, item: pytest.Item, exc: BaseException) -> None:
        """In a distributed run, tell the other ranks that this rank's test body raised (they
        are waiting for its outcome); the exception itself then propagates here."""
        if self.distributed is None or not _agrees(exc):
            return
        from harness.distributed import group

        self.raised_here.add(item.nodeid)
        self.distributed.agree_on_outcome(group.RankOutcome(rank=self.distributed.rank,
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
        failed = self._failed_before if self.session is None else self.session.failed_tests
        passed = self._passed_before if self.session is None else self.session.passed_tests
        if report.when == "call":
            self.durations[report.nodeid] = report.duration
        if report.failed:
            failed.add(report.nodeid)
        elif report.when == "call" and report.passed:
            passed.add(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Let the session save the results (--perf-save) and refresh the baseline
        (--perf-update-baselines); a refused or failed write makes the run fail. A run stopped
        by a usage error (such as `-m gpu` without CUDA) measured nothing and writes nothing."""
        if self.session is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
            return
        unconfirmed = None if self.pending is None else self.pending.unconfirmed_note()
        if unconfirmed is not None:
            self.session.end_notes.append(unconfirmed)
        if not self.session.finish(run_ok=exitstatus == pytest.ExitCode.OK):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The verdict table (regressions first), improvements, and what was saved or written;
        in a run that measured nothing, only why a requested save or refresh did not happen."""
        lines = (nothing_measured_lines(self.config, self.options) if self.session is None
                 else [*self.session.summary_lines(),
                       *rootdir_lines(self.config, self.options)])
        if not lines:
            return
        terminalreporter.write_sep("=", "perf")
        for line in lines:
            terminalreporter.write_line(line, red=line.startswith("ERROR"))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Leave the garbage collector as the run found it (`FrozenBetweenTests.finish`), leave
        the process group of a distributed run, and drop the session (pytester runs many configs
        in one process)."""
        self.frozen.finish()
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
