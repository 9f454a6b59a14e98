"""Numbers with their units, as every report, table and command shows them: one home for the
formatting of times, bytes, FLOPs, counts and percentages."""

from __future__ import annotations

import math

from harness.checks import require_finite, require_positive_int

# Significant digits of a value in a report: 4 resolves a 0.1% change of a median, finer than any
# tolerance, without a wall of digits ("12.35 ms", "612.4 TFLOP/s").
SIGNIFICANT_DIGITS = 4

TIME_UNITS: tuple[str, ...] = ("s", "sec", "seconds")
BYTE_UNITS: tuple[str, ...] = ("B", "bytes")
RATIO_UNITS: tuple[str, ...] = ("ratio", "fraction")  # 0.417 is shown as "41.7 %"
PERCENT_UNITS: tuple[str, ...] = ("%", "percent")  # already in percent: 41.7 is "41.7 %"
# Base units shown with decimal (SI) prefixes: FLOP and FLOP/s as in GPU data sheets, B/s as
# bandwidth (GB/s) is conventionally decimal.
SI_UNITS: tuple[str, ...] = ("FLOP", "FLOP/s", "B/s")

# (threshold, divisor, name) from the largest down; the first threshold the value reaches wins.
TIME_SCALES: tuple[tuple[float, float, str], ...] = (
    (1.0, 1.0, "s"), (1e-3, 1e-3, "ms"), (1e-6, 1e-6, "us"), (0.0, 1e-9, "ns"))
BYTE_SCALES: tuple[tuple[float, float, str], ...] = tuple(
    (1024.0 ** power, 1024.0 ** power, name)
    for power, name in reversed(list(enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi")))))
SI_PREFIXES: tuple[tuple[float, str], ...] = (
    (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""))


def format_value(value: float, unit: str) -> str:
    """A value with a readable unit: "12.3 ms", "612.4 TFLOP/s", "14.2 GiB", "41.7 %".

    Seconds pick s/ms/us/ns, bytes B/KiB/MiB/GiB/TiB, FLOP, FLOP/s and B/s an SI prefix; a
    "ratio" is shown in percent. Any other unit keeps the value as it is, to 4 significant digits.
    """
    require_finite("value", value)
    if not isinstance(unit, str):
        raise ValueError(f"unit must be a string such as 's', 'B' or 'TFLOP/s', got {unit!r}")
    if unit in TIME_UNITS:
        return _scaled(value, TIME_SCALES)
    if unit in BYTE_UNITS:
        scales = tuple((threshold, divisor, f"{prefix}B")
                       for threshold, divisor, prefix in BYTE_SCALES)
        return _scaled(value, scales)
    if unit in RATIO_UNITS:
        return format_percent(value)
    if unit in PERCENT_UNITS:
        return f"{value:.1f} %"
    if unit in SI_UNITS:
        scales = tuple((factor, factor, f"{prefix}{unit}") for factor, prefix in SI_PREFIXES)
        return _scaled(value, scales + ((0.0, 1.0, unit),))
    return f"{_significant(value)} {unit}".rstrip()


def format_signed(value: float, unit: str) -> str:
    """A change with its unit and sign: "+1.2 ms", "-340 us", "0 s"."""
    text = format_value(value, unit)
    return f"+{text}" if value > 0 else text


def format_change(change: float | None) -> str:
    """A relative change with its sign: "+10.2 %", "-3.1 %"; "" when there is none."""
    return "" if change is None else format_percent(change, signed=True)


def format_percent(fraction: float, *, signed: bool = False, space: bool = True) -> str:
    """0.031 -> "3.1 %" ("+3.1 %" when signed; "3.1%" without the space, as verdict reasons
    read)."""
    sign = "+" if signed else ""
    return f"{fraction * 100:{sign}.1f}{' ' if space else ''}%"


def format_size(nbytes: int) -> str:
    """A metric-name friendly size: 8192 -> '8KiB', 2**30 -> '1GiB', 1000 -> '1000B'."""
    require_positive_int("nbytes", nbytes)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


def format_count(n: float) -> str:
    """6738415616 -> '6.74 B'."""
    return _scaled_plain(n, ("", "K", "M", "B", "T"), 1000)


def format_bytes(n: float) -> str:
    """Binary units, as nvidia-smi and torch.cuda report memory: 2**30 -> '1.00 GiB'."""
    return _scaled_plain(n, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 1024)


def format_flops(n: float) -> str:
    """Decimal units: 1.2e12 -> '1.20 TFLOP'."""
    return _scaled_plain(
        n, ("FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP", "ZFLOP"), 1000)


def format_seconds(seconds: float) -> str:
    """'12.3 ms' below a second, '4.56 s' below an hour, then hours."""
    if seconds < 1:
        return f"{seconds * 1e3:,.2f} ms"
    if seconds < 3600:
        return f"{seconds:,.2f} s"
    return f"{seconds / 3600:,.2f} h"


def _scaled_plain(value: float, units: tuple[str, ...], base: float) -> str:
    """`value` divided by `base` until below it (or out of units), to 2 decimals, with the
    unit."""
    index = 0
    while abs(value) >= base and index < len(units) - 1:
        value /= base
        index += 1
    return f"{value:,.2f} {units[index]}".rstrip()


def _scaled(value: float, scales: tuple[tuple[float, float, str], ...]) -> str:
    """`value` in the largest scale it reaches; the smallest scale below all; 0 in the base."""
    if value == 0:
        return f"0 {_base_name(scales)}"
    # Rounded first, so that 0.99996 s is "1 s", not "1,000 ms".
    magnitude = abs(float(f"{value:.{SIGNIFICANT_DIGITS - 1}e}"))
    for threshold, divisor, name in scales:
        if magnitude >= threshold:
            return f"{_significant(value / divisor)} {name}"
    _, divisor, name = scales[-1]
    return f"{_significant(value / divisor)} {name}"


def _base_name(scales: tuple[tuple[float, float, str], ...]) -> str:
    """The name of the scale with divisor 1 (the unit itself)."""
    return next(name for _, divisor, name in scales if divisor == 1.0)


def _significant(value: float) -> str:
    """`value` to SIGNIFICANT_DIGITS digits in fixed notation, thousands separated."""
    if value == 0:
        return "0"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
