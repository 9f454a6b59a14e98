"""The pytest plugin, registered as `harness.pytest_plugin`: its hooks and its fixtures.

An installed perf-harness loads it through its `perf_harness` entry point (`entry_point`, which
names this module; `-p no:perf_harness` disables it); a checkout's conftest.py lists it in
`pytest_plugins`. Either way it is registered once, under this module's name
(`-p no:harness.pytest_plugin` blocks both). pytest finds hooks and fixtures as attributes of
this module, so every one of them is imported here: the hooks from `hooks`, the fixtures from
`fixtures`; the options are `options`'s, one run's hooks `run`'s.

Loading it imports neither torch nor anything that measures (a project whose tests never use
`perf` must not pay for them, nor see their warnings under `-W error`): those are imported when
a collected test uses `perf`.

PYTEST_DONT_REWRITE: pytest rewrites the asserts of a plugin module it imports itself; this one
is imported first as the parent of `entry_point`, and pytest would warn that it came too late.
"""

from harness.pytest_plugin.fixtures import perf, perf_clock, perf_device, perf_gpu_monitor
from harness.pytest_plugin.hooks import (
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
)

__all__ = ["perf", "perf_clock", "perf_device", "perf_gpu_monitor", "pytest_addoption",
           "pytest_collection_modifyitems", "pytest_configure"]
