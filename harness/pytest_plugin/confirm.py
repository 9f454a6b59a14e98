"""Confirming one test's suspected regression by A/B on this machine (`harness.gate.ab`).

The baseline records the commit it was measured at. When a test first looks slower and this is a
git checkout holding that commit, its tree is checked out in a temporary worktree and the test
runs there and here alternately, each run a fresh pytest process. The paired verdict then says
whether this code is slower than the baseline's code on this host (a regression), whether the
baseline's code is just as slow here (the environment changed), or neither. Where no A/B is
possible the caller falls back to re-measuring after a pause, and the run's notes say why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.gate import ab
from harness.gate.results import Metric, split_metric_id
from harness.gate.session import Decision, PerfSession
from harness.gate.verdict import DEFAULT_ALPHA, Verdict

# How every profiled pass names its metric (`<name>_device_time`, or `device_time` for a step):
# a suspect of that name needs the child runs to profile.
DEVICE_TIME_SUFFIX = "device_time"


def confirm_by_ab(session: PerfSession, nodeid: str, decision: Decision, rootdir: Path,
                  write: Callable[[str], None]) -> Decision | None:
    """The test's decision after A/B against the baseline's commit, or None when A/B cannot
    run here (no commit recorded, not a git checkout, the commit or test missing there); the
    reason is then one of the session's end notes."""
    commit = session.ab_base_commit()
    if commit is None:
        return None
    repo = ab.repository_root(rootdir)
    try:
        inside = None if repo is None else rootdir.resolve().relative_to(repo.resolve())
    except ValueError:  # a rootdir reached through a link from outside the checkout
        inside = None
    if repo is None or inside is None:
        session.end_notes.append(f"{nodeid}: no A/B ({rootdir} is not inside a git checkout); "
                                 f"re-measured instead")
        return None
    try:
        ab.resolve_commit(repo, commit)
    except ab.ABError:
        session.end_notes.append(f"{nodeid}: no A/B (the baseline's commit {commit[:12]} is "
                                 f"not in this checkout; `git fetch` it for A/B); re-measured "
                                 f"instead")
        return None
    suspects = [v for v in session.verdicts if v.metric_id in decision.suspects]
    tolerances = {v.metric_id: v.tolerance for v in suspects}

    def tolerance_of(metric_id: str, metric: Metric) -> float:
        return tolerances.get(metric_id, min(tolerances.values()))

    options = session.options
    write(f"perf: {nodeid}: {len(suspects)} metric(s) look worse than the baseline; A/B "
          f"against its commit {commit[:12]} on this machine, up to {options.ab_rounds} "
          f"rounds or {options.ab_budget_seconds:g} s")
    try:
        with tempfile.TemporaryDirectory(prefix="perf-ab-runs-") as work, \
                ab.worktree(repo, commit) as (full_commit, base_repo):
            base = ab.Side("base", full_commit, base_repo / inside)
            head = ab.Side("head", "working tree", rootdir)
            result = ab.run_ab(base, head, [*options.child_args, nodeid],
                               runner=ab.PytestRunner(profile=_needs_profiles(suspects)),
                               tolerance_of=tolerance_of,
                               alpha=DEFAULT_ALPHA, max_rounds=options.ab_rounds,
                               budget_seconds=options.ab_budget_seconds, work_dir=Path(work),
                               progress=lambda line: write(f"perf: {line}"),
                               watch=tolerances.__contains__)
    except ab.ABError as exc:
        first_line = str(exc).splitlines()[0]
        session.end_notes.append(f"{nodeid}: A/B failed ({first_line}); re-measured instead")
        return None
    final = ab.confirm_with_ab(suspects, result)
    outcomes = ", ".join(f"{v.metric_id.rpartition('::')[2]} {v.outcome.value}" for v in final)
    return session.redecide(nodeid, final, (
        f"A/B against {full_commit[:12]}, {result.rounds} rounds in "
        f"{result.elapsed_seconds:.0f} s on this machine: {outcomes}"),
        runs=(result.base_runs, result.head_runs))


def _needs_profiles(suspects: list[Verdict]) -> bool:
    """Whether the child runs must run the profiled pass: only it measures device time."""
    return any(split_metric_id(v.metric_id)[1].endswith(DEVICE_TIME_SUFFIX) for v in suspects)
