"""Which reading of a kernel-bound call decides: its wall time, not its profiled burst.

`perf.time` measures a call twice. Its wall time per call comes from CUDA events over many
samples, the calls queued back to back; its `<name>_device_time` comes from a profiled pass of a
few isolated calls, kept for the kernel table that explains a change. Where a call launches a
handful of kernels and the host keeps up (not host-bound), the queue never drains: the GPU does
not idle between the calls, so the wall time per call is the device time per call, measured
better. A device time that rises must move it.

The profiled burst is the noisier reading. Its device time read 0-8% below the wall time in
the baseline's four runs of the single-GEMM tests, and on fresh H200 machines it read 2-6% worse
than the fleet while the same GEMMs' wall times moved less than 1.5%; four such tests went to an
A/B of 92 s that found nothing, and `ab HEAD HEAD` called three of them undecided
(2026-12-02). So where a kernel-bound call's wall time is judged unchanged, its device time is
too, with the reason; where the wall time moved, the device time keeps its own verdict and
explains it. A step of many kernels (a forward pass, a training step) is never deferred: the
host can leave the GPU idle between its kernels, and a device time hidden in that idle is what
measuring both is for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from harness.gate.explanation import PROFILE_METRIC_SUFFIX
from harness.gate.formatting import format_percent
from harness.gate.paired import PairedOutcome, PairedVerdict
from harness.gate.results import Metric, split_metric_id
from harness.gate.verdict import WALL_TIME_RULE, Outcome, Verdict


def wall_time_twin(metric_id: str, ids: Collection[str]) -> str | None:
    """The wall-time metric measured with the profiled metric `metric_id`, when `ids` holds it:
    `gemm` for `gemm_device_time`, `step_time` for `device_time`, `x_step_time` for
    `x_device_time` (a training step's prefix); None otherwise."""
    nodeid, name = split_metric_id(metric_id)
    if not name.endswith(PROFILE_METRIC_SUFFIX):
        return None
    prefix = name[:-len(PROFILE_METRIC_SUFFIX)]
    for candidate in (f"{prefix}step_time", prefix.rstrip("_")):
        twin = f"{nodeid}::{candidate}"
        if candidate and twin in ids:
            return twin
    return None


def kernel_bound(metric: Metric) -> bool:
    """Whether `metric` is the device time of a call of few launches that kept the GPU busy
    (`DeviceProfile.kernel_bound`)."""
    return metric.profile is not None and metric.profile.kernel_bound


def defer_to_wall_time(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts (of one test or of a whole run), each kernel-bound device time whose wall
    time was judged unchanged (and no worse than one machine's tolerance) judged unchanged
    too, whatever it read alone."""
    by_id = {v.metric_id: v for v in verdicts}
    result = []
    for verdict in verdicts:
        twin = by_id.get(wall_time_twin(verdict.metric_id, by_id) or "")
        if twin is not None and _defers(verdict, twin):
            why = _why(verdict.measured, twin.measured, twin.change, twin.outcome.value)
            verdict = dataclasses.replace(verdict, outcome=Outcome.UNCHANGED,
                                          rule=WALL_TIME_RULE, reason=f"{verdict.reason}; {why}")
        result.append(verdict)
    return result


def defer_paired(verdicts: Mapping[str, PairedVerdict],
                 head: Mapping[str, Metric]) -> dict[str, PairedVerdict]:
    """The paired verdicts of an A/B, each kernel-bound device time (as the head's last run
    `head` measured it) whose wall time the rounds judged unchanged (or better, the device
    time not) judged unchanged too."""
    result = dict(verdicts)
    for mid, verdict in verdicts.items():
        twin = verdicts.get(wall_time_twin(mid, verdicts) or "")
        metric, twin_metric = head.get(mid), head.get(twin.metric_id) if twin else None
        twin_held = twin is not None and (
            twin.outcome is PairedOutcome.UNCHANGED
            or (twin.outcome is PairedOutcome.IMPROVEMENT
                and verdict.outcome is not PairedOutcome.IMPROVEMENT))
        if twin is None or metric is None or twin_metric is None or not twin_held \
                or verdict.outcome is PairedOutcome.UNCHANGED or not kernel_bound(metric):
            continue
        result[mid] = dataclasses.replace(
            verdict, outcome=PairedOutcome.UNCHANGED,
            reason=f"{verdict.reason}; "
                   f"{_why(metric, twin_metric, twin.change, twin.outcome.value)}")
    return result


def _defers(verdict: Verdict, twin: Verdict) -> bool:
    """Whether the device time `verdict` follows its wall time `twin`: a kernel-bound call,
    both measured reliably, the device time judged otherwise than plainly unchanged and the
    wall time plainly unchanged, or improved while the device time did not. A faster wall
    time of the same kernels rules out a slower device time: the fp8 GEMM's wall time read
    3.2% faster than the fleet on a fresh H200 while its burst read the device time 10%
    slower, which sent the test to A/B (2026-12-03)."""
    plain = verdict.outcome is Outcome.UNCHANGED and not verdict.worse_on_one_machine
    both_better = twin.outcome is Outcome.IMPROVEMENT and verdict.outcome is Outcome.IMPROVEMENT
    twin_held = twin.held and not both_better
    return (kernel_bound(verdict.measured) and verdict.change is not None and not plain
            and verdict.measured.reliable and twin.measured.reliable
            and verdict.outcome in (Outcome.UNCHANGED, Outcome.REGRESSION,
                                    Outcome.IMPROVEMENT, Outcome.UNRELIABLE)
            and verdict.baseline is not None and verdict.baseline.reliable and twin_held)


def _why(metric: Metric, twin: Metric, twin_change: float | None, twin_outcome: str) -> str:
    assert metric.profile is not None  # kernel_bound checked it
    judged = "better" if twin_outcome == "improvement" else twin_outcome
    moved = "" if twin_change is None else \
        f" ({format_percent(twin_change, signed=True, space=False)})"
    return (f"the wall time decides: a call of {metric.profile.launches_per_step:g} launch(es), "
            f"GPU-bound, whose wall time {twin.name!r}{moved} over {twin.count} back-to-back "
            f"samples was judged {judged} measures the same kernels better than "
            f"{metric.count} profiled calls")
