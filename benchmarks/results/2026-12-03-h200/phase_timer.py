"""Per-test seconds of the harness's phases, for a diagnostic run of the GPU suite.

A pytest plugin: `PYTHONPATH=DIR PHASES_OUT=phases.json pytest -p phase_timer -m gpu ...` with
this file in DIR. It wraps the FLOP count, the timed sampling, the profiled pass, the memory
readings and the Hugging Face model build with a perf_counter pair each (negligible beside
them) and writes, per test, the seconds spent in each and in the whole call.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

TIMES: dict[str, dict[str, float]] = collections.defaultdict(
    lambda: collections.defaultdict(float))
CURRENT = ["(session)"]


def _wrap(module: Any, name: str, label: str) -> None:
    """Replace `module.name` by a wrapper adding its seconds to the current test's `label`."""
    fn = getattr(module, name, None)
    if fn is None or getattr(fn, "_phased", False):
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[CURRENT[0]][label] += time.perf_counter() - start

    wrapper._phased = True  # type: ignore[attr-defined]
    setattr(module, name, wrapper)


def _timed_method(cls: type, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(cls, name)

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TIMES[CURRENT[0]][label] += time.perf_counter() - start

    setattr(cls, name, method)


def pytest_configure(config: pytest.Config) -> None:
    import harness.measure.step as step
    import harness.measure.train_step as train_step
    import harness.pytest_plugin.fixture as fixture

    for module in (step, fixture):
        _wrap(module, "count_flops", "flop_count")
        _wrap(module, "measure_time_detailed", "sampling")
        _wrap(module, "measure_time", "sampling")
        _wrap(module, "profile_or_reason", "profile")
        _wrap(module, "memory_metrics", "memory_metrics")
        _wrap(module, "run_memory_ledger", "memory_ledger")
    _wrap(train_step, "measure_step", "measure_step_total")
    _wrap(fixture, "measure_train_step", "train_step_total")
    from harness.workloads.real_models import HFWorkload

    _timed_method(HFWorkload, "build", "hf_build")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    CURRENT[0] = item.nodeid
    start = time.perf_counter()
    yield
    TIMES[item.nodeid]["call"] += time.perf_counter() - start
    CURRENT[0] = "(between)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("PHASES_OUT")
    if out:
        with open(out, "w") as file:
            json.dump(TIMES, file, indent=1)
