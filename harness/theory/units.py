"""Byte units and whole-unit rounding that the formulas share.

A ZeRO shard, a tensor-parallel slice of the vocabulary, a GEMM tile and a wave of thread blocks
are all counts rounded up to whole units, so `ceil_div` lives here beside the byte units rather
than among the argument checks.
"""

from __future__ import annotations

MIB = 2**20
GIB = 2**30


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer division rounded up, exact for integers of any size (no float division)."""
    return -(-numerator // denominator)
