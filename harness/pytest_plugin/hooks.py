"""pytest plugin hooks: the `gpu` and `distributed` markers, the `--perf-*` options, and the
wiring of one run's `PerfRun` (which joins, judges and writes) into pytest.

Loaded by the "harness.pytest_plugin" entry point of an installed perf-harness, or by
`pytest_plugins = ["harness.pytest_plugin"]` in a checkout's conftest.py (the names match, so it
is never registered twice). The options are `options`'s, the run's hooks `run`'s, the fixtures
`fixture`'s; `session.PerfSession` records, judges, saves and writes baselines.

A regression fails the test that measured it (in its call phase, so it is a failure, not an
error). A metric without a baseline, or measured unreliably (a throttled GPU, too much noise to
decide), skips its test with the reason, or fails it under --perf-strict; it never passes as if
it had been checked, and it is never called a regression.
"""

from __future__ import annotations

import os

import pytest

from harness.distributed.launch import launch_from_environment
from harness.pytest_plugin.options import add_options, read_options
from harness.pytest_plugin.run import RUN_KEY, PerfRun

GPU_MARKER = ("gpu: measures on a CUDA device. Skipped when no CUDA device is visible; "
              "`pytest -m gpu` without one stops before running anything.")
DISTRIBUTED_MARKER = ("distributed: reserved for multi-GPU tests (torch.distributed), run on "
                      "every rank of a launch: `torchrun --nproc-per-node N -m pytest -m "
                      "distributed`. distributed(nprocs=N) needs at least N ranks (default 2). "
                      "Skipped without a launch; `-m distributed` without one stops before "
                      "running anything.")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The `perf` option group: every `--perf-x` flag has a matching `perf_x` ini key."""
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Ranks other than 0 of a torchrun launch write no JUnit XML (--junitxml): rank 0 writes
    the launch's, whose outcomes every rank shares; two ranks would race for one file."""
    try:
        launch = launch_from_environment(os.environ)
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
        launch = launch_from_environment(os.environ)
    except ValueError as exc:
        raise pytest.UsageError(f"torch.distributed launch: {exc}") from None
    if launch is not None and launch.rank != 0:
        _silence_terminal(config)
    run = PerfRun(config, options, launch)
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, PerfRun.PLUGIN_NAME)


def _silence_terminal(config: pytest.Config) -> None:
    """Swap the terminal reporter for one that writes to os.devnull: a rank other than 0 runs
    the same tests and would print the same report. The reporter stays registered because
    pytest asks it for its terminal writer (assertion messages, for one)."""
    for name in ("terminalreporter", "terminalprogress-plugin"):
        if config.pluginmanager.has_plugin(name):
            config.pluginmanager.unregister(name=name)
    quiet = pytest.TerminalReporter(config, open(os.devnull, "w", encoding="utf-8"))
    config.pluginmanager.register(quiet, "terminalreporter")
