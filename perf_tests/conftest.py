"""Fixtures shared by the measured GPU suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from perf_tests import workloads as w


@pytest.fixture
def released_memory() -> Iterator[None]:
    """Each test starts and ends with nothing of another test left on the GPU."""
    w.release_cuda_memory()
    yield
    w.release_cuda_memory()
