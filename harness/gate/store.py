"""Baselines on disk: one validated JSON file per hardware fingerprint, written atomically, with
history.

Layout (see DESIGN.md):

    baselines/<fingerprint>.json                         the current baseline of that hardware
    baselines/history/<fingerprint>/<UTC timestamp>.json  every baseline it replaced, oldest first
    baselines/history/<fingerprint>/<UTC timestamp>.json.unreadable
                                                         a replaced baseline that could not be read
    baselines/.<fingerprint>.lock                        only while a writer of it holds the lock

The document is `RunResults.to_json()`. Loading checks it strictly: a missing, unreadable,
truncated or foreign-schema file, a duplicate key, a missing or mistyped field, stored statistics
that disagree with the samples, a file of another hardware, or a path that is not a regular file
(a directory, a FIFO, a link that leads nowhere) is a `StoreError` whose message starts with the
file path and says how to fix it. A bad baseline is never silently treated as "no baseline".

Writing never leaves a half-written file (`harness.gate.atomic`), and never one that will not
load: the new file is read back before it is renamed into place. A baseline is updated under
its writers' lock from the file as it is at that moment (`update_baseline`), so two runs that
refresh different tests both keep their metrics. The previous file is copied into the history
before the rename, so a crash at any point leaves either the old or the new baseline in place
and nothing is lost.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from harness.checks import directory_problem, file_problem, require_finite, require_non_negative_int
from harness.gate import atomic
from harness.gate.atomic import StoreError as StoreError
from harness.gate.results import RunResults, SchemaError
from harness.gate.strict_json import JSONProblem, parse_json

# Where the commands look for baselines unless told otherwise (relative to the working directory).
DEFAULT_DIRECTORY = Path("baselines")

HISTORY_DIRNAME = "history"

# A fingerprint becomes a file name: lower/upper-case letters, digits, '.', '_' and '-', not
# starting with a dot (that would hide the file or, as "..", climb out of the directory).
FINGERPRINT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# History file names: a sortable UTC timestamp with microseconds, plus "_<n>" when two writes of
# one fingerprint fall on the same microsecond (or the clock stepped back), so names stay unique
# and their order is the order of the writes.
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
HISTORY_NAME_PATTERN = re.compile(r"(?P<stamp>\d{8}T\d{6}\.\d{6}Z)(?:_(?P<n>\d+))?")

# The suffix of a history entry that could not be read when it was replaced: kept byte for byte,
# but outside the "*.json" entries `history` loads, so one damaged file does not break every
# later look back.
UNREADABLE_SUFFIX = ".json.unreadable"

# Relative agreement required between a stored median/spread and the one recomputed from the
# stored samples. JSON round-trips Python floats exactly, so only a hand edit breaks it.
STORED_STATISTIC_RTOL = 1e-9

FIX_HINT = ("restore it from the history directory or re-record it with "
            "`pytest -m gpu --perf-update-baselines` (which keeps a copy of it in the history)")


class UnreadableFileError(StoreError):
    """A file that was read but is no valid document (damaged JSON, a schema violation);
    `update_baseline` replaces such a baseline, keeping a copy."""


@dataclass(frozen=True)
class BaselineUpdate:
    """What `update_baseline` did: the baseline it replaced (None when there was none or it was
    unreadable), the one it wrote, and where the replaced file was kept (None when none)."""

    old: RunResults | None
    new: RunResults
    archived: Path | None


def baseline_path(directory: Path, fingerprint: str) -> Path:
    """The file that holds the baseline of `fingerprint`: `directory / "<fingerprint>.json"`."""
    _check_fingerprint(fingerprint)
    return Path(directory) / f"{fingerprint}.json"


def load_results(path: Path) -> RunResults:
    """Read and validate any results or baseline file; a `StoreError` naming the file otherwise
    (an `UnreadableFileError` when it was read but is no valid document)."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        fix = ("point the link at a results or baseline file, or remove it"
               if "symbolic link" in problem else
               "give the path of a results or baseline .json file")
        raise StoreError(f"{path}: {problem}; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{path}: file does not exist; check the path, or record results with "
                         f"`pytest -m gpu --perf-save` or baselines with "
                         f"`--perf-update-baselines`") from None
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                  f"{FIX_HINT}") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc.strerror or exc}); check that it is a "
                         f"readable file") from None
    try:
        return _parse_document(text, str(path))
    except (JSONProblem, SchemaError) as exc:
        raise UnreadableFileError(f"{exc}; {FIX_HINT}") from None


def load_baseline(directory: Path, fingerprint: str) -> RunResults | None:
    """The current baseline of this hardware, or None when it has none yet.

    A file that exists but is bad, or that was recorded on other hardware (its "fingerprint"
    field differs), is a `StoreError`: another machine's numbers are never compared with ours.
    So is a `directory` that is a file.
    """
    directory = Path(directory)
    _check_directory(directory)
    path = baseline_path(directory, fingerprint)
    if not os.path.lexists(path):  # a link that leads nowhere is an error, not "no baseline"
        return None
    results = load_results(path)
    _check_own_hardware(path, results, fingerprint)
    return results


def save_results(path: Path, results: RunResults) -> None:
    """Write `results` to `path` atomically (temp file in the same directory, then rename).

    Parent directories are created. The file is read back before the rename; on any failure
    the previous file, if any, is untouched and the temporary file is removed.
    """
    path = Path(path)
    _make_directory(path.parent, path)
    temporary = _write_checked(path, results)
    try:
        atomic.commit(temporary, path)
    finally:
        atomic.remove_if_present(temporary)


def update_baseline(directory: Path, fingerprint: str,
                    merge: Callable[[RunResults | None], RunResults]) -> BaselineUpdate:
    """Make `merge(current baseline)` the baseline of `fingerprint`, all under its writers' lock.

    The current file is read again under the lock, so a run merging its metrics in never drops
    or rolls back what another run wrote since it started. An unreadable current file counts as
    none: `merge` gets None, and the file is kept byte for byte as
    `history/<fingerprint>/<stamp>.json.unreadable`. A file of other hardware, or a path that is
    not a regular file, stays a `StoreError`. Temporary files left by killed writers of this
    fingerprint are removed first (`atomic.remove_stale_temporaries`).
    """
    directory = Path(directory)
    path = baseline_path(directory, fingerprint)
    _check_directory(directory)
    _make_directory(directory, path)
    history_dir = directory / HISTORY_DIRNAME / fingerprint
    with atomic.exclusive_lock(directory / f".{fingerprint}.lock"):
        atomic.remove_stale_temporaries(directory, path.name)
        if history_dir.is_dir():
            atomic.remove_stale_temporaries(history_dir)
        old, unreadable = _current_baseline(path, fingerprint)
        new = merge(old)
        if new.fingerprint != fingerprint:
            raise ValueError(f"{path}: the merged baseline is of {new.fingerprint!r}, not "
                             f"{fingerprint!r}; a baseline file holds one hardware's numbers")
        if new.kind != "baseline":
            new = dataclasses.replace(new, kind="baseline")
        new_file = _write_checked(path, new)
        archived: Path | None = None
        try:
            if os.path.lexists(path):
                archived = _archive(path, history_dir, unreadable=unreadable)
            atomic.commit(new_file, path)
        except BaseException:
            # The old baseline is still in place; a copy of it in the history would be a
            # version that was never replaced, so it goes too.
            if archived is not None:
                atomic.remove_if_present(archived)
            raise
        finally:
            atomic.remove_if_present(new_file)
    return BaselineUpdate(old=old, new=new, archived=archived)


def write_baseline(directory: Path, results: RunResults) -> Path | None:
    """Make `results` the baseline of its fingerprint; return where the old one went, or None.

    The file is replaced, not merged: metrics absent from `results` are dropped from the current
    baseline (they stay in the history). To merge, use `update_baseline`.
    """
    return update_baseline(directory, results.fingerprint, lambda _current: results).archived


def list_fingerprints(directory: Path) -> list[str]:
    """The fingerprints that have a current baseline in `directory`, sorted; [] if none. A link
    counts even when it leads nowhere: loading it then names the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(entry.stem for entry in directory.glob("*.json")
                  if (entry.is_file() or entry.is_symlink())
                  and FINGERPRINT_PATTERN.fullmatch(entry.stem))


def history(directory: Path, fingerprint: str) -> list[tuple[Path, RunResults]]:
    """Every stored baseline of `fingerprint`, oldest first, the current file last; a bad one is
    a `StoreError` naming it. Entries kept as unreadable (UNREADABLE_SUFFIX) are left out."""
    current = baseline_path(directory, fingerprint)
    history_dir = Path(directory) / HISTORY_DIRNAME / fingerprint
    paths = sorted(_history_files(history_dir), key=_history_order)
    if os.path.lexists(current):
        paths.append(current)
    return [(path, load_results(path)) for path in paths]


def _parse_document(text: str, where: str) -> RunResults:
    """The results in `text`, checked as strictly as a file is on loading."""
    data = parse_json(text, where)
    results = RunResults.from_json(data, where)
    _check_fields_results_leaves_open(data, results, where)
    return results


def _check_directory(directory: Path) -> None:
    problem = directory_problem(directory)
    if problem is not None:
        raise StoreError(f"{directory}: {problem}; the baselines directory holds one "
                         f"<fingerprint>.json per hardware: give a directory, or a path that "
                         f"does not exist yet")


def _check_own_hardware(path: Path, results: RunResults, fingerprint: str) -> None:
    if results.fingerprint != fingerprint:
        raise StoreError(
            f"{path}: recorded on hardware {results.fingerprint!r}, but it is the baseline file "
            f"of {fingerprint!r}; it is never used for other hardware. Rename it after its "
            f"fingerprint if it was copied here by mistake, or move it away and record this "
            f"machine's baseline with "
            f"`pytest -m gpu --perf-update-baselines`")


def _current_baseline(path: Path, fingerprint: str) -> tuple[RunResults | None, bool]:
    """(the baseline at `path` or None, whether a file is there that could not be read)."""
    if not os.path.lexists(path):
        return None, False
    try:
        results = load_results(path)
    except UnreadableFileError:
        return None, True
    _check_own_hardware(path, results, fingerprint)
    return results, False


def _check_fingerprint(fingerprint: object) -> None:
    if not isinstance(fingerprint, str) or not FINGERPRINT_PATTERN.fullmatch(fingerprint):
        raise ValueError(f"fingerprint must be a file-name-safe slug of letters, digits, '.', "
                         f"'_' and '-' not starting with '.', such as 'nvidia-h100-80gb-hbm3-x1'; "
                         f"got {fingerprint!r}")


def _check_fields_results_leaves_open(data: Mapping[str, Any], results: RunResults,
                                      where: str) -> None:
    """Checks beyond `RunResults.from_json`: field types it coerces, stored statistics it skips.

    The samples are the truth; a stored median, spread or count that disagrees with them means
    the file was edited by hand, and the edit would be silently ignored, so it is refused.
    """
    created = data.get("created", "")
    if not isinstance(created, str):
        raise SchemaError(f"{where}: field 'created' must be str, got {created!r}")
    for mid, raw in data["metrics"].items():
        at = f"{where}: metric {mid!r}"
        for key, types in (("kind", (str,)), ("reliable", (bool,)), ("note", (str,))):
            if key in raw and not isinstance(raw[key], types):
                raise SchemaError(f"{at}: field {key!r} must be {types[0].__name__}, "
                                  f"got {raw[key]!r}")
        metric = results.metrics[mid]
        for key, expected in (("median", metric.median), ("spread", metric.spread)):
            stored = _stored_number(raw, key, at)
            if not math.isclose(stored, expected, rel_tol=STORED_STATISTIC_RTOL,
                                abs_tol=STORED_STATISTIC_RTOL):
                raise SchemaError(f"{at}: stored {key} {stored!r} disagrees with the {key} of its "
                                  f"samples ({expected!r}); the samples are what is compared, so "
                                  f"edit the samples, not the {key}")
        if "count" not in raw:
            raise SchemaError(f"{at}: missing field 'count'")
        try:
            count = require_non_negative_int("count", raw["count"])
        except ValueError:
            raise SchemaError(f"{at}: field 'count' must be int, got {raw['count']!r}") from None
        if count != metric.count:
            raise SchemaError(f"{at}: stored count {count} disagrees with its {metric.count} "
                              f"samples")


def _stored_number(raw: Mapping[str, Any], key: str, where: str) -> float:
    if key not in raw:
        raise SchemaError(f"{where}: missing field {key!r}")
    try:
        return require_finite(key, raw[key])
    except ValueError:
        raise SchemaError(f"{where}: field {key!r} must be a number, got {raw[key]!r}") from None


def _make_directory(directory: Path, for_path: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{for_path}: cannot create directory {directory} "
                         f"({exc.strerror or exc})") from None


def _dump_json(document: dict[str, Any], stream: IO[str], path: Path) -> None:
    try:
        # allow_nan=False: NaN and Infinity are not JSON; other readers would reject the file.
        json.dump(document, stream, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: the results cannot be written as JSON ({exc}); environment "
                         f"values must be strings, numbers, booleans, lists or objects") from None
    stream.write("\n")


def _write_checked(path: Path, results: RunResults) -> Path:
    """A temporary file next to `path` holding `results`, read back as a later load would read
    it: a document that would not load is never renamed into place, where it would break every
    later run."""
    document = results.to_json()
    temporary = atomic.write_temporary(path, lambda stream: _dump_json(document, stream, path))
    try:
        _parse_document(temporary.read_text(encoding="utf-8"), f"{path} (new version)")
    except (JSONProblem, SchemaError, OSError, UnicodeDecodeError) as exc:
        atomic.remove_if_present(temporary)
        raise StoreError(f"{path}: not written, the new version would not load back: {exc}. "
                         f"The previous file, if any, is unchanged; fix the value named") from None
    except BaseException:
        atomic.remove_if_present(temporary)
        raise
    return temporary


def _archive(path: Path, history_dir: Path, *, unreadable: bool) -> Path:
    """Copy the current file, byte for byte, to a new history entry (UNREADABLE_SUFFIX when it
    could not be read)."""
    _make_directory(history_dir, path)
    suffix = UNREADABLE_SUFFIX if unreadable else ".json"
    target = history_dir / f"{_next_history_stem(history_dir)}{suffix}"

    def copy(stream: IO[bytes]) -> None:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, stream)

    temporary = atomic.write_temporary(target, copy, binary=True)
    try:
        atomic.commit(temporary, target)
    finally:
        atomic.remove_if_present(temporary)
    return target


def _next_history_stem(history_dir: Path) -> str:
    """A name that sorts after every existing history entry (callers hold the lock)."""
    stamp = datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT)
    kept = [*_history_files(history_dir), *history_dir.glob(f"*{UNREADABLE_SUFFIX}")]
    existing = [_history_order(p) for p in kept
                if HISTORY_NAME_PATTERN.fullmatch(_entry_stem(p))]
    if not existing or (stamp, 0) > max(existing):
        return stamp
    last_stamp, last_n = max(existing)
    return f"{last_stamp}_{last_n + 1}"


def _history_files(history_dir: Path) -> list[Path]:
    if not history_dir.is_dir():
        return []
    return [p for p in history_dir.glob("*.json") if p.is_file() and not p.name.startswith(".")]


def _entry_stem(path: Path) -> str:
    """A history entry's name without ".json" or UNREADABLE_SUFFIX."""
    name = path.name
    return name[:-len(UNREADABLE_SUFFIX)] if name.endswith(UNREADABLE_SUFFIX) else path.stem


def _history_order(path: Path) -> tuple[str, int]:
    """Sort key of a history file: its timestamp, then its same-timestamp counter."""
    match = HISTORY_NAME_PATTERN.fullmatch(_entry_stem(path))
    if match is None:  # renamed by hand: ordered by name among the timestamps
        return (_entry_stem(path), 0)
    return (match["stamp"], int(match["n"] or 0))
