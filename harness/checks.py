"""Argument checks, one home for every rule: each bad input becomes a `ValueError` that names the
argument, its value and what would be valid, never a traceback from deep inside.

Pure Python with no imports from the rest of the package, so every layer can use it. `bool` is
never accepted where a number is asked for (`True` is an `int` to Python, never to a user).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    if not _is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_positive(name: str, value: object) -> float:
    """`value` as a float when it is a finite number > 0."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_non_negative(name: str, value: object) -> float:
    """`value` as a float when it is a finite number >= 0."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:  # type: ignore[arg-type,operator]
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
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
