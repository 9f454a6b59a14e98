"""Which metrics of a test a confirmation by A/B on this machine checks, and why each.

A first verdict compares this machine with numbers recorded on others. Some of its outcomes are
only as good as that comparison, and A/B (the baseline's code and this code alternately, here)
can settle them where it can run: the session decides a test's outcome from these groups
(`harness.gate.session.PerfSession.decide`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.gate.verdict import AB_RULE, Outcome, Verdict


@dataclass(frozen=True)
class Suspects:
    """The metric ids of one test's verdicts that A/B can check, by why."""

    # Regressions against the stored baseline.
    regressions: tuple[str, ...]
    # Judged "environment changed" from the host's calibration alone (a probe can misread).
    host_rule: tuple[str, ...]
    # Worse beyond tolerance on a host-sensitive metric (its recorded runs span 30% or more).
    host_sensitive: tuple[str, ...]
    # Unchanged only within the fleet's widened tolerance, but worse than one machine's (a
    # slowdown on a faster chip of the fleet hides there, and one on a host-bound step).
    within_fleet: tuple[str, ...]
    # Under --perf-strict: reliably measured, worse beyond tolerance, not supported by the
    # samples (on a host-bound step that is most of what another machine does to it).
    noisy: tuple[str, ...]
    # Under --perf-strict: measured unreliably (a GPU throttled in every attempt), which a first
    # verdict cannot judge but base and head measured alternately on this machine can.
    unreliably_measured: tuple[str, ...] = ()

    @property
    def rechecked(self) -> tuple[str, ...]:
        """The suspects of a test that passed its first verdict."""
        return self.host_rule + self.within_fleet

    @property
    def unjudged(self) -> tuple[str, ...]:
        """The suspects of a test skipped as unreliable (not under --perf-strict)."""
        return self.host_sensitive + self.host_rule + self.within_fleet

    @property
    def all(self) -> tuple[str, ...]:
        """Every suspect: what the A/B of a failed test checks, so that a host-bound step time
        the calibration excused is judged with the device time that regressed beside it."""
        return (self.regressions + self.noisy + self.unreliably_measured
                + self.host_sensitive + self.host_rule + self.within_fleet)


def suspects(verdicts: Sequence[Verdict], *, strict: bool) -> Suspects:
    """Sort one test's verdicts into the groups A/B can check."""
    host_sensitive = tuple(v.metric_id for v in verdicts
                           if v.outcome is Outcome.UNRELIABLE and v.rule == "host-sensitive")
    return Suspects(
        regressions=tuple(v.metric_id for v in verdicts
                          if v.outcome is Outcome.REGRESSION and v.baseline is not None),
        host_rule=tuple(v.metric_id for v in verdicts
                        if v.outcome is Outcome.ENVIRONMENT_CHANGED and v.rule == "host-bound"),
        host_sensitive=host_sensitive,
        within_fleet=tuple(v.metric_id for v in verdicts if v.worse_on_one_machine),
        noisy=tuple(v.metric_id for v in verdicts
                    if strict and v.outcome is Outcome.UNRELIABLE and noisy_worsening(v)
                    and v.metric_id not in host_sensitive),
        unreliably_measured=tuple(v.metric_id for v in verdicts
                                  if strict and v.outcome is Outcome.UNRELIABLE
                                  and unreliably_measured(v)))


def unreliably_measured(verdict: Verdict) -> bool:
    """A metric measured unreliably against a comparable baseline (same unit and direction):
    A/B can measure it again on both sides; a metric of another unit cannot be paired."""
    baseline = verdict.baseline
    return (baseline is not None and not verdict.measured.reliable
            and baseline.unit == verdict.measured.unit
            and baseline.better == verdict.measured.better)


def undecided_by_ab(verdict: Verdict) -> bool:
    """Worse than the baseline at first, then measured worse by A/B on this machine too, but
    over rounds that disagree too much for the paired t-test (`harness.gate.paired`): not a
    confirmed regression. It leaves the metric unjudged without failing its test, even under
    --perf-strict: the A/B checked it and found no regression it could support. On unchanged
    code, every strict failure on fresh H200 machines that survived the A/B was of this kind:
    the pinned copy's device time (head +7.0%) and the timm ResNet-50 step time (head +7.8%,
    p=0.35), metrics that move 5-10% between processes on one machine (2026-12-02)."""
    return verdict.outcome is Outcome.UNRELIABLE and verdict.rule == AB_RULE


def noisy_improvement(verdict: Verdict) -> bool:
    """A reliably measured metric whose median moved beyond tolerance the better way, which the
    samples could not support: nothing in it suggests a regression, so it is reported but
    neither skips nor, under --perf-strict, fails its test. A DataLoader's data-wait fraction
    read -34.7% with a 188% spread on a fresh H200 and failed the strict run (2026-12-02)."""
    if verdict.outcome is not Outcome.UNRELIABLE or verdict.rule == "host-sensitive" \
            or verdict.baseline is None or verdict.change is None \
            or not verdict.measured.reliable or not verdict.baseline.reliable \
            or verdict.baseline.unit != verdict.measured.unit \
            or verdict.baseline.better != verdict.measured.better:
        return False
    return verdict.change < 0 if verdict.measured.better == "lower" else verdict.change > 0


def noisy_worsening(verdict: Verdict) -> bool:
    """A reliably measured metric whose median moved beyond tolerance the wrong way, which
    the samples alone could not support (not a throttled GPU, not a unit mismatch)."""
    if verdict.baseline is None or verdict.change is None or not verdict.measured.reliable \
            or not verdict.baseline.reliable or abs(verdict.change) <= verdict.tolerance:
        return False
    return verdict.change > 0 if verdict.measured.better == "lower" else verdict.change < 0
