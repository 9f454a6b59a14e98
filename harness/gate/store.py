"""Baselines on disk: one validated JSON file per hardware fingerprint, written atomically, with
history.

Layout (see DESIGN.md):

    baselines/<fingerprint>.json                         the current baseline of that hardware
    baselines/history/<fingerprint>/<UTC timestamp>.json  every baseline it replaced, oldest first
    baselines/.<fingerprint>.lock                        serialises writers of that fingerprint

The document is `RunResults.to_json()`. Loading checks it strictly: a missing, unreadable,
truncated or foreign-schema file, a missing or mistyped field, stored statistics that disagree
with the samples, or a file of another hardware is a `StoreError` whose message starts with the
file path and says how to fix it. A bad baseline is never silently treated as "no baseline".

Writing never leaves a half-written file: the new document goes to a temporary file in the same
directory, is flushed to disk and then renamed over the old one (`os.replace` is atomic on POSIX).
The previous file is copied into the history before the rename, so a crash at any point leaves
either the old or the new baseline in place and nothing is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from harness.checks import require_finite, require_non_negative_int
from harness.gate.results import RunResults, SchemaError

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

# Permissions of a written file: what open() gives under the usual umask 022. mkstemp alone
# would create it 0600, unreadable to the other users of a shared runner.
FILE_MODE = 0o644

# Relative agreement required between a stored median/spread and the one recomputed from the
# stored samples. JSON round-trips Python floats exactly, so only a hand edit breaks it.
STORED_STATISTIC_RTOL = 1e-9

FIX_HINT = ("restore it from the history directory or re-record it with "
            "`pytest -m gpu --perf-update-baselines`")


class StoreError(ValueError):
    """A results or baseline file that cannot be used; the message starts with its path."""


def baseline_path(directory: Path, fingerprint: str) -> Path:
    """The file that holds the baseline of `fingerprint`: `directory / "<fingerprint>.json"`."""
    _check_fingerprint(fingerprint)
    return Path(directory) / f"{fingerprint}.json"


def load_results(path: Path) -> RunResults:
    """Read and validate any results or baseline file; a `StoreError` naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{path}: file does not exist; check the path, or record results with "
                         f"`pytest -m gpu --perf-save` or baselines with "
                         f"`--perf-update-baselines`") from None
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"{FIX_HINT}") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc.strerror or exc}); check that it is a "
                         f"readable file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # The parser stops at the end of the text, or inside a string never closed: a cut-off
        # file (a full disk, an interrupted copy); anything else is damage in the middle.
        cut_off = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        problem = "truncated JSON" if cut_off else "invalid JSON"
        raise StoreError(f"{path}: {problem} at line {exc.lineno} column {exc.colno} "
                         f"({exc.msg}); {FIX_HINT}") from None
    try:
        results = RunResults.from_json(data, str(path))
        _check_fields_results_leaves_open(data, results, str(path))
    except SchemaError as exc:
        raise StoreError(f"{exc}; {FIX_HINT}") from None
    return results


def load_baseline(directory: Path, fingerprint: str) -> RunResults | None:
    """The current baseline of this hardware, or None when it has none yet.

    A file that exists but is bad, or that was recorded on other hardware (its "fingerprint"
    field differs), is a `StoreError`: another machine's numbers are never compared with ours.
    """
    path = baseline_path(directory, fingerprint)
    if not path.exists():
        return None
    results = load_results(path)
    if results.fingerprint != fingerprint:
        raise StoreError(
            f"{path}: recorded on hardware {results.fingerprint!r}, but it is the baseline file "
            f"of {fingerprint!r}; it is never used for other hardware. Rename it after its "
            f"fingerprint if it was copied here by mistake, or move it away and record this "
            f"machine's baseline with "
            f"`pytest -m gpu --perf-update-baselines`")
    return results


def save_results(path: Path, results: RunResults) -> None:
    """Write `results` to `path` atomically (temp file in the same directory, then rename).

    Parent directories are created. On any failure the previous file, if any, is untouched and
    the temporary file is removed.
    """
    path = Path(path)
    _make_directory(path.parent, path)
    document = results.to_json()
    temporary = _write_temporary(path, lambda stream: _dump_json(document, stream, path))
    try:
        _commit(temporary, path)
    finally:
        _remove_if_present(temporary)


def write_baseline(directory: Path, results: RunResults) -> Path | None:
    """Make `results` the baseline of its fingerprint; return where the old one went, or None.

    The file is replaced, not merged: metrics absent from `results` are dropped from the current
    baseline (they stay in the history). Writers of one fingerprint are serialised by an
    exclusive lock on `directory/.<fingerprint>.lock`, so two processes never interleave and
    every replaced version lands in `directory/history/<fingerprint>/`.
    """
    directory = Path(directory)
    path = baseline_path(directory, results.fingerprint)
    if results.kind != "baseline":
        results = dataclasses.replace(results, kind="baseline")
    _make_directory(directory, path)
    document = results.to_json()
    with _exclusive_lock(directory / f".{results.fingerprint}.lock"):
        new_file = _write_temporary(path, lambda stream: _dump_json(document, stream, path))
        archived: Path | None = None
        try:
            if path.exists():
                archived = _archive(path, directory / HISTORY_DIRNAME / results.fingerprint)
            _commit(new_file, path)
        except BaseException:
            # The old baseline is still in place; a copy of it in the history would be a
            # version that was never replaced, so it goes too.
            if archived is not None:
                _remove_if_present(archived)
            raise
        finally:
            _remove_if_present(new_file)
    return archived


def list_fingerprints(directory: Path) -> list[str]:
    """The fingerprints that have a current baseline in `directory`, sorted; [] if none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(entry.stem for entry in directory.glob("*.json")
                  if entry.is_file() and FINGERPRINT_PATTERN.fullmatch(entry.stem))


def history(directory: Path, fingerprint: str) -> list[tuple[Path, RunResults]]:
    """Every stored baseline of `fingerprint`, oldest first, the current file last.

    Each file is loaded and validated; a bad one is a `StoreError` naming it.
    """
    current = baseline_path(directory, fingerprint)
    history_dir = Path(directory) / HISTORY_DIRNAME / fingerprint
    paths = sorted(_history_files(history_dir), key=_history_order)
    if current.exists():
        paths.append(current)
    return [(path, load_results(path)) for path in paths]


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


def _write_temporary(path: Path, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Write a complete, flushed temporary file next to `path`; removed again on any failure.

    `write` receives the open stream: text (UTF-8), or bytes when `binary`.
    """
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                            suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"{path}: cannot create a temporary file in {path.parent} "
                         f"({exc.strerror or exc})") from None
    temporary = Path(name)
    try:
        opened = (os.fdopen(descriptor, "wb") if binary
                     else os.fdopen(descriptor, "w", encoding="utf-8"))
        with opened as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, FILE_MODE)
    except OSError as exc:
        _remove_if_present(temporary)
        raise StoreError(f"{path}: writing failed ({exc.strerror or exc}); the previous file, "
                         f"if any, is unchanged") from None
    except BaseException:
        _remove_if_present(temporary)
        raise
    return temporary


def _commit(temporary: Path, path: Path) -> None:
    """Rename the finished temporary file over `path`; raises only if the rename did not happen."""
    try:
        os.replace(temporary, path)
    except OSError as exc:
        raise StoreError(f"{path}: replacing the file failed ({exc.strerror or exc}); the "
                         f"previous file, if any, is unchanged") from None
    # Make the rename itself survive a power loss. Best effort: the new file is already in place
    # and complete, and some file systems do not support syncing a directory.
    with contextlib.suppress(OSError):
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _archive(path: Path, history_dir: Path) -> Path:
    """Copy the current file, byte for byte (even if it is damaged), to a new history entry."""
    _make_directory(history_dir, path)
    target = history_dir / f"{_next_history_stem(history_dir)}.json"

    def copy(stream: IO[bytes]) -> None:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, stream)

    temporary = _write_temporary(target, copy, binary=True)
    try:
        _commit(temporary, target)
    finally:
        _remove_if_present(temporary)
    return target


def _next_history_stem(history_dir: Path) -> str:
    """A name that sorts after every existing history entry (callers hold the lock)."""
    stamp = datetime.now(timezone.utc).strftime(TIMESTAMP_FORMAT)
    existing = [_history_order(p) for p in _history_files(history_dir)
                if HISTORY_NAME_PATTERN.fullmatch(p.stem)]
    if not existing or (stamp, 0) > max(existing):
        return stamp
    last_stamp, last_n = max(existing)
    return f"{last_stamp}_{last_n + 1}"


def _history_files(history_dir: Path) -> list[Path]:
    if not history_dir.is_dir():
        return []
    return [p for p in history_dir.glob("*.json") if p.is_file() and not p.name.startswith(".")]


def _history_order(path: Path) -> tuple[str, int]:
    """Sort key of a history file: its timestamp, then its same-timestamp counter."""
    match = HISTORY_NAME_PATTERN.fullmatch(path.stem)
    if match is None:  # renamed by hand: ordered by name among the timestamps
        return (path.stem, 0)
    return (match["stamp"], int(match["n"] or 0))


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (blocking until other writers are done)."""
    try:
        stream = open(lock_path, "a", encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"{lock_path}: cannot open the lock file ({exc.strerror or exc}); the "
                         f"baselines directory must be writable") from None
    with stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


def _remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
