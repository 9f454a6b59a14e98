"""How far this machine sits from the fleet, read from this run's own device-bound metrics.

A fresh runner's chip can be slower than the fleet's mean on every GEMM at once: on one fresh
H200 (2026-12-02) all eight GEMM tests read 2-4% slower than the three-run baseline, in the
same direction. That is the chip, not the code: a code change slows the kernels it touches, not
every kernel of the suite. So a metric that only the fleet's wider tolerance let pass
(`Verdict.worse_on_one_machine`) goes to A/B only when it is worse than this run's typical
device-bound metric by more than one machine's tolerance (`stands_out`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from harness.gate.verdict import Outcome, Verdict

# Fewest device-bound metrics whose median says anything about the machine: with fewer, one
# regressed test would be half the evidence and would hide itself.
MIN_PEERS = 5
# Metrics that measure the chip's speed: times and throughputs (memory does not follow a chip).
PEER_KINDS = frozenset({"time", "throughput"})


def log_worsening(verdict: Verdict) -> float | None:
    """The change as a log ratio, positive when worse (a time up, a throughput down); None
    when there is no positive change to take the log of."""
    if verdict.change is None or verdict.change <= -1:
        return None
    worse = math.log1p(verdict.change)
    return worse if verdict.measured.better == "lower" else -worse


def _is_peer(verdict: Verdict) -> bool:
    """A reliable, device-bound time or throughput judged against recorded fleet runs."""
    return (verdict.machine_tolerance is not None and verdict.baseline is not None
            and verdict.measured.kind in PEER_KINDS and verdict.measured.reliable
            and not verdict.measured.host_bound
            and verdict.outcome in (Outcome.UNCHANGED, Outcome.REGRESSION,
                                    Outcome.IMPROVEMENT))


def machine_offset(verdicts: Iterable[Verdict]) -> tuple[float, int]:
    """(the median log worsening of this run's device-bound peers, their count); the offset is
    0 with fewer than MIN_PEERS of them."""
    values = [w for v in verdicts if _is_peer(v) and (w := log_worsening(v)) is not None]
    if len(values) < MIN_PEERS:
        return 0.0, len(values)
    return statistics.median(values), len(values)


def stands_out(verdict: Verdict, offset: float) -> bool:
    """Whether the metric is worse than this machine's typical device-bound metric by more
    than one machine's tolerance."""
    worse = log_worsening(verdict)
    return worse is not None and worse - offset > math.log1p(verdict.one_machine_tolerance)
