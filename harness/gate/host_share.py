"""Which worse readings of host-bound work are the host's share: named, not sent to A/B.

A step is host-bound when the GPU idles while the host issues it (`DeviceProfile.host_bound`);
its wall time is then as much the host's speed as the code's. On the fresh H200 hosts that
recorded the committed baseline, the host-bound steps' wall times spanned 8-99% between machines
while their device times moved under 1% (2026-12-03). Numbers recorded on other machines cannot
tell a slower host from slower host code; the step's device time, judged on its own, is what the
code costs the GPU. What measures the host itself (a DataLoader's throughput, a pageable copy
ratio: metrics of kind "dataloader") is in the same place.

The same holds, less strongly, for any measurement of many launches whose device time held: what
moved in its wall time is the GPU's idle between kernels, which the host sets.

So a wall-time metric of host-side work that reads worse than one machine's tolerance but
within what the fleet measured, its device time held, is a *host-bound change*: it passes, and
the report names it with its change and its device time's verdict. Within the fleet means
unchanged against the tolerance that the spread of the baseline's runs set
(`Verdict.worse_on_one_machine`), or, for a host-sensitive metric (runs spanning 30% or more), no
worse than the worst recorded run by more than one machine's tolerance. Worse than that, it
stays a suspect for the run's A/B.

Only an A/B on this machine can say whether the host code or the host got slower. The run's A/B
leaves these out unless `--perf-ab-host-bound` asks for them: with one of them in nearly every
run (the unchanged suite on fresh H200s, 2026-12-02/03), the suite of 112-155 s became 200-350 s,
an A/B round of a real-model step being two fresh processes of 12-30 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence

from harness.gate.explanation import PROFILE_METRIC_SUFFIX
from harness.gate.formatting import format_percent
from harness.gate.results import Metric, split_metric_id
from harness.gate.verdict import HOST_BOUND_RULE, Outcome, Verdict

# Metric kinds that measure the host itself (worker processes, pageable copies through a staging
# buffer): the default tolerance of the kind is wide (15%) for the same reason.
HOST_KINDS = frozenset({"dataloader"})


# Kinds of the wall-time metrics of a measurement (its time and the throughputs derived from it).
WALL_KINDS = frozenset({"time", "throughput"})


def host_side(metric: Metric, device_time: Verdict | None) -> bool:
    """Whether `metric` follows the host: a wall time of a host-bound step, a host kind, or a
    wall time (or a throughput derived from one) of a measurement of many launches, whose
    `device_time` was profiled. With the device time held, what moved in such a wall time is
    the GPU's idle between kernels, which the host sets: the GPT-2 step, 17% idle and not
    host-bound, read +3% against the fleet with its device time -0.6% on a fresh H200, and
    prefill's share of the peak, derived from a host-bound wall time, +9% (2026-12-03). A
    kernel-bound call's wall time measures its kernels (`harness.gate.wall_time`): never."""
    if metric.host_bound or metric.kind in HOST_KINDS:
        return True
    profile = None if device_time is None else device_time.measured.profile
    return metric.kind in WALL_KINDS and profile is not None and not profile.kernel_bound


def worse_than_the_fleet_measured(verdict: Verdict) -> bool:
    """Whether the metric reads worse than the worst of the baseline's recorded run medians by
    more than one machine's tolerance (True without recorded runs to compare with)."""
    baseline = verdict.baseline
    medians = [] if baseline is None else [run.median for run in baseline.runs]
    measured = verdict.measured.median
    if not medians or measured <= 0 or min(medians) <= 0:
        return True
    lower_is_better = verdict.measured.better == "lower"
    worst = max(medians) if lower_is_better else min(medians)
    worsening = math.log(measured / worst) if lower_is_better else math.log(worst / measured)
    return worsening > math.log1p(verdict.one_machine_tolerance)


def is_host_share(verdict: Verdict, device_time: Verdict | None) -> bool:
    """Whether `verdict` is a host-bound change (module docstring): a host-side metric worse
    than one machine's tolerance that the fleet's spread, or its worst recorded run, covers,
    whose step's `device_time` (when it has one) held. A device time that moved is the code's
    doing on the GPU, and its wall time goes to the A/B with it: a for-loop AdamW read the
    GPT-2 step's device time +8% and its host-bound wall time +21% (H200, 2026-12-02)."""
    if verdict.metric_id.endswith(PROFILE_METRIC_SUFFIX):  # what the code costs the GPU
        return False
    if not host_side(verdict.measured, device_time) or verdict.baseline is None:
        return False
    if device_time is not None and not device_time.held:
        return False
    if verdict.worse_on_one_machine:
        return True
    return (verdict.outcome is Outcome.UNRELIABLE and verdict.rule == "host-sensitive"
            and not worse_than_the_fleet_measured(verdict))


def device_time_partner(metric_id: str, ids: Collection[str]) -> str | None:
    """The device-time metric measured with the wall-time metric `metric_id`, when `ids` holds
    one: `device_time` for `step_time`, `decode_step_device_time` for `decode_step_gbps`; the
    longest matching name wins."""
    nodeid, name = split_metric_id(metric_id)
    best: tuple[int, str] | None = None
    for other in ids:
        other_nodeid, other_name = split_metric_id(other)
        if other_nodeid != nodeid or not other_name.endswith(PROFILE_METRIC_SUFFIX) \
                or other == metric_id:
            continue
        stem = other_name[:-len(PROFILE_METRIC_SUFFIX)].rstrip("_")
        if (not stem or name == stem or name.startswith(f"{stem}_")) \
                and (best is None or len(stem) > best[0]):
            best = (len(stem), other)
    return None if best is None else best[1]


def name_host_shares(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts (of one test or a whole run), each host-bound change (`is_host_share`)
    judged unchanged by HOST_BOUND_RULE, its reason naming the device time's verdict."""
    by_id = {v.metric_id: v for v in verdicts}
    result = []
    for verdict in verdicts:
        partner = by_id.get(device_time_partner(verdict.metric_id, by_id) or "")
        if is_host_share(verdict, partner):
            verdict = dataclasses.replace(
                verdict, outcome=Outcome.UNCHANGED, rule=HOST_BOUND_RULE,
                reason=_reason(verdict, partner))
        result.append(verdict)
    return result


def _reason(verdict: Verdict, partner: Verdict | None) -> str:
    change = "" if verdict.change is None else \
        f"{format_percent(verdict.change, signed=True, space=False)} vs baseline, "
    runs = 0 if verdict.baseline is None else len(verdict.baseline.runs)
    profile = None if partner is None else partner.measured.profile
    idle = "" if profile is None else \
        f" (the GPU idled {format_percent(profile.idle_fraction, space=False)} of it)"
    if verdict.measured.host_bound:
        what = f"a step that is host-bound here{idle}"
    elif verdict.measured.kind in HOST_KINDS:
        what = f"a measurement of the host (kind {verdict.measured.kind!r})"
    else:
        what = f"a measurement of many launches{idle}"
    device = ""
    if partner is not None and partner.change is not None:
        moved = format_percent(partner.change, signed=True, space=False)
        device = f"; its device time {moved}, {partner.outcome.value}"
    return (f"{change}worse than one machine's "
            f"{format_percent(verdict.one_machine_tolerance, space=False)} tolerance, on "
            f"{what}, within what the baseline's {runs} recorded runs measured{device}: the "
            f"host's share, which numbers from other machines cannot judge "
            f"(--perf-ab-host-bound confirms it by A/B on this machine)")


def host_shares(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The host-bound changes among `verdicts`."""
    return [v for v in verdicts if v.rule == HOST_BOUND_RULE]


def note_host_shares(verdicts: Sequence[Verdict], base_commit: str | None) -> str | None:
    """The end-of-run line naming the host-bound changes, or None when there are none."""
    named = host_shares(verdicts)
    if not named:
        return None
    tests: dict[str, list[str]] = {}
    for verdict in named:
        nodeid, name = split_metric_id(verdict.metric_id)
        change = "" if verdict.change is None else \
            f" {format_percent(verdict.change, signed=True, space=False)}"
        tests.setdefault(nodeid, []).append(f"{name}{change}")
    listed = "; ".join(f"{nodeid}: {', '.join(names)}" for nodeid, names in tests.items())
    confirm = "rerun with --perf-ab-host-bound"
    if base_commit is not None:
        confirm += f", or `python -m harness ab {base_commit[:12]} -- {' '.join(tests)}`"
    return (f"{len(named)} host-bound metric(s) read worse than one machine's tolerance, within "
            f"what the baseline's machines measured: the host's share of the work, not judged "
            f"against other machines (their device times are). {listed}. Whether this host "
            f"or the host code is slower, only an A/B here can tell: {confirm}")

