"""The pytest plugin, registered as `harness.pytest_plugin`: its hooks and its fixtures.

Loaded by the entry point of an installed perf-harness, or by
`pytest_plugins = ["harness.pytest_plugin"]` in a checkout's conftest.py (the names match, so it
is never registered twice). Disable it with `-p no:harness.pytest_plugin`. pytest finds hooks
and fixtures as attributes of this module, so every one of them is imported here: the hooks
from `hooks`, the fixtures from `fixture`; the options are `options`'s, one run's hooks `run`'s.
"""

from harness.pytest_plugin.fixture import perf, perf_clock, perf_device, perf_gpu_monitor
from harness.pytest_plugin.hooks import pytest_addoption, pytest_cmdline_main, pytest_configure

__all__ = ["perf", "perf_clock", "perf_device", "perf_gpu_monitor", "pytest_addoption",
           "pytest_cmdline_main", "pytest_configure"]
