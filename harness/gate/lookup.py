"""Finding what a user named on the command line: a stored fingerprint, a metric id from a part
of it. A miss is a ValueError that lists what does exist, so the next try is the right one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.checks import directory_problem
from harness.gate import store
from harness.gate.results import RunResults

# How many candidate metric ids an error message lists before it says "and N more".
MAX_IDS_IN_MESSAGE = 10


def known_fingerprints(directory: Path) -> list[str]:
    """The fingerprints stored in `directory`; a ValueError when the directory does not exist
    or is something else."""
    problem = directory_problem(directory)
    if problem is not None:
        raise ValueError(f"{directory}: {problem}; pass --dir with the directory that holds the "
                         f"<fingerprint>.json baselines")
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such baselines directory; pass --dir, or record "
                         f"baselines with `pytest -m gpu --perf-update-baselines`")
    return store.list_fingerprints(directory)


def unknown_fingerprint(directory: Path, fingerprint: str) -> ValueError:
    """The error for a fingerprint without a baseline: it lists the ones that exist."""
    known = known_fingerprints(directory)
    listing = ", ".join(known) if known else "none"
    return ValueError(f"{store.baseline_path(directory, fingerprint)}: no baseline for "
                      f"fingerprint {fingerprint!r}; known fingerprints in {directory}: {listing}")


def load_known_baseline(directory: Path, fingerprint: str) -> RunResults:
    """The current baseline of `fingerprint`; a ValueError listing the known ones if absent."""
    baseline = store.load_baseline(directory, fingerprint)
    if baseline is None:
        raise unknown_fingerprint(directory, fingerprint)
    return baseline


def find_metric_id(metric_ids: Iterable[str], query: str, *, where: str) -> str:
    """The metric id equal to `query`, else the only one containing it; a ValueError otherwise."""
    ids = sorted(set(metric_ids))
    if query in ids:
        return query
    matches = [mid for mid in ids if query in mid]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"{where}: no metric id contains {query!r}; "
                         f"metric ids there: {_some(ids)}")
    raise ValueError(f"{where}: {query!r} matches {len(matches)} metric ids, give one of them "
                     f"in full: {_some(matches)}")


def _some(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(ids[:MAX_IDS_IN_MESSAGE])
    more = len(ids) - MAX_IDS_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown
