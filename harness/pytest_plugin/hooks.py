"""pytest plugin hooks: the `--perf-*` options, the markers, and the wiring of one run's
`PerfRun` (which starts the perf session when a collected test uses `perf`, then joins, judges
and writes) into pytest.

Loaded by the `perf_harness` entry point of an installed perf-harness, or by
`pytest_plugins = ["harness.pytest_plugin"]` in a checkout's conftest.py (registered once either
way, see `entry_point`). The options are `options`'s, the markers `markers`'s, the run's hooks
`run`'s, the fixtures `fixtures`'s; `session.PerfSession` records, judges, saves and writes
baselines.

A regression fails the test that measured it (in its call phase, so it is a failure, not an
error). A metric without a baseline, or measured unreliably (a throttled GPU, too much noise to
decide), skips its test with the reason, or fails it under --perf-strict; it never passes as if
it had been checked, and it is never called a regression.
"""

from __future__ import annotations

import pytest

from harness.pytest_plugin import markers
from harness.pytest_plugin.options import add_options, marker_scope, read_options
from harness.pytest_plugin.run import RUN_KEY, PerfRun


def pytest_addoption(parser: pytest.Parser) -> None:
    """The `perf` option group: every `--perf-x` flag has a matching `perf_x` ini key."""
    add_options(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Document the markers, validate the options and register the run's hooks.

    Nothing is measured, imported or launched here: a project whose tests never use `perf` runs
    as if the plugin were not installed. trylast: after pytest-xdist's own configure, so that
    the run knows whether it is an xdist controller.
    """
    markers.register(config)
    # Checked now, so that a bad option stops the run before collection; the device ("auto"
    # by default) is resolved when a test measures.
    options = read_options(config, resolve_device=False)
    run = PerfRun(config, options, marker_scope(config))
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, PerfRun.PLUGIN_NAME)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses `perf` with `perf`, before -m selects tests: `-m perf` runs
    the measured tests, `-m 'not perf'` the others (under pytest-xdist, for one)."""
    markers.mark_measured(items)
