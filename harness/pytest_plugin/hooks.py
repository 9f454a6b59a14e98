"""pytest plugin: the `--perf-*` options, the `gpu` marker, the `perf` fixture and the verdicts.

Loaded by the "harness.pytest_plugin" entry point of an installed perf-harness, or by
`pytest_plugins = ["harness.pytest_plugin"]` in a checkout's conftest.py (the names match, so it is
never registered twice). The plugin only validates options and wires pytest's hooks to
`session.PerfSession`, which records, judges, saves and writes baselines.

A regression fails the test that measured it (in its call phase, so it is a failure, not an
error). A metric without a baseline, or measured unreliably (a throttled GPU, too much noise to
decide), skips its test with the reason, or fails it under --perf-strict; it never passes as if
it had been checked, and it is never called a regression.

Give path options with "=" (`--perf-compare=main.json`): pytest picks its rootdir before
plugins load, and an existing path given as a separate argument counts as a test path then
(see `_check_path_options_left_the_rootdir_alone`).

Under torchrun (`torchrun --nproc-per-node 2 -m pytest -m distributed`) every rank runs pytest:
the plugin joins the process group, rank 0 alone prints, judges, saves and writes baselines, and
all ranks reach the same verdict for every test (see `harness.distributed.group`). `distributed` tests
are skipped, or refused under `-m distributed`, without such a launch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pynvml
import pytest

from harness.distributed import group
from harness.distributed.group import DistributedRun, Launch, LockstepClock, RankOutcome
from harness.gate import report, store
from harness.gate.session import DEFAULT_CONFIRM_DELAY_SECONDS, Decision, PerfOptions, PerfSession
from harness.measure import environment, memory
from harness.measure.environment import GpuStateMonitor, NullGpuMonitor, default_gpu_monitor
from harness.measure.timing import Clock, TimingPolicy, default_clock
from harness.pytest_plugin.fixture import Perf
from harness.theory import hardware

OPTIONS_KEY = pytest.StashKey[PerfOptions]()
SESSION_KEY = pytest.StashKey[PerfSession]()

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "cpu")
DEFAULT_BASELINES_DIR = "baselines"

GPU_MARKER = ("gpu: measures on a CUDA device. Skipped when no CUDA device is visible; "
              "`pytest -m gpu` without one stops before running anything.")
DISTRIBUTED_MARKER = ("distributed: reserved for multi-GPU tests (torch.distributed), run on "
                      "every rank of a launch: `torchrun --nproc-per-node N -m pytest -m "
                      "distributed`. distributed(nprocs=N) needs at least N ranks (default 2). "
                      "Skipped without a launch; `-m distributed` without one stops before "
                      "running anything.")


class PerfWarning(UserWarning):
    """Something the perf run could not do, that does not invalidate it (e.g. no NVML)."""


@dataclass(frozen=True)
class _Option:
    """One `--perf-*` option and its `perf_*` ini key."""

    flag: str
    kind: Literal["path", "flag", "float", "device"]
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


OPTIONS: tuple[_Option, ...] = (
    _Option("--perf-baselines", "path", "directory of the baselines, one <fingerprint>.json per "
            "hardware (default: baselines/ in the rootdir)", "DIR"),
    _Option("--perf-update-baselines", "flag", "record this run's metrics as the baseline of "
            "this hardware (metrics of tests not run are kept); refused after a failure or an "
            "unreliable measurement unless --perf-force"),
    _Option("--perf-force", "flag", "with --perf-update-baselines: write the baseline even when "
            "tests failed or measurements were unreliable"),
    _Option("--perf-save", "path", "write this run's results (raw samples, environment) to a "
            "JSON file", "PATH"),
    _Option("--perf-compare", "path", "judge against a saved results file instead of the "
            "stored baseline", "PATH"),
    _Option("--perf-device", "device", "where measured tests run: cuda, cpu or auto "
            "(cuda when visible; default)", "DEVICE"),
    _Option("--perf-strict", "flag", "fail tests whose metrics have no baseline or were "
            "measured unreliably (for nightly runs)"),
    _Option("--perf-tolerance", "float", "relative tolerance for every metric, e.g. 0.05 for "
            "5% (overrides per-metric and default tolerances)", "FLOAT"),
    _Option("--perf-budget", "float", "sampling time budget of one measurement in seconds "
            f"(default {TimingPolicy.budget_seconds:g})", "SECONDS"),
    _Option("--perf-confirm-delay", "float", "seconds to wait before re-measuring a test that "
            "regressed, to confirm it; 0 re-measures at once (default "
            f"{DEFAULT_CONFIRM_DELAY_SECONDS:g})", "SECONDS"),
    _Option("--perf-dist-timeout", "float", "under torchrun: seconds a collective waits for "
            "the other ranks before the run fails instead of hanging (default "
            f"{group.DEFAULT_TIMEOUT_SECONDS:g})", "SECONDS"),
)


def _argparse_text(text: str) -> str:
    """argparse expands %-placeholders in help texts; a literal "5%" must be written "5%%"."""
    return text.replace("%", "%%")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The `perf` option group: every `--perf-x` flag has a matching `perf_x` ini key."""
    group = parser.getgroup("perf", "perf-harness: measured tests against stored baselines")
    for option in OPTIONS:
        if option.kind == "flag":
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest,
                            help=_argparse_text(option.help))
            parser.addini(option.ini, f"default for {option.flag}: {option.help}", type="bool",
                          default=False)
        else:
            group.addoption(option.flag, action="store", default=None, dest=option.dest,
                            metavar=option.metavar, help=_argparse_text(option.help))
            # "string", parsed here: the message of a bad value then names the key and file.
            parser.addini(option.ini, f"default for {option.flag}: {option.help}",
                          type="string", default="")


def _ini_source(config: pytest.Config, name: str) -> str:
    overrides = config.getoption("override_ini", None) or []
    if any(entry.split("=", 1)[0].strip() == name for entry in overrides):
        return f"ini key {name} (from -o/--override-ini)"
    return f"ini key {name} in {config.inipath}"


def _raw_value(config: pytest.Config, option: _Option) -> tuple[Any, str, Path] | None:
    """(value, where it came from, directory relative paths start at), or None when unset."""
    value = config.getoption(option.dest)
    if value is not None:
        return value, f"{option.flag} (command line)", config.invocation_params.dir
    source = _ini_source(config, option.ini)
    try:
        value = config.getini(option.ini)
    except (ValueError, TypeError, pytest.UsageError) as exc:  # UsageError from pytest >= 9.2
        hint = ("use true or false" if option.kind == "flag"
                else f'write it as a string, e.g. {option.ini} = "..."')
        raise pytest.UsageError(f"{source}: {exc}; {hint}") from None
    if value in ("", False):
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return value, source, base


def _path(config: pytest.Config, option: _Option) -> tuple[Path | None, str]:
    raw = _raw_value(config, option)
    if raw is None:
        return None, ""
    value, source, base = raw
    if not str(value).strip():
        raise pytest.UsageError(f"{source}: an empty path; give a file or directory name")
    path = Path(str(value).strip()).expanduser()
    return (path if path.is_absolute() else base / path), source


def _number(config: pytest.Config, option: _Option, valid: str,
            accept: Callable[[float], bool]) -> float | None:
    """The option's finite number when `accept` takes it, None when unset; else a usage error
    naming where the value came from and what `valid` values are."""
    raw = _raw_value(config, option)
    if raw is None:
        return None
    value, source, _ = raw
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and accept(number)):
        raise pytest.UsageError(f"{source}: {value!r} is not valid; it must be {valid}")
    return number


def _positive_float(config: pytest.Config, option: _Option, valid: str,
                    upper: float = math.inf) -> float | None:
    return _number(config, option, valid, lambda number: 0 < number < upper)


def _delay(config: pytest.Config, option: _Option, default: float) -> float:
    """A pause in seconds: 0 or more, under an hour (a longer one is a typo)."""
    delay = _number(config, option, "a number of seconds from 0 to under 3600, such as 30",
                    lambda number: 0 <= number < 3600)
    return default if delay is None else delay


def _flag(config: pytest.Config, option: _Option) -> tuple[bool, str]:
    raw = _raw_value(config, option)
    return (True, raw[1]) if raw is not None else (False, "")


def _device(config: pytest.Config, option: _Option) -> tuple[str, str]:
    """The resolved device ("cuda" or "cpu") and where the choice came from ("" for auto)."""
    raw = _raw_value(config, option)
    requested, source = ("auto", "") if raw is None else (str(raw[0]).strip(), raw[1])
    if requested not in DEVICE_CHOICES:
        raise pytest.UsageError(f"{source}: {requested!r} is not a device; choose one of "
                                f"{', '.join(DEVICE_CHOICES)}")
    available = environment.cuda_available()
    if requested == "cuda" and not available:
        raise pytest.UsageError(f"{source}: no CUDA device is visible ({_no_cuda_detail()}); "
                                f"run on a GPU machine, or drop the option (auto) for the CPU "
                                f"suite")
    if requested == "auto":
        return ("cuda" if available else "cpu"), ""
    return requested, source


def _no_cuda_detail() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
            f"{'unset' if visible is None else repr(visible)}")


def _check_path_options_left_the_rootdir_alone(config: pytest.Config) -> None:
    """A UsageError when a path option's value, given as a separate argument, may have moved
    pytest's rootdir: pytest picks rootdir and config file before plugins are loaded, so an
    existing path after `--perf-compare` counts as a test path then. Without a config file the
    rootdir moves with it, every node id (and so every metric id) changes, and nothing matches
    the baseline. The `--perf-compare=PATH` form is read correctly in every case."""
    if config.inipath is not None:  # a config file pins the rootdir
        return
    args = list(config.invocation_params.args)
    for option in OPTIONS:
        if option.kind != "path" or option.flag not in args[:-1]:
            continue
        value = args[args.index(option.flag) + 1]
        if (config.invocation_params.dir / value).exists():
            raise pytest.UsageError(
                f"{option.flag} {value} (command line): write {option.flag}={value}. pytest "
                f"chose its rootdir ({config.rootpath}) before loading this plugin and took "
                f"{value} for a test path; without a config file that can move the rootdir, "
                f"and with it every test id and metric id")


def read_options(config: pytest.Config) -> PerfOptions:
    """Validate the `--perf-*` options and `perf_*` ini keys; a pytest.UsageError naming the
    option and where its value came from (command line or ini file) when one is bad."""
    _check_path_options_left_the_rootdir_alone(config)
    by_flag = {option.flag: option for option in OPTIONS}
    baselines, baselines_source = _path(config, by_flag["--perf-baselines"])
    update, update_source = _flag(config, by_flag["--perf-update-baselines"])
    force, force_source = _flag(config, by_flag["--perf-force"])
    save, _ = _path(config, by_flag["--perf-save"])
    compare, compare_source = _path(config, by_flag["--perf-compare"])
    strict, _ = _flag(config, by_flag["--perf-strict"])
    # Metric.tolerance is limited to (0, 10): a relative change beyond 1000% is a typo.
    tolerance = _positive_float(config, by_flag["--perf-tolerance"],
                                "a relative change between 0 and 10, such as 0.05 for 5%",
                                upper=10.0)
    budget = _positive_float(config, by_flag["--perf-budget"],
                             "a number of seconds greater than 0, such as 2.5")
    dist_timeout = _positive_float(config, by_flag["--perf-dist-timeout"],
                                   "a number of seconds greater than 0, such as 300")
    confirm_delay = _delay(config, by_flag["--perf-confirm-delay"],
                           DEFAULT_CONFIRM_DELAY_SECONDS)
    device, device_source = _device(config, by_flag["--perf-device"])

    if update and compare is not None:
        raise pytest.UsageError(f"{update_source} and {compare_source} conflict: a baseline "
                                f"is recorded from this run, a comparison judges it against "
                                f"{compare}; use one of them")
    if force and not update:
        raise pytest.UsageError(f"{force_source} only applies to --perf-update-baselines; add "
                                f"that option or drop {force_source.split(' ')[0]}")
    if save is not None and save.is_dir():
        raise pytest.UsageError(f"--perf-save: {save} is a directory; give a file name such as "
                                f"{save / 'results.json'}")
    repeat_flags: list[str] = []
    if baselines_source.endswith("(command line)"):
        repeat_flags.append(f"--perf-baselines {baselines}")
    if device_source.endswith("(command line)"):
        repeat_flags.append(f"--perf-device {device}")
    return PerfOptions(
        baselines_dir=baselines if baselines is not None else config.rootpath / DEFAULT_BASELINES_DIR,
        device=device, update_baselines=update, force=force, save_path=save,
        compare_path=compare, strict=strict, tolerance=tolerance, budget_seconds=budget,
        dist_timeout_seconds=dist_timeout, confirm_delay_seconds=confirm_delay,
        repeat_flags=tuple(repeat_flags))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Ranks other than 0 of a torchrun launch write no JUnit XML (--junitxml): rank 0 writes
    the launch's, whose outcomes every rank shares; two ranks would race for one file."""
    try:
        launch = group.launch_from_environment(os.environ)
    except ValueError:
        return  # pytest_configure reports it as a usage error
    if launch is not None and launch.rank != 0 and getattr(config.option, "xmlpath", None):
        config.option.xmlpath = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Document the markers, validate the options and register the run's hooks.

    trylast: after the terminal reporter exists, so that ranks other than 0 of a torchrun
    launch can silence it (they print only their own errors, on stderr).
    """
    config.addinivalue_line("markers", GPU_MARKER)
    config.addinivalue_line("markers", DISTRIBUTED_MARKER)
    options = read_options(config)
    try:
        launch = group.launch_from_environment(os.environ)
    except ValueError as exc:
        raise pytest.UsageError(f"torch.distributed launch: {exc}") from None
    if launch is not None and launch.rank != 0:
        _silence_terminal(config)
    config.stash[OPTIONS_KEY] = options
    config.pluginmanager.register(PerfRun(config, options, launch), PerfRun.PLUGIN_NAME)


def _silence_terminal(config: pytest.Config) -> None:
    """Swap the terminal reporter for one that writes to os.devnull: a rank other than 0 runs
    the same tests and would print the same report. The reporter stays registered because
    pytest asks it for its terminal writer (assertion messages, for one)."""
    for name in ("terminalreporter", "terminalprogress-plugin"):
        if config.pluginmanager.has_plugin(name):
            config.pluginmanager.unregister(name=name)
    quiet = pytest.TerminalReporter(config, open(os.devnull, "w", encoding="utf-8"))
    config.pluginmanager.register(quiet, "terminalreporter")


def _no_cuda_reason(config: pytest.Config) -> str:
    if environment.cuda_available():
        return "the perf device is cpu (--perf-device cpu); GPU tests measure on CUDA only"
    return f"no CUDA device visible: {_no_cuda_detail()}"


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
        return group.required_ranks(marker.args, marker.kwargs)
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def _agrees(exc: BaseException) -> bool:
    """Whether the ranks exchange this exception of a test body: everything but the ways a
    whole run ends (Ctrl-C, sys.exit, pytest.exit), after which no rank runs another test."""
    return not isinstance(exc, (KeyboardInterrupt, SystemExit, pytest.exit.Exception))


class PerfRun:
    """The hooks of one pytest run, bound to its config and its `PerfSession`."""

    PLUGIN_NAME = "harness-perf-run"

    def __init__(self, config: pytest.Config, options: PerfOptions,
                 launch: Launch | None = None) -> None:
        self.config = config
        self.options = options
        self.launch = launch
        self.session: PerfSession | None = None
        # The process group of a torchrun launch, joined at the start of the session.
        self.distributed: DistributedRun | None = None
        # Tests whose body raised on this rank (their failure is this rank's to report).
        self.raised_here: set[str] = set()

    def _start_distributed(self) -> DistributedRun | None:
        if self.launch is None:
            return None
        timeout = self.options.dist_timeout_seconds or group.DEFAULT_TIMEOUT_SECONDS
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
        gpu = hardware.local_spec() if options.device == "cuda" else None
        perf_session = PerfSession(options, run_environment, gpu=gpu, distributed=run)
        try:
            if run is None or run.reports:  # the other ranks follow rank 0's verdicts
                perf_session.load_reference()
        except store.StoreError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.session = perf_session
        self.config.stash[SESSION_KEY] = perf_session

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
        why = _no_cuda_reason(self.config)
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
        visible = (f" ({len(hardware.detect_gpus())} GPU(s) visible on this host)"
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

        A regression is confirmed before it fails the build: after --perf-confirm-delay
        seconds the test body runs once more (same fixtures, fresh measurements, torch's CUDA
        cache emptied first) and only the second verdict counts, judged with
        `confirming=True` (the slowdown must persist beyond half the tolerance). A GPU that
        spent a moment at lower clocks, or a neighbour's burst on a shared host, then costs one
        re-run instead of a red nightly; a real regression persists.
        """
        try:
            result = yield  # the test's own exception propagates; nothing is judged then
        except BaseException as exc:
            self._report_raised(item, exc)
            raise
        assert self.session is not None
        decision = self._conclude(item)
        if decision.regression and isinstance(item, pytest.Function):
            first = decision
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
                decision = dataclasses.replace(
                    decision, message=f"{decision.message}\n\n(confirmed: the test was "
                                      f"measured twice, {delay:g} s apart, and regressed both "
                                      f"times)")
            else:
                self.session.end_notes.append(
                    f"{item.nodeid}: a first measurement regressed but a second did not; "
                    f"the second counts ({first.message.splitlines()[0]})")
        if decision.outcome == "failed":
            pytest.fail(decision.message, pytrace=False)
        if decision.outcome == "skipped":
            # _use_item_location: report the skip at the test, not at this line of the plugin
            # (as pytest's own skip markers do).
            raise pytest.skip.Exception(decision.message, _use_item_location=True)
        return result

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
        """Save the results (--perf-save) and refresh the baseline (--perf-update-baselines);
        a refused or failed write makes the run fail. A run stopped by a usage error (such as
        `-m gpu` without CUDA) measured nothing and writes nothing."""
        perf_session = self.session
        if self.distributed is not None and not self.distributed.reports:
            return  # rank 0 saves and writes for the whole launch
        if perf_session is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
            return
        notes = perf_session.end_notes
        if self.options.save_path is not None:
            try:
                store.save_results(self.options.save_path, perf_session.results())
                notes.append(f"saved {len(perf_session.metrics)} metric(s) of this run to "
                             f"{self.options.save_path}")
            except store.StoreError as exc:
                notes.append(f"ERROR: results not saved: {exc}")
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not self.options.update_baselines:
            return
        if not perf_session.metrics:
            notes.append(f"no metrics were recorded; {perf_session.reference_path} is unchanged")
            return
        refusal = perf_session.baseline_refusal(run_ok=exitstatus == pytest.ExitCode.OK)
        if refusal is not None:
            notes.append(f"ERROR: {refusal}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        try:
            old, new, archived = perf_session.write_baseline()
        except store.StoreError as exc:
            notes.append(f"ERROR: baseline not written: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        kept = "" if archived is None else f"; the previous one is kept as {archived}"
        notes.append(f"wrote {perf_session.reference_path} ({len(new.metrics)} metric(s)){kept}")
        notes.append(report.render_baseline_changes(old, new))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The verdict table (regressions first), improvements, and what was saved or written."""
        perf_session = self.session
        if perf_session is None or not (perf_session.verdicts or perf_session.end_notes):
            return
        terminalreporter.write_sep("=", "perf")
        if perf_session.verdicts:
            terminalreporter.write_line(f"against {perf_session.reference_path} "
                                        f"(hardware fingerprint {perf_session.fingerprint})")
            terminalreporter.write_line(report.render_summary(perf_session.verdicts))
        improved = perf_session.improvements()
        if improved:
            terminalreporter.write_line(
                f"{len(improved)} metric(s) improved beyond tolerance; if the change is real, "
                f"refresh the baseline: pytest -m gpu --perf-update-baselines")
        for note in perf_session.end_notes:
            terminalreporter.write_line(note, red=note.startswith("ERROR"))

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


def _perf_session(request: pytest.FixtureRequest) -> PerfSession:
    perf_session = request.config.stash.get(SESSION_KEY, None)
    if perf_session is None:
        raise RuntimeError("the perf session was not started: harness.pytest_plugin is loaded but its "
                           "pytest_sessionstart did not run")
    return perf_session


@pytest.fixture(scope="session")
def perf_device(request: pytest.FixtureRequest) -> str:
    """The device measured tests run on: "cuda" or "cpu" (--perf-device, resolved)."""
    return request.config.stash[OPTIONS_KEY].device


@pytest.fixture
def perf_clock(perf_device: str) -> Clock:
    """The clock of `perf` measurements; override it in a conftest.py (e.g. a FakeClock)."""
    return default_clock(perf_device)


@pytest.fixture
def perf_gpu_monitor(perf_device: str) -> GpuStateMonitor:
    """The GPU monitor of `perf` measurements (NVML on CUDA, none on CPU); overridable."""
    try:
        return default_gpu_monitor(perf_device)
    except (pynvml.NVMLError, ValueError) as exc:
        warnings.warn(PerfWarning(f"GPU state is not monitored ({exc}): throttling cannot be "
                                  f"detected in this run"), stacklevel=2)
        return NullGpuMonitor()


@pytest.fixture
def perf(request: pytest.FixtureRequest, perf_clock: Clock,
         perf_gpu_monitor: GpuStateMonitor) -> Perf:
    """Measure in a test: perf.time, perf.train_step, perf.dataloader, perf.metric (and
    perf.collective under torchrun, where every clock reads the slowest rank's time)."""
    perf_session = _perf_session(request)
    clock = perf_clock
    if perf_session.distributed is not None:
        clock = LockstepClock(perf_clock, perf_session.distributed)
    return Perf(session=perf_session, nodeid=request.node.nodeid, clock=clock,
                monitor=perf_gpu_monitor, policy=perf_session.policy,
                user_properties=request.node.user_properties)
