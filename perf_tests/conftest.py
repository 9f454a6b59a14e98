"""Fixtures shared by the measured GPU suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.workloads.training import release_cuda_memory


@pytest.fixture
def released_memory() -> Iterator[None]:
    """Each test starts and ends with nothing of another test left on the GPU."""
    release_cuda_memory()
    yield
    release_cuda_memory()
