"""Confirming suspected regressions by A/B on this machine (`harness.gate.ab`), once per run.

The baseline records the commit it was measured at. When this is a git checkout holding that
commit, a test that looks slower than the baseline is not failed at once: it is noted, and at the
end of the run one A/B confirms every such test together. The baseline's tree is checked out in a
temporary worktree, and all suspected tests run there and here alternately, each run a fresh
pytest process. The paired verdict then says, per test, whether this code is slower than the
baseline's code on this host (a regression), whether the baseline's code is just as slow here
(the environment changed), or neither.

One A/B for the whole run, not one per test: a fresh runner of the fleet typically suspects a
few tests (its host differs from the ones that recorded the baseline), and each child process
pays its start-up (torch, CUDA, collection: 3-10 s on an H200 host) once for all of them instead
of once per test. The end-of-run A/B is a test item of its own (`ABConfirmation`), so it is
reported, timed and failed like one, after every measured test.

Where no A/B is possible the caller re-measures each test after a pause, and the run's notes say
why.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.gate import ab, machine, report
from harness.gate.explanation import PROFILE_METRIC_SUFFIX
from harness.gate.formatting import format_percent
from harness.gate.paired import MIN_ROUNDS
from harness.gate.results import Metric, split_metric_id
from harness.gate.session import Decision, PerfSession
from harness.gate.suspects import undecided_by_ab
from harness.gate.verdict import DEFAULT_ALPHA, Verdict

# Rounds the notes suggest for settling what the A/B left undecided: at alpha 0.01 the paired
# t-test detects half the time a change of t(0.99, n-1) / sqrt(n) standard deviations of the
# rounds' log ratios: 4.0 with 3 rounds, 1.7 with 5, 0.9 with 10.
SETTLE_ROUNDS = 10

# The node id of the end-of-run A/B item (not a path: it belongs to no test file).
CONFIRMATION_NODEID = "perf::ab-confirmation"

# Seconds a child run takes beyond its tests (Python, torch, CUDA, collection, the profiler), on
# average over the rounds: a child running one 0.8 s GEMM test took 8.5-10.2 s while compiling its
# Python afresh and 4.0 s from the A/B's bytecode cache (`harness.gate.ab.BYTECODE_DIRECTORY`;
# fresh H200, 2026-12-03), so three rounds of two children average about 6 s each.
CHILD_STARTUP_SECONDS = 6.0


@dataclass(frozen=True)
class ABCheckout:
    """Where an A/B can run: the git checkout, the rootdir's place inside it, and the
    baseline's commit (resolved to its full hash)."""

    repo: Path
    inside: Path
    commit: str


def ab_checkout(session: PerfSession, rootdir: Path) -> ABCheckout | str | None:
    """Where A/B against the reference's commit can run; None when no A/B is wanted (no
    commit recorded, --perf-confirm remeasure); else the reason it cannot run here (not a git
    checkout, the commit missing), for the run's notes."""
    commit = session.ab_base_commit()
    if commit is None:
        return None
    repo = ab.repository_root(rootdir)
    try:
        inside = None if repo is None else rootdir.resolve().relative_to(repo.resolve())
    except ValueError:  # a rootdir reached through a link from outside the checkout
        inside = None
    if repo is None or inside is None:
        return f"no A/B ({rootdir} is not inside a git checkout); re-measured instead"
    try:
        full_commit = ab.resolve_commit(repo, commit)
    except ab.ABError:
        return (f"no A/B (the baseline's commit {commit[:12]} is not in this checkout; "
                f"`git fetch` it for A/B); re-measured instead")
    return ABCheckout(repo=repo, inside=inside, commit=full_commit)


class ABConfirmation(pytest.Item):
    """The run's last item: one A/B of every test that looked worse than the baseline
    (`PendingConfirmations`). It passes when none did, or when A/B cleared them all; it fails
    with each confirmed regression's report otherwise."""

    def __init__(self, *, pending: PendingConfirmations, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pending = pending

    def runtest(self) -> None:
        decisions = self.pending.confirm()
        failed = {nodeid: d for nodeid, d in decisions.items() if d.outcome == "failed"}
        if failed:
            pytest.fail("\n\n".join([
                f"perf: {len(failed)} of the {len(decisions)} suspected test(s) failed after "
                f"A/B: {', '.join(failed)}", *(d.message for d in failed.values())]),
                pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, "perf: A/B confirmation of the suspected regressions"


class PendingConfirmations:
    """The tests of this run that a first verdict suspects, waiting for the end-of-run A/B."""

    def __init__(self, session: PerfSession, checkout: ABCheckout, rootdir: Path,
                 write: Callable[[str], None],
                 durations: Mapping[str, float] | None = None) -> None:
        self.session = session
        self.checkout = checkout
        self.rootdir = rootdir
        self.write = write
        # Seconds each test's call took in this run: what it costs in a child run.
        self.durations = {} if durations is None else durations
        self.decisions: dict[str, Decision] = {}
        self.done = False

    def add(self, nodeid: str, decision: Decision) -> None:
        """Note a suspected test; its first verdict stands until the A/B replaces it."""
        self.decisions[nodeid] = decision
        self.write(f"perf: {nodeid}: {len(decision.suspects)} metric(s) look worse than the "
                   f"baseline; the A/B at the end of the run ({CONFIRMATION_NODEID}) decides")

    def unconfirmed_note(self) -> str | None:
        """What the run's notes say when it ended before the A/B (e.g. -x after a failure)."""
        if self.done or not self.decisions:
            return None
        failed = sum(d.outcome == "failed" for d in self.decisions.values())
        return (f"{len(self.decisions)} suspected test(s) were not confirmed: the run ended "
                f"before {CONFIRMATION_NODEID}, and their first verdicts ({failed} of them "
                f"failures) were not reported as failures: {', '.join(self.decisions)}")

    def confirm(self) -> dict[str, Decision]:
        """Run the A/B and return every pending test's decision after it (its paired verdicts
        replace the suspected ones). Where the A/B cannot run, every pending test keeps its
        first decision (a failure stays one), and the notes say why."""
        self.done = True
        self._leave_out_the_machine()
        if not self.decisions:
            return {}
        left_out = self._fit_the_budget()
        try:
            decisions = {**self._run(), **left_out}
        except ab.ABError as exc:
            first_line = str(exc).splitlines()[0]
            self.session.end_notes.append(f"A/B failed ({first_line}); the first verdicts of "
                                          f"{', '.join(self.decisions)} stand")
            decisions = {**self.decisions, **left_out}
        self.session.failed_tests |= {nodeid for nodeid, d in decisions.items()
                                      if d.outcome == "failed"}
        return decisions

    def _leave_out_the_machine(self) -> None:
        """Drop the suspects that only the fleet's wider tolerance let pass and that are no
        worse than this machine's other device-bound metrics (`harness.gate.machine`): the
        chip, not the code. A test left without suspects keeps its first verdict, a pass."""
        offset, peers = machine.machine_offset(self.session.verdicts)
        by_id = {v.metric_id: v for v in self.session.verdicts}
        dropped: list[str] = []
        for nodeid, decision in list(self.decisions.items()):
            keep = tuple(mid for mid in decision.suspects
                         if not by_id[mid].worse_on_one_machine
                         or machine.stands_out(by_id[mid], offset))
            dropped += [mid for mid in decision.suspects if mid not in keep]
            if keep or decision.outcome == "failed":
                self.decisions[nodeid] = dataclasses.replace(decision, suspects=keep)
            else:
                del self.decisions[nodeid]
        if dropped:
            self.session.end_notes.append(
                f"{len(dropped)} metric(s) worse than one machine's tolerance but within the "
                f"fleet's were left out of the A/B: this machine reads its {peers} device-bound "
                f"metrics {format_percent(math.expm1(offset), signed=True, space=False)} from "
                f"the baseline (median, worse positive), and they do not stand out from that: "
                f"{', '.join(dropped)}")

    def _fit_the_budget(self) -> dict[str, Decision]:
        """Keep the tests whose A/B fits --perf-ab-budget, and return the others, which keep
        their first decisions (`fit_budget`); the notes name them and the command that
        confirms them."""
        options = self.session.options
        chosen, estimate = fit_budget(
            [(nodeid, d.outcome == "failed", self.durations.get(nodeid, 0.0))
             for nodeid, d in self.decisions.items()], options.ab_budget_seconds)
        left_out = {n: d for n, d in self.decisions.items() if n not in chosen}
        if left_out:
            self.decisions = {n: d for n, d in self.decisions.items() if n in chosen}
            self.session.end_notes.append(
                f"{len(left_out)} suspected test(s) left out of the A/B, whose "
                f"{MIN_ROUNDS} rounds with them would take about {estimate:.0f} s, beyond "
                f"--perf-ab-budget={options.ab_budget_seconds:g}; their first verdicts stand. "
                f"Confirm them with a larger budget or `python -m harness ab "
                f"{self.checkout.commit[:12]} -- {' '.join(left_out)}`")
        return left_out

    def _run(self) -> dict[str, Decision]:
        session, checkout, options = self.session, self.checkout, self.session.options
        nodeids = list(self.decisions)
        suspects = {nodeid: [v for v in session.verdicts if v.metric_id in d.suspects]
                    for nodeid, d in self.decisions.items()}
        # Two runs on one machine: the fleet's spread between machines does not apply.
        tolerances = {v.metric_id: v.one_machine_tolerance
                      for vs in suspects.values() for v in vs}

        def tolerance_of(metric_id: str, metric: Metric) -> float:
            return tolerances.get(metric_id, min(tolerances.values()))

        self.write(f"perf: A/B of {len(nodeids)} suspected test(s) ({len(tolerances)} "
                   f"metric(s)) against the baseline's commit {checkout.commit[:12]} on this "
                   f"machine, up to {options.ab_rounds} rounds or {options.ab_budget_seconds:g} s")
        with tempfile.TemporaryDirectory(prefix="perf-ab-runs-") as work, \
                ab.worktree(checkout.repo, checkout.commit) as (full_commit, base_repo):
            base = ab.Side("base", full_commit, base_repo / checkout.inside)
            head = ab.Side("head", "working tree", self.rootdir)
            profile = _needs_profiles([v for vs in suspects.values() for v in vs])
            result = ab.run_ab(base, head, [*options.child_args, *nodeids],
                               runner=ab.PytestRunner(profile=profile),
                               tolerance_of=tolerance_of, alpha=DEFAULT_ALPHA,
                               max_rounds=options.ab_rounds,
                               budget_seconds=options.ab_budget_seconds, work_dir=Path(work),
                               progress=lambda line: self.write(f"perf: {line}"),
                               watch=tolerances.__contains__)
        decisions = {}
        undecided = []
        for nodeid in nodeids:
            final = ab.confirm_with_ab(suspects[nodeid], result)
            if any(undecided_by_ab(v) for v in final):
                undecided.append(nodeid)
            outcomes = ", ".join(f"{v.metric_id.rpartition('::')[2]} {report.outcome_word(v)}"
                                 for v in final)
            decisions[nodeid] = session.redecide(nodeid, final, (
                f"A/B against {full_commit[:12]}, {result.rounds} rounds in "
                f"{result.elapsed_seconds:.0f} s on this machine: {outcomes}"),
                runs=(result.base_runs, result.head_runs))
        if undecided:
            session.end_notes.append(
                f"{len(undecided)} test(s) measured worse by the A/B over rounds that disagree "
                f"too much to confirm a regression, so not failed: "
                f"{', '.join(undecided)}. More rounds settle them: `python -m harness ab "
                f"{full_commit[:12]} --rounds {SETTLE_ROUNDS} -- {' '.join(undecided)}`")
        return decisions


def fit_budget(tests: Sequence[tuple[str, bool, float]],
               budget_seconds: float) -> tuple[list[str], float]:
    """The tests (node id, whether its first verdict failed, seconds its call took) an A/B of
    `budget_seconds` can confirm, and the estimated seconds of an A/B of all of them.

    An A/B runs at least MIN_ROUNDS rounds of two child runs, each CHILD_STARTUP_SECONDS plus
    its tests. Failed tests go first (each fails the build unless the A/B clears it), cheaper
    ones first within; at least one test is always confirmed."""
    def rounds_seconds(tests_seconds: float) -> float:
        return MIN_ROUNDS * 2 * (CHILD_STARTUP_SECONDS + tests_seconds)

    order = sorted(tests, key=lambda test: (not test[1], test[2]))
    chosen: list[str] = []
    total = 0.0
    for nodeid, _, seconds in order:
        if chosen and rounds_seconds(total + seconds) > budget_seconds:
            break
        chosen.append(nodeid)
        total += seconds
    return chosen, rounds_seconds(sum(seconds for _, _, seconds in tests))


def _needs_profiles(suspects: list[Verdict]) -> bool:
    """Whether the child runs must run the profiled pass: only it measures device time (every
    profiled metric is named `<name>_device_time`, or `device_time` for a step)."""
    return any(split_metric_id(v.metric_id)[1].endswith(PROFILE_METRIC_SUFFIX)
               for v in suspects)
