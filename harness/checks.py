"""Argument checks shared by the formulas: every bad input becomes a `ValueError` that names the
argument, its value and what would be valid, never a traceback from deep inside a formula."""

from __future__ import annotations

from harness.theory.config import TransformerConfig


def require_config(cfg: object) -> TransformerConfig:
    """`cfg` itself when it is a TransformerConfig."""
    if not isinstance(cfg, TransformerConfig):
        raise ValueError(f"cfg must be a harness.TransformerConfig, got {type(cfg).__name__} "
                         f"({cfg!r}); build one with harness.TransformerConfig(...) or "
                         f"harness.get_model(name)")
    return cfg


def require_positive_int(name: str, value: object) -> int:
    """`value` when it is an int > 0 (bool is not accepted as an int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def require_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Nothing when `value` is one of `choices`."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def require_bool(name: str, value: object) -> bool:
    """`value` when it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounded up."""
    return -(-numerator // denominator)
