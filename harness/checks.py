"""Argument checks, one home for every rule: each bad input becomes a `ValueError` that names the
argument, its value and what would be valid, never a traceback from deep inside.

Pure Python with no imports from the rest of the package, so every layer can use it. `bool` is
never accepted where a number is asked for (`True` is an `int` to Python, never to a user).
`file_problem` and `directory_problem` say what a path is before anything opens it (a FIFO, a
link that leads nowhere), for the callers to raise in their own words.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Longest repr of a bad value quoted in a message; a 400-digit integer or a long list read from a
# file would bury the message (and Python refuses to print ints of over 4300 digits at all).
MAX_SHOWN_CHARACTERS = 60


def _is_number(value: object) -> bool:
    """A real number (int, float, numpy's), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A finite real number; an int too large for a float counts as infinite."""
    try:
        return _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:
        return False


def shown(value: object) -> str:
    """`value`'s repr for a message, cut to MAX_SHOWN_CHARACTERS."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return f"an integer of about {int(math.log10(abs(value))) + 1} digits"
    text = repr(value)
    if len(text) <= MAX_SHOWN_CHARACTERS:
        return text
    return f"{text[:MAX_SHOWN_CHARACTERS]}... ({len(text)} characters)"


def require_positive_int(name: str, value: object) -> int:
    """`value` when it is an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def require_non_negative_int(name: str, value: object) -> int:
    """`value` when it is an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def require_finite(name: str, value: object) -> float:
    """`value` as a float when it is a finite real number."""
    if not _is_finite(value):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    return float(value)  # type: ignore[arg-type]


def require_positive(name: str, value: object) -> float:
    """`value` as a float when it is a finite number > 0."""
    if not _is_finite(value) or value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive finite number, got {shown(value)}")
    return float(value)  # type: ignore[arg-type]


def require_non_negative(name: str, value: object) -> float:
    """`value` as a float when it is a finite number >= 0."""
    if not _is_finite(value) or value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a non-negative finite number, got {shown(value)}")
    return float(value)  # type: ignore[arg-type]


def require_fraction(name: str, value: object) -> float:
    """`value` as a float when it is a number in [0, 1]."""
    if not _is_number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_positive_fraction(name: str, value: object) -> float:
    """`value` as a float when it is a number in (0, 1]: a share that cannot be zero, such as an
    assumed utilisation."""
    if not _is_number(value) or not 0 < value <= 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a fraction in (0, 1], e.g. 0.4 for 40%, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_choice(name: str, value: object, choices: Sequence[T]) -> T:
    """`value` when it is one of `choices` (compared by equality; bool never matches 0 or 1)."""
    for choice in choices:
        if value == choice and isinstance(value, bool) == isinstance(choice, bool):
            return choice
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def require_bool(name: str, value: object) -> bool:
    """`value` when it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def require_text(name: str, value: object) -> str:
    """`value` when it is a non-empty string on one line (it becomes a name, a key or a label)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
        raise ValueError(f"{name} must be a non-empty string on one line, got {value!r}")
    return value


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file ("is a directory", "is a FIFO", "is a symbolic link
    ... that does not exist"), or None when it is a regular file or does not exist at all.

    Checked before opening: reading a FIFO blocks until someone writes to it, and a link that
    leads nowhere must not pass for "no file yet"."""
    return _problem(path, want_directory=False)


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot be used as a directory, or None when it is one or does not exist."""
    return _problem(path, want_directory=True)


def _problem(path: Path, *, want_directory: bool) -> str | None:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return "cannot exist: a part of its path is a file, not a directory"
        return f"cannot be examined ({exc.strerror or exc})"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that leads back to itself (a loop)"
        return f"cannot be examined ({exc.strerror or exc})"
    if want_directory:
        return None if stat.S_ISDIR(mode) else f"is {_file_type(mode)}, not a directory"
    return None if stat.S_ISREG(mode) else f"is {_file_type(mode)}, not a regular file"


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"
