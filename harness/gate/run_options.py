"""The validated options of one perf run, as the session and the plugin share them.

The pytest plugin fills `PerfOptions` from the `--perf-*` options and `perf_*` ini keys
(`harness.pytest_plugin.options`); the gate reads it and never parses anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Seconds between a regression and its confirming re-measurement. A shared H200 host once slowed
# training steps by 10-35% for about 13 s (benchmarks/detection_power, 2026-11-21): a
# re-measurement right away lands in the same episode, one 30 s later does not. It costs
# nothing unless a test regressed.
DEFAULT_CONFIRM_DELAY_SECONDS = 30.0

# How a suspected regression is confirmed: "ab" runs the baseline's own commit and this code
# alternately on this machine (harness.gate.ab); "remeasure" measures this code again after
# --perf-confirm-delay; "auto" takes A/B where the baseline names a commit this checkout has.
CONFIRM_CHOICES: tuple[str, ...] = ("auto", "ab", "remeasure")
# Rounds of an A/B confirmation at most: 5 rounds give the paired t-test 4 degrees of freedom,
# enough to confirm a 3% change over 1% run-to-run noise at p ~ 0.001 (harness.gate.paired).
DEFAULT_AB_ROUNDS = 5
# Seconds the run's A/B confirmation (one for every suspected test, at the end of the run) may
# take before it stops at the rounds it has (never below 3): a round is two fresh pytest
# processes, 6-10 s of start-up each on an H200 host plus the suspected tests.
DEFAULT_AB_BUDGET_SECONDS = 240.0


@dataclass(frozen=True)
class PerfOptions:
    """The `--perf-*` options after validation; `device` is resolved to "cuda" or "cpu"."""

    baselines_dir: Path
    device: str
    update_baselines: bool = False
    # With update_baselines: add this run to the baseline's runs instead of starting them anew.
    add_run: bool = False
    force: bool = False
    save_path: Path | None = None
    compare_path: Path | None = None
    strict: bool = False
    tolerance: float | None = None
    budget_seconds: float | None = None
    # Seconds a collective of a distributed run waits for the other ranks (None: the default of
    # harness.distributed.launch).
    dist_timeout_seconds: float | None = None
    # Pause before the re-measurement that confirms a regression (0: none).
    confirm_delay_seconds: float = DEFAULT_CONFIRM_DELAY_SECONDS
    # Options to repeat in the command a skip message suggests, so that the suggested command
    # records the baseline this run looks for (same directory, same device).
    repeat_flags: tuple[str, ...] = ()
    confirm: str = "auto"
    ab_rounds: int = DEFAULT_AB_ROUNDS
    ab_budget_seconds: float = DEFAULT_AB_BUDGET_SECONDS
    # Also confirm by A/B the host-side metrics worse only within the fleet's spread, which are
    # otherwise named and left out (`harness.gate.host_share`).
    ab_host_bound: bool = False
    # Options every child run of an A/B confirmation repeats (device, sampling budget).
    child_args: tuple[str, ...] = ()
    # --perf-trace: where profiled passes write their traces, kept for regressed tests only
    # (every test's with --perf-trace-all, as A/B's child runs do).
    trace_dir: Path | None = None
    trace_all: bool = False
