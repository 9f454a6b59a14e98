"""The warnings the perf plugin raises: a category users can filter (`-W ignore::...`)."""

from __future__ import annotations


class PerfWarning(UserWarning):
    """Something the perf run could not do, that does not invalidate it (e.g. no NVML)."""


class PerfLeakWarning(PerfWarning):
    """A measured test left device memory allocated after it ended."""
