"""Files written whole or not at all, the lock that serialises their writers, and the clean-up of
what a killed writer left behind.

A new file goes to a temporary file in the same directory (`.<name>.<host>.<pid>.<random>.tmp`),
is flushed to disk and renamed over the target (`os.replace` is atomic on POSIX), so a reader
sees the old file or the new one, never half of either. Every error is a `StoreError` whose
message starts with the path and says what is left as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Permissions of a written file: what open() gives under the usual umask 022. mkstemp alone
# would create it 0600, unreadable to the other users of a shared runner.
FILE_MODE = 0o644

# A temporary file older than this is left over from a killed writer even when its PID cannot be
# checked (written on another host sharing the directory): writing and syncing a baseline takes
# well under a second even on a network disk, so 15 minutes is far beyond any live write.
STALE_TEMPORARY_SECONDS = 15 * 60

# What a temporary file's name ends with: the writer's host and PID, mkstemp's random part.
_WRITER = re.compile(r"\.(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.[^.]+\.tmp$")


class StoreError(ValueError):
    """A results or baseline file that cannot be used; the message starts with its path."""


def write_temporary(path: Path, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Write a complete, flushed temporary file next to `path`; removed again on any failure.

    `write` receives the open stream: text (UTF-8), or bytes when `binary`.
    """
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path),
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
        remove_if_present(temporary)
        raise StoreError(f"{path}: writing failed ({exc.strerror or exc}); the previous file, "
                         f"if any, is unchanged") from None
    except BaseException:
        remove_if_present(temporary)
        raise
    return temporary


def commit(temporary: Path, path: Path) -> None:
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


def remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_stale_temporaries(directory: Path, target_name: str = "") -> list[Path]:
    """Remove the temporary files in `directory` (of the file `target_name`, or of any file) that
    a killed writer left; return them.

    Call it holding the lock that writers of those files take. A temporary file is stale when
    its writer ran on this host and its PID is gone, or when it is older than
    STALE_TEMPORARY_SECONDS (a writer on another host, or a name without host and PID). One
    that may still be written, by a live local PID or recently on another host, is kept.
    """
    prefix = f".{target_name}." if target_name else "."
    removed: list[Path] = []
    try:
        candidates = [entry for entry in directory.iterdir()
                      if entry.name.startswith(prefix) and entry.name.endswith(".tmp")]
    except OSError:
        return removed
    now = time.time()
    for entry in candidates:
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        writer = _WRITER.search(entry.name)
        gone = (writer is not None and writer["host"] == _host_tag()
                and not _process_exists(int(writer["pid"])))
        if gone or age > STALE_TEMPORARY_SECONDS:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (blocking until other writers are done); the file
    exists only while someone holds it.

    Why a file that comes and goes: a lock under a per-user cache directory would not exclude
    another user's or another host's writer of a shared baselines directory, and locking the
    directory itself needs flock on a directory descriptor, which NFS (where flock becomes a
    POSIX lock on a file opened for writing) refuses. So the lock file stays next to the files
    it guards, and the holder removes it before letting go. Mutual exclusion survives the
    removal: a waiter that wakes up holding the lock of a file that is no longer at `lock_path`
    (removed, perhaps already replaced by another writer's) lets go and tries again, so only
    the holder of the file now at `lock_path` ever proceeds.
    """
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StoreError(f"{lock_path}: cannot create the lock file ({exc.strerror or exc}); "
                             f"the baselines directory must be writable") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            if _still_at(descriptor, lock_path):
                break
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)
    try:
        yield
    finally:
        remove_if_present(lock_path)  # while still holding it: see the docstring
        os.close(descriptor)  # lets go of the lock


def _still_at(descriptor: int, lock_path: Path) -> bool:
    """Whether the locked file is the one at `lock_path` now."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
    except FileNotFoundError:
        return False


def _temporary_prefix(path: Path) -> str:
    """`.<name>.<host>.<pid>.`: what `remove_stale_temporaries` reads its writer from."""
    return f".{path.name}.{_host_tag()}.{os.getpid()}."


def _host_tag() -> str:
    """This host's name as it goes into a temporary file's name: letters, digits and '-'."""
    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:32]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True
