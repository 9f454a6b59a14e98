"""Where `--perf-trace=DIR` puts the traces of profiled passes, and which of them are kept.

Each measurement's profiled pass writes `DIR/<test>/<measurement>.<side>.trace.json.gz`
(`harness.measure.kernels` bounds its size); the side is the commit the code was measured at
(`<commit>-dirty` for a working tree with changes), so that the candidate's trace and, under A/B,
the base's (written by the A/B's child run of the base's tree) lie side by side. At the end of
the run only the folders of tests whose last verdict was a regression are kept: a CI artifact
then holds what explains a red build and nothing else (`--perf-trace-all` keeps every one).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRACE_SUFFIX = ".trace.json.gz"
# Characters of a test id kept in its folder name; longer ids are cut and get a hash, so that
# parametrized ids stay distinct and paths stay far from the 255-byte name limit.
MAX_SLUG_LENGTH = 100


def slug(text: str) -> str:
    """A file-name-safe form of a test id or measurement label."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"
    if len(safe) <= MAX_SLUG_LENGTH:
        return safe
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{safe[:MAX_SLUG_LENGTH - 11]}-{digest}"


def side_name(environment: Mapping[str, Any]) -> str:
    """The side a trace was measured on: the commit (12 digits), "-dirty" for local changes;
    "no-git" outside a checkout."""
    commit = environment.get("git_commit")
    if not isinstance(commit, str) or not commit:
        return "no-git"
    return commit[:12] + ("-dirty" if environment.get("git_dirty") is True else "")


def test_directory(directory: Path, nodeid: str) -> Path:
    """The folder of one test's traces."""
    return directory / slug(nodeid)


def trace_path(directory: Path, nodeid: str, label: str,
               environment: Mapping[str, Any]) -> Path:
    """Where the trace of measurement `label` of test `nodeid` is written."""
    return test_directory(directory, nodeid) / (f"{slug(label)}.{side_name(environment)}"
                                                f"{TRACE_SUFFIX}")


def prune(directory: Path, regressed: Mapping[str, bool]) -> list[Path]:
    """Remove the trace folders of the tests in `regressed` that did not regress; returns the
    traces kept (of the tests that did)."""
    kept: list[Path] = []
    for nodeid, failed in regressed.items():
        folder = test_directory(directory, nodeid)
        if failed:
            kept += sorted(folder.glob(f"*{TRACE_SUFFIX}"))
        elif folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    return kept


def keep_regressed(directory: Path, regressed: Mapping[str, bool]) -> list[str]:
    """`prune`, and the note for the run's summary saying where the kept traces are."""
    kept = prune(directory, regressed)
    if not kept:
        return []
    return [f"kept {len(kept)} trace(s) of regressed tests in {directory} (open them in "
            f"https://ui.perfetto.dev)"]
