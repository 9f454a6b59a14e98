"""A/B on one machine: the same tests of two code trees, run alternately in fresh processes, judged
round by round (`harness.gate.paired`).

A baseline recorded on another machine, or on this one another day, mixes what the code costs with
what the host does. Running the baseline's own commit here, interleaved with the code under test,
leaves only the code: both sides meet the same host, driver, torch and moment. Each run is a
separate `pytest` process in its tree (a fresh CUDA context and allocator, as in the nightly
itself) that saves its raw samples with `--perf-save` against an empty baselines directory, so the
child only measures and never judges, waits to confirm or writes a baseline.

The order alternates ABBA... so that a drift over the rounds (a GPU warming up, a neighbour
starting) does not favour either side, and the rounds stop at `max_rounds` or when the next round
would overrun the time budget, never below `MIN_ROUNDS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness.checks import require_positive, require_positive_int
from harness.gate import store
from harness.gate.formatting import format_percent
from harness.gate.paired import MIN_ROUNDS, PairedOutcome, PairedVerdict, paired_verdict
from harness.gate.results import Metric, RunResults
from harness.gate.verdict import AB_RULE, Outcome, Verdict
from harness.gate.wall_time import defer_paired

# Seconds a git command may take before the A/B step gives up on it (a worktree of a large
# repository is a checkout of every file: tens of seconds at most on a runner's disk).
GIT_TIMEOUT_SECONDS = 300.0

# Seconds one child run may take: the whole GPU suite runs in 1-2 minutes on an H200, so 30
# minutes only stops a run that hangs.
CHILD_TIMEOUT_SECONDS = 1800.0

# Set in the environment of every child run: the child only measures, so its plugin skips what
# only a judged run needs (the host calibration of its environment record).
CHILD_RUN_VARIABLE = "PERF_HARNESS_AB_CHILD"
# Set to "1" in a child run that needs no profiled pass: a confirmation whose suspects are all
# wall-clock metrics. The pass (the profiler's start, ~5 s in a fresh process on an H200, and
# 0.5-2 s per measurement) is a third to a half of such a child run; the kernel diff then
# compares the stored runs' profiles with this run's instead of the A/B rounds'.
NO_PROFILE_VARIABLE = "PERF_HARNESS_AB_NO_PROFILE"
# The directory, inside the A/B's work directory, where child runs keep their compiled Python when
# the caller's environment forbids writing bytecode (PYTHONDONTWRITEBYTECODE, as some CI images
# set): every child would otherwise compile torch and the tests from source again. A child running
# one GEMM test took 8.5-10.2 s compiling afresh and 4.0 s with this cache warm (fresh H200,
# 2026-12-03); the cache lives and dies with the A/B, so nothing is written beside any source.
BYTECODE_DIRECTORY = "bytecode"
# Lines of a failed child run's output shown in the error: enough for pytest's short summary.
OUTPUT_TAIL_LINES = 40
# Share of its tolerance a watched metric may measure worse by and still stop the rounds early
# as not worse. At the full tolerance a real 3% slowdown (2% tolerance, run medians 0.8% apart)
# read under 2% after three rounds one time in twelve and stopped there, called unchanged; at
# half, 3% was confirmed in 90% of 1000 simulated A/Bs instead of 86%, and an unchanged metric
# took 3.09 rounds instead of 3.0 (the paired verdict on normal run medians, 5 rounds at most).
EARLY_NOT_WORSE_SHARE = 0.5


class ABError(ValueError):
    """The A/B comparison could not run (no git, an unknown ref, a child run that failed); a
    ValueError, as every problem a user can fix is in this package."""


class TreeRunner(Protocol):
    """Runs the pytest arguments in one code tree and returns the results that run saved."""

    def __call__(self, tree: Path, pytest_args: Sequence[str], save_path: Path) -> RunResults:
        ...


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a label ("base", "head"), what it is (a commit or "working
    tree") and the directory its tests run in."""

    label: str
    ref: str
    tree: Path


@dataclass
class ABResult:
    """Everything an A/B comparison measured, and its paired verdict per metric id."""

    base: Side
    head: Side
    base_runs: list[RunResults] = field(default_factory=list)
    head_runs: list[RunResults] = field(default_factory=list)
    verdicts: dict[str, PairedVerdict] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return min(len(self.base_runs), len(self.head_runs))

    @property
    def regressions(self) -> list[PairedVerdict]:
        return [v for v in self.verdicts.values() if v.worse]


def run_ab(base: Side, head: Side, pytest_args: Sequence[str], *, runner: TreeRunner,
           tolerance_of: Callable[[str, Metric], float], alpha: float, max_rounds: int,
           budget_seconds: float, work_dir: Path,
           clock: Callable[[], float] = time.monotonic,
           progress: Callable[[str], None] = lambda line: None,
           watch: Callable[[str], bool] | None = None) -> ABResult:
    """Run base and head alternately (ABBA...) and judge every metric both sides measured in every
    round. `tolerance_of(metric_id, metric)` gives a metric's tolerance (the gate's rules).

    With `watch` (the metric ids a confirmation is about), the rounds also stop once every watched
    metric is decided (`settled`): a regression confirmed early needs its p-value below alpha
    divided by the number of looks, so stopping early never raises the false-alarm rate, and a
    metric that is not worse must measure worse by at most EARLY_NOT_WORSE_SHARE of its
    tolerance, or better."""
    require_positive_int("max_rounds", max_rounds)
    require_positive("budget_seconds", budget_seconds)
    if max_rounds < MIN_ROUNDS:
        raise ValueError(f"max_rounds must be at least {MIN_ROUNDS} for a paired verdict, "
                         f"got {max_rounds}")
    result = ABResult(base=base, head=head)
    start = clock()
    for index in range(max_rounds):
        elapsed = clock() - start
        per_round = elapsed / index if index else 0.0
        if index >= MIN_ROUNDS and elapsed + per_round > budget_seconds:
            progress(f"A/B: stopping after {index} rounds: another would pass the "
                     f"{budget_seconds:g} s budget")
            break
        order = (base, head) if index % 2 == 0 else (head, base)
        for side in order:
            save_path = work_dir / f"{side.label}-{index + 1}.json"
            runs = result.base_runs if side is base else result.head_runs
            runs.append(runner(side.tree, pytest_args, save_path))
        progress(f"A/B round {index + 1}/{max_rounds} ({order[0].label} first): "
                 f"{_round_summary(result)}; {clock() - start:.0f} s so far")
        if watch is not None and index + 1 >= MIN_ROUNDS and index + 1 < max_rounds:
            verdicts = judge_rounds(result.base_runs, result.head_runs,
                                    tolerance_of=tolerance_of, alpha=alpha)
            if settled(verdicts, watch, alpha=alpha, looks=max_rounds - MIN_ROUNDS + 1):
                progress(f"A/B: every watched metric is decided after {index + 1} rounds")
                break
    result.elapsed_seconds = clock() - start
    result.verdicts = judge_rounds(result.base_runs, result.head_runs,
                                   tolerance_of=tolerance_of, alpha=alpha)
    return result


def settled(verdicts: dict[str, PairedVerdict], watch: Callable[[str], bool], *, alpha: float,
            looks: int) -> bool:
    """Whether every watched metric measured so far is decided, so that more rounds are not
    needed. A watched metric is a suspect that a confirmation asks one question of: is head
    worse? It is decided when worse with p below alpha / looks (the Bonferroni bound over the
    looks, rounds MIN_ROUNDS..max_rounds, keeps the chance of any early false confirmation at or
    below alpha, as if only one look were taken), when deterministic, or when it measured worse
    by at most EARLY_NOT_WORSE_SHARE of its tolerance, better by any amount included: a change
    just inside the tolerance after few rounds may be a real one read low, a better one never
    becomes a regression worth the rounds."""
    watched = [v for mid, v in verdicts.items() if watch(mid)]
    if not watched:
        return False
    for verdict in watched:
        if verdict.outcome is PairedOutcome.REGRESSION:
            if verdict.p_value is not None and verdict.p_value >= alpha / looks:
                return False
            continue
        if verdict.change is None:  # fewer than MIN_ROUNDS rounds
            return False
        if verdict.p_value is None:
            continue  # deterministic: the same value in every run of each side
        worse_by = verdict.change if verdict.better == "lower" else -verdict.change
        if worse_by > EARLY_NOT_WORSE_SHARE * verdict.tolerance:
            return False
    return True


def judge_rounds(base_runs: Sequence[RunResults], head_runs: Sequence[RunResults], *,
                 tolerance_of: Callable[[str, Metric], float],
                 alpha: float) -> dict[str, PairedVerdict]:
    """The paired verdict of every metric id present in every run of both sides; the device
    time of a kernel-bound call follows its wall time (`harness.gate.wall_time`)."""
    runs = list(base_runs) + list(head_runs)
    if not base_runs or len(base_runs) != len(head_runs):
        raise ValueError(f"base and head need the same number of runs, at least one; got "
                         f"{len(base_runs)} and {len(head_runs)}")
    common = set.intersection(*(set(run.metrics) for run in runs))
    verdicts: dict[str, PairedVerdict] = {}
    for mid in sorted(common):
        head_metric = head_runs[-1].metrics[mid]
        verdicts[mid] = paired_verdict(
            mid, head_metric.better,
            [run.metrics[mid].median for run in base_runs],
            [run.metrics[mid].median for run in head_runs],
            tolerance=tolerance_of(mid, head_metric), alpha=alpha)
    return defer_paired(verdicts, head_runs[-1].metrics)


@contextlib.contextmanager
def worktree(repo: Path, ref: str) -> Iterator[tuple[str, Path]]:
    """A temporary `git worktree` of `ref` (detached): yields (commit, directory); removed after.

    The commit is resolved first, so an unknown ref is an `ABError` naming it, before anything is
    checked out."""
    commit = resolve_commit(repo, ref)
    with tempfile.TemporaryDirectory(prefix="perf-ab-") as parent:
        directory = Path(parent) / commit[:12]
        _git(repo, "worktree", "add", "--detach", str(directory), commit)
        try:
            yield commit, directory
        finally:
            with contextlib.suppress(ABError):
                _git(repo, "worktree", "remove", "--force", str(directory))
            with contextlib.suppress(ABError):
                _git(repo, "worktree", "prune")


def resolve_commit(repo: Path, ref: str) -> str:
    """The full commit hash `ref` names in `repo`; an `ABError` that says how to fix it else."""
    if not ref or ref.startswith("-"):
        raise ABError(f"{ref!r} is not a git revision; give a branch, tag or commit")
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                what=f"{ref!r} is not a commit in {repo}; fetch it first (`git fetch origin "
                     f"{ref}`) or give another branch, tag or commit").strip()


def repository_root(directory: Path) -> Path | None:
    """The top of the git checkout holding `directory`, or None when it is not in one."""
    try:
        return Path(_git(directory, "rev-parse", "--show-toplevel").strip())
    except ABError:
        return None


class PytestRunner:
    """Runs pytest in a tree as a child process and loads the results it saved.

    A tree that carries its own `harness/` package (this project itself, an old commit of it)
    measures with its own harness: the tree goes first on PYTHONPATH and plugin autoloading is
    off, so the installed plugin of another version is not loaded beside the tree's own. Any
    other project measures with the installed plugin. Where the caller writes no bytecode, the
    children share one cache of it in the A/B's work directory (BYTECODE_DIRECTORY), so that only
    the first child of each tree compiles its sources.
    """

    def __init__(self, python: str = sys.executable, *,
                 timeout_seconds: float = CHILD_TIMEOUT_SECONDS, profile: bool = True) -> None:
        self.python = python
        self.timeout_seconds = timeout_seconds
        self.profile = profile

    def __call__(self, tree: Path, pytest_args: Sequence[str], save_path: Path) -> RunResults:
        empty_baselines = save_path.parent / "no-baselines"
        empty_baselines.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env[CHILD_RUN_VARIABLE] = "1"
        if not self.profile:
            env[NO_PROFILE_VARIABLE] = "1"
        if env.get("PYTHONDONTWRITEBYTECODE"):
            env.pop("PYTHONDONTWRITEBYTECODE")
            env["PYTHONPYCACHEPREFIX"] = str(save_path.parent / BYTECODE_DIRECTORY)
        if (tree / "harness" / "__init__.py").is_file():
            env["PYTHONPATH"] = os.pathsep.join(
                [str(tree), *filter(None, [env.get("PYTHONPATH")])])
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        # The child only measures: no baseline to judge against, and ini keys that would make
        # it judge strictly or write a baseline are overridden.
        command = [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-o", "perf_strict=false", "-o", "perf_update_baselines=false",
                   *pytest_args, f"--perf-save={save_path}",
                   f"--perf-baselines={empty_baselines}"]
        try:
            done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                                  timeout=self.timeout_seconds, check=False)
        except subprocess.TimeoutExpired:
            raise ABError(f"pytest in {tree} did not finish within {self.timeout_seconds:g} s: "
                          f"{' '.join(command)}") from None
        if done.returncode != 0 or not save_path.is_file():
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-OUTPUT_TAIL_LINES:])
            raise ABError(f"pytest in {tree} exited with {done.returncode} and saved "
                          f"{'nothing' if not save_path.is_file() else 'results'}; the tests "
                          f"must pass there to be compared:\n{tail}")
        return store.load_results(save_path)


def _round_summary(result: ABResult) -> str:
    """One line: how many metrics each side measured in the last round."""
    base = len(result.base_runs[-1].metrics) if result.base_runs else 0
    head = len(result.head_runs[-1].metrics) if result.head_runs else 0
    return f"{base} metric(s) base, {head} head"


def _git(repo: Path, *args: str, what: str | None = None) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_SECONDS, check=False)
    except FileNotFoundError:
        raise ABError("git is not installed, so the baseline's commit cannot be checked out; "
                      "install git or compare without A/B") from None
    except subprocess.TimeoutExpired:
        raise ABError(f"`git {' '.join(args)}` took longer than {GIT_TIMEOUT_SECONDS:g} s "
                      f"in {repo}") from None
    if done.returncode != 0:
        raise ABError(what or f"`git {' '.join(args)}` failed in {repo}: "
                              f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def confirm_with_ab(first: Sequence[Verdict], result: ABResult) -> list[Verdict]:
    """The final verdicts of metrics a first run suspected, after A/B on this machine.

    Confirmed (head worse than base here): REGRESSION, with the paired figures. Not confirmed:
    ENVIRONMENT_CHANGED when the baseline's own code, measured here, is also worse than the
    stored baseline beyond the tolerance (the host, driver or torch moved, not the code),
    UNCHANGED otherwise (the first run was a disturbance). Rounds that disagree about a worse
    head: UNRELIABLE with rule AB_RULE, not confirmed and not failed even under --perf-strict
    (`harness.gate.suspects.undecided_by_ab`); about a better one: not confirmed, as above.
    A metric the base side never measured keeps its first verdict, saying so.

    A regression or an unchanged metric is shown as the A/B measured it: its "baseline" and
    "measured" are the run medians of base and head on this machine (`_as_rounds`), so that
    their medians and the change beside them come from the same comparison."""
    final: list[Verdict] = []
    base_ref = result.base.ref[:12]
    for verdict in first:
        paired = result.verdicts.get(verdict.metric_id)
        if paired is None or verdict.baseline is None:
            final.append(dataclasses.replace(verdict, reason=(
                f"{verdict.reason} [A/B could not confirm it: the baseline's code ({base_ref}) "
                f"does not record this metric]")))
            continue
        rounds = f"A/B, {paired.rounds} rounds against {base_ref} on this machine"
        if paired.outcome is PairedOutcome.REGRESSION:
            final.append(dataclasses.replace(
                _as_rounds(verdict, paired, base_ref), outcome=Outcome.REGRESSION,
                change=paired.change, tolerance=paired.tolerance, machine_tolerance=None,
                p_value=paired.p_value, rule=AB_RULE,
                reason=f"confirmed by {rounds}: {paired.reason}"))
            continue
        if paired.outcome is PairedOutcome.UNDECIDED and not _measured_better(paired):
            final.append(dataclasses.replace(
                verdict, outcome=Outcome.UNRELIABLE, rule=AB_RULE,
                reason=f"{verdict.reason}; {rounds} could not decide: {paired.reason}"))
            continue
        stored = verdict.baseline.median
        base_here = statistics.median(paired.base_values)
        drift = (base_here - stored) / abs(stored) if stored else 0.0
        base_worse = drift > 0 if verdict.measured.better == "lower" else drift < 0
        if base_worse and abs(drift) > verdict.tolerance:
            moved = ", ".join(sorted(verdict.environment_differences)) or "nothing recorded"
            final.append(dataclasses.replace(
                verdict, outcome=Outcome.ENVIRONMENT_CHANGED, rule=AB_RULE,
                reason=(f"{verdict.reason}; but the baseline's own code measured "
                        f"{format_percent(drift, signed=True, space=False)} against the "
                        f"stored baseline here too ({rounds}: {paired.reason}); what differs "
                        f"from the baseline's environment: {moved}")))
        else:
            final.append(dataclasses.replace(
                _as_rounds(verdict, paired, base_ref), outcome=Outcome.UNCHANGED,
                change=paired.change, tolerance=paired.tolerance, machine_tolerance=None,
                p_value=paired.p_value, rule=AB_RULE,
                reason=f"{verdict.reason}; not reproduced by {rounds}: {paired.reason}"))
    return final


def _measured_better(paired: PairedVerdict) -> bool:
    """Whether head measured better than base here, however uncertain: a confirmation asks
    only whether head is worse, and rounds that disagree about how much better it is do not
    suggest that (the examples' GEMM device time read -3.0% over 3 rounds with no decision,
    which --perf-strict then failed as unjudged; H200, 2026-12-02)."""
    if paired.change is None:
        return False
    return paired.change < 0 if paired.better == "lower" else paired.change > 0


def _as_rounds(verdict: Verdict, paired: PairedVerdict, base_ref: str) -> Verdict:
    """The verdict with base's and head's run medians on this machine as its "baseline" and
    "measured" metrics (their profiles and notes otherwise kept from the first verdict)."""
    assert verdict.baseline is not None
    base = verdict.baseline.with_changes(samples=paired.base_values, runs=(),
                                         note=f"run medians of {base_ref} on this machine")
    head = verdict.measured.with_changes(samples=paired.head_values,
                                         note="run medians of this code on this machine")
    return dataclasses.replace(verdict, baseline=base, measured=head)


# Paired outcome -> the outcome reports and exit codes use (the same as `compare`'s).
PAIRED_AS_OUTCOME: dict[PairedOutcome, Outcome] = {
    PairedOutcome.REGRESSION: Outcome.REGRESSION,
    PairedOutcome.IMPROVEMENT: Outcome.IMPROVEMENT,
    PairedOutcome.UNCHANGED: Outcome.UNCHANGED,
    PairedOutcome.UNDECIDED: Outcome.UNRELIABLE,
}


def as_verdicts(result: ABResult) -> list[Verdict]:
    """The paired verdicts as report verdicts: "baseline" holds base's run medians, "measured"
    head's, so the tables, markdown and exit codes of `compare` serve A/B unchanged."""
    verdicts = []
    for mid, paired in result.verdicts.items():
        head_metric = result.head_runs[-1].metrics[mid]
        base = dataclasses.replace(head_metric, samples=paired.base_values, tolerance=None,
                                   note="run medians of base")
        head = dataclasses.replace(head_metric, samples=paired.head_values, tolerance=None,
                                   note="run medians of head")
        verdicts.append(Verdict(metric_id=mid, outcome=PAIRED_AS_OUTCOME[paired.outcome],
                                measured=head, baseline=base, change=paired.change,
                                tolerance=paired.tolerance, p_value=paired.p_value,
                                reason=paired.reason, alpha=paired.alpha,
                                rule=AB_RULE))
    return verdicts
