"""Repository-only pytest setup: hypothesis profiles and the plugin for a plain checkout."""

import contextlib
import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

# pytester's in-process runs drop every module an inner run imported: torch cannot be imported a
# second time in one process, and a module imported anew next to one kept from before makes
# two copies of its classes (an enum member of one is not `is` the other's). The plugin imports
# torch and the measuring and judging code only once a test measures, so the outer session
# imports them here, once, before any inner run.
import harness.pytest_plugin.confirm  # noqa: F401
import harness.pytest_plugin.fixture  # noqa: F401

# numpy's C extensions cannot be loaded twice either: an inner run that first touched numpy.fft
# (numpy loads it lazily) left scipy.stats unable to import in a later test of the same worker
# ("cannot load module more than once per process").
with contextlib.suppress(ImportError):
    import numpy.fft  # noqa: F401

# A plain checkout (the GPU machine runs the suite without installing) has no entry point. An
# installed package's `perf_harness` entry point names this same module, which pytest registers
# once under this name (harness/pytest_plugin/entry_point.py).
pytest_plugins = ["harness.pytest_plugin"]

# "ci": few examples so the CPU suite stays within its budget on 2 cores; "dev": the default
# depth for local runs; "thorough": for hunting counterexamples before a release.
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def one_cpu_thread() -> Iterator[None]:
    """Tiny CPU models and ops on one thread: on a loaded 2-core runner, intra-op threads only
    add waits. A module opts in with `pytestmark = pytest.mark.usefixtures("one_cpu_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
