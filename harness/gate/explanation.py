"""Which profile explains which metric, and the explanation of a test's regressions: the kernel
diff (`harness.gate.kernel_diff`) of the step each regressed metric was measured in, with its
cause named.

A regressed wall time, throughput or MFU is explained by the device profile of its own
measurement: `gemm_device_time` for `gemm` and `gemm_tflops`, `device_time` for a training
step's `step_time`. The sides' profiles are a baseline's recorded runs (or one stored profile),
the rounds of an A/B, or a single saved result.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from harness.gate.kernel_diff import KernelDiff, diff_profiles
from harness.gate.profile import DeviceProfile
from harness.gate.results import Metric, RunResults, split_metric_id
from harness.gate.verdict import Outcome, Verdict

# The share of a step's change the GPU's idle time must carry to name the host when no line
# stands out (`Explanation.cause`): more than the kernels together could.
HOST_SHARE_OF_CHANGE = 0.5
# Metric kinds a kernel diff explains: time and throughput follow the step's time.
EXPLAINED_KINDS: frozenset[str] = frozenset({"time", "throughput"})
PROFILE_METRIC_SUFFIX = "device_time"


def profile_metric_id(metric_id: str, metrics: Mapping[str, Metric]) -> str | None:
    """The id of the metric whose profile explains `metric_id`: the metric itself when it has a
    profile, else the same test's `<prefix>device_time` with the longest prefix that names the
    metric (`gemm_device_time` for `gemm` and `gemm_tflops`, `device_time` for `step_time`);
    None for a metric no kernel diff explains (memory, or no profile in the test)."""
    metric = metrics.get(metric_id)
    if metric is None or metric.kind not in EXPLAINED_KINDS:
        return None
    if metric.profile is not None:
        return metric_id
    nodeid, name = split_metric_id(metric_id)
    best: tuple[int, str] | None = None
    for mid, candidate in metrics.items():
        test, candidate_name = split_metric_id(mid)
        if test != nodeid or candidate.profile is None \
                or not candidate_name.endswith(PROFILE_METRIC_SUFFIX):
            continue
        prefix = candidate_name[:-len(PROFILE_METRIC_SUFFIX)].rstrip("_")
        if prefix and name != prefix and not name.startswith(prefix + "_"):
            continue
        if best is None or len(prefix) > best[0]:
            best = (len(prefix), mid)
    return None if best is None else best[1]


def run_profiles(metric: Metric) -> tuple[DeviceProfile, ...]:
    """A stored metric's profiles, one per recorded run where its runs carry them (two or
    more: a spread), else its own profile; () when it has none."""
    per_run = tuple(run.profile for run in metric.runs if run.profile is not None)
    if len(per_run) >= 2:
        return per_run
    return () if metric.profile is None else (metric.profile,)


@dataclass(frozen=True)
class Explanation:
    """The kernel diff of the profile metric `profile_id`, which explains the regressed
    `metric_ids`; `diff` is None where a side has no profile, and `missing` says which.
    `device_time_unchanged`: the profile metric itself, the step's device time, was judged
    unchanged while the metrics it explains regressed."""

    profile_id: str
    metric_ids: tuple[str, ...]
    diff: KernelDiff | None
    missing: str = ""
    device_time_unchanged: bool = False

    @property
    def cause(self) -> str | None:
        """The diff's cause (`KernelDiff.cause`), or "host by elimination": no line moved
        beyond its noise, but the step's device time was judged unchanged and the GPU's idle
        time carries most of the step's change. Against a baseline's runs on other machines
        the idle time of a host-bound step spreads too widely to stand out by itself: 35 ms of
        Python per step, confirmed +41.8% by A/B, moved the idle 33.2 -> 42.5 ms against four
        recorded runs whose idle spread from 20.8 to 50.3 ms, within their noise (H200,
        2026-12-02). None without a diff."""
        if self.diff is None:
            return None
        diff = self.diff
        idle = diff.new_classes.get("idle", 0.0) - diff.base_classes.get("idle", 0.0)
        if diff.cause == "noise" and self.device_time_unchanged and diff.change > 0 \
                and idle >= HOST_SHARE_OF_CHANGE * diff.change:
            return "host by elimination"
        return diff.cause


def explain(metric_ids: Sequence[str], metrics: Mapping[str, Metric],
            base_profiles: Callable[[str], Sequence[DeviceProfile]],
            new_profiles: Callable[[str], Sequence[DeviceProfile]],
            unchanged: Collection[str] = frozenset()) -> list[Explanation]:
    """One explanation per profile metric that explains some of `metric_ids` (found among
    `metrics`, the new side's), diffing the profiles each side's function gives for it;
    `unchanged` holds the metric ids judged unchanged (a device time among them clears the
    kernels)."""
    groups: dict[str, list[str]] = {}
    for mid in metric_ids:
        pid = profile_metric_id(mid, metrics)
        if pid is not None:
            groups.setdefault(pid, []).append(mid)
    explanations = []
    for pid, explained in groups.items():
        before, after = base_profiles(pid), new_profiles(pid)
        missing = " and ".join(side for side, profiles in (("base", before), ("new", after))
                               if not profiles)
        explanations.append(Explanation(
            pid, tuple(explained), diff_profiles(before, after) if not missing else None,
            f"no kernel table on the {missing} side (measured without a profiled pass)"
            if missing else "", device_time_unchanged=pid in unchanged))
    return explanations


def explain_verdicts(verdicts: Sequence[Verdict], *,
                     base_profiles: Callable[[str], Sequence[DeviceProfile]] | None = None,
                     new_profiles: Callable[[str], Sequence[DeviceProfile]] | None = None
                     ) -> list[Explanation]:
    """The explanations of the regressions among `verdicts` (all verdicts of the tests, so
    that each regressed metric finds its test's profile metric): by default the profiles the
    verdicts' own baseline and measured metrics carry (a baseline's recorded runs' where it
    has several); A/B passes its rounds' profiles instead."""
    new = {v.metric_id: v.measured for v in verdicts}
    base = {v.metric_id: v.baseline for v in verdicts if v.baseline is not None}
    regressed = [v.metric_id for v in verdicts
                 if v.outcome is Outcome.REGRESSION and v.baseline is not None]
    unchanged = {v.metric_id for v in verdicts if v.outcome is Outcome.UNCHANGED}
    return explain(regressed, new, base_profiles or stored_profiles(base),
                   new_profiles or stored_profiles(new), unchanged)


def stored_profiles(metrics: Mapping[str, Metric]) -> Callable[[str], tuple[DeviceProfile, ...]]:
    """The profiles of a stored side (a baseline or saved results) by metric id: its recorded
    runs' where it has two or more, else its own (`run_profiles`)."""
    def profiles(metric_id: str) -> tuple[DeviceProfile, ...]:
        metric = metrics.get(metric_id)
        return () if metric is None else run_profiles(metric)
    return profiles


def runs_profiles(runs: Sequence[RunResults]) -> Callable[[str], tuple[DeviceProfile, ...]]:
    """The profiles of a side measured in several runs (A/B rounds), one per run that has it."""
    def profiles(metric_id: str) -> tuple[DeviceProfile, ...]:
        found = (run.metrics.get(metric_id) for run in runs)
        return tuple(m.profile for m in found if m is not None and m.profile is not None)
    return profiles
