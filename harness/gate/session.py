"""One perf run: its options, environment and reference, the metrics tests record, and what follows.

The pytest plugin is a thin layer over this object: it builds a `PerfSession` from the options,
lets the `perf` fixture record metrics into it, asks it after every test whether the test passes,
fails or is skipped (`conclude_test`), and at the end lets it save the run and refresh the
baseline (`finish`) and print its summary (`summary_lines`). Nothing here imports pytest, the
measurement or torch.distributed, so every decision can be tested directly.

Decisions on one test's metrics, in this order:
  1. any regression                     -> the test fails with the detail table of each (the
                                           plugin first re-measures once: see
                                           `harness.pytest_plugin.run`)
  2. --perf-strict and any metric without a baseline, or measured unreliably
                                        -> the test fails (saying it is not a regression)
  3. any metric without a baseline, or unreliable
                                        -> the test is skipped with the reason: not checked
  4. otherwise (unchanged, improved)    -> the test passes; improvements are listed at the end
Before deciding, the host's share (a step's wall time worse only within what the baseline's
machines measured, its device time held; DataLoader metrics likewise) is judged unchanged and
named at the end (`harness.gate.host_share`), unless --perf-ab-host-bound sends it to A/B.
A metric too noisy to judge whose median moved the better way (`suspects.noisy_improvement`)
counts as neither 2 nor 3: it is reported as unreliable, and nothing in it suggests a regression.
A metric an A/B on this machine measured worse over rounds that disagree
(`suspects.undecided_by_ab`) counts as 3 even under --perf-strict: it was checked, and a
regression needs the A/B's confirmation.

Baseline refresh (--perf-update-baselines) merges this run's metrics into the old baseline, test
by test (`harness.gate.refresh`), under the writers' lock of the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from harness.gate import refresh, report, store, traces
from harness.gate.explanation import explain_verdicts, runs_profiles
from harness.gate.host_share import name_host_shares, note_host_shares
from harness.gate.results import Metric, RunResults, metric_id, split_metric_id
from harness.gate.run_options import PerfOptions
from harness.gate.suspects import noisy_improvement, suspects, undecided_by_ab
from harness.gate.verdict import Outcome, Verdict, judge
from harness.gate.wall_time import defer_to_wall_time
from harness.theory.hardware import GPUSpec

DecisionOutcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Decision:
    """What the perf verdicts make of one test: its outcome and the message that explains it."""

    outcome: DecisionOutcome
    message: str = ""
    # True when the failure is a regression (the plugin then re-measures once to confirm it).
    regression: bool = False
    # Metric ids a confirmation by A/B on this machine checks (`harness.gate.suspects`).
    suspects: tuple[str, ...] = ()


class RankGroup(Protocol):
    """What the session needs of the process group of a torchrun launch
    (`harness.distributed.group.DistributedRun` is one): who reports, and how to launch again."""

    @property
    def reports(self) -> bool:
        """Whether this rank prints, judges and writes (rank 0 only)."""
        ...

    def relaunch_command(self) -> str:
        """The torchrun command of this launch's shape, for messages."""
        ...


def utc_now() -> str:
    """The time stamp stored in results and baselines (ISO 8601, UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PerfSession:
    """The state of one run: what was recorded, what it was judged against, what was decided."""

    def __init__(self, options: PerfOptions, environment: dict[str, Any], *,
                 gpu: GPUSpec | None = None, distributed: RankGroup | None = None) -> None:
        fingerprint = environment.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"environment must hold the hardware 'fingerprint' (a non-empty "
                             f"string), got {fingerprint!r}")
        self.options = options
        self.environment = environment
        self.fingerprint: str = fingerprint
        self.gpu = gpu
        # The process group of a run launched by torchrun, else None.
        self.distributed = distributed
        self.reference: RunResults | None = None
        self.metrics: dict[str, Metric] = {}
        self.gpu_states: dict[str, dict[str, Any]] = {}
        self.verdicts: list[Verdict] = []
        self.failed_tests: set[str] = set()
        self.passed_tests: set[str] = set()
        # Lines for the terminal summary about saving results and writing the baseline.
        self.end_notes: list[str] = []
        # Per test confirmed by A/B: its base and head runs, whose profiles explain it.
        self.ab_runs: dict[str, tuple[list[RunResults], list[RunResults]]] = {}
        # Per test, whether its latest decision was a regression (which traces to keep).
        self.regressed: dict[str, bool] = {}

    # -- the reference ---------------------------------------------------------------------

    @property
    def reference_path(self) -> Path:
        """The file metrics are judged against: the --perf-compare file or this hardware's
        baseline."""
        if self.options.compare_path is not None:
            return self.options.compare_path
        return store.baseline_path(self.options.baselines_dir, self.fingerprint)

    def load_reference(self) -> None:
        """Load the baseline (or --perf-compare file) once; a `store.StoreError` naming the file
        when it is bad or was recorded on other hardware."""
        if self.options.compare_path is None:
            try:
                self.reference = store.load_baseline(self.options.baselines_dir, self.fingerprint)
            except store.UnreadableFileError as exc:
                if not self.options.update_baselines:
                    raise
                # The refresh replaces it (store.update_baseline keeps a copy in the history).
                self.end_notes.append(f"WARNING: the current baseline cannot be read, so this "
                                      f"run replaces it: {exc}")
            return
        path = self.options.compare_path
        reference = store.load_results(path)
        if reference.fingerprint != self.fingerprint:
            raise store.StoreError(
                f"{path}: recorded on hardware {reference.fingerprint!r}, but this run is on "
                f"{self.fingerprint!r}; numbers of other hardware are never compared. Compare "
                f"with results saved on this hardware (--perf-save)")
        self.reference = reference

    # -- recording -------------------------------------------------------------------------

    def check_names_free(self, nodeid: str, names: list[str]) -> None:
        """ValueError when this test already recorded a metric of one of these names."""
        for name in names:
            if metric_id(nodeid, name) in self.metrics:
                raise ValueError(
                    f"metric {name!r} was already recorded by {nodeid}; give each measurement "
                    f"of a test its own name, e.g. perf.time(fn, name='{name}_2') or "
                    f"name_prefix= for perf.train_step / perf.dataloader")

    def record(self, nodeid: str, metric: Metric) -> str:
        """Store one metric of test `nodeid`; returns its metric id. A name clash is an error."""
        if not isinstance(metric, Metric):
            raise ValueError(f"metric must be a harness.gate.results.Metric, got {metric!r}")
        self.check_names_free(nodeid, [metric.name])
        mid = metric_id(nodeid, metric.name)
        self.metrics[mid] = metric
        return mid

    def record_gpu_state(self, nodeid: str, label: str, state: dict[str, Any]) -> None:
        """Keep the GPU state around one measurement of a test, under `<nodeid>::<label>`
        (in memory, for the terminal and the test; see `results`)."""
        self.gpu_states[metric_id(nodeid, label)] = state

    def metrics_of(self, nodeid: str) -> dict[str, Metric]:
        """The metrics recorded by test `nodeid`, by metric id, in recording order."""
        return {mid: m for mid, m in self.metrics.items() if split_metric_id(mid)[0] == nodeid}

    # -- verdicts --------------------------------------------------------------------------

    def conclude_test(self, nodeid: str, *, confirming: bool = False) -> Decision:
        """Judge the metrics test `nodeid` recorded and decide its outcome (see module doc);
        `confirming` judges the re-measurement of a regression (`verdict.judge`)."""
        metrics = self.metrics_of(nodeid)
        if not metrics or self.options.update_baselines:
            return Decision("passed")
        reference_metrics = self.reference.metrics if self.reference is not None else {}
        reference_environment = self.reference.environment if self.reference is not None else None
        verdicts = defer_to_wall_time([
            judge(mid, measured, reference_metrics.get(mid), tolerance=self.options.tolerance,
                  baseline_environment=reference_environment, environment=self.environment,
                  confirming=confirming)
            for mid, measured in metrics.items()])
        if not self.options.ab_host_bound:
            verdicts = name_host_shares(verdicts)
        self.verdicts.extend(verdicts)
        return self.decide(nodeid, verdicts)

    def decide(self, nodeid: str, verdicts: list[Verdict]) -> Decision:
        """The outcome of a test with these verdicts (rules in the module docstring)."""
        found = suspects(verdicts, strict=self.options.strict)
        unreliable = [v for v in verdicts
                      if v.outcome == Outcome.UNRELIABLE and not noisy_improvement(v)]
        regressions = [v for v in verdicts if v.outcome == Outcome.REGRESSION]
        self.regressed[nodeid] = bool(regressions)
        if regressions:
            tables = "\n\n".join([*(report.render_verdict_detail(v) for v in regressions),
                                   *self._explanations(nodeid, verdicts)])
            return Decision("failed", (
                f"perf regression in {nodeid}: {_names(regressions)} worse than "
                f"{self.reference_path} beyond tolerance\n\n{tables}"), regression=True,
                suspects=found.all)
        missing = [v for v in verdicts if v.outcome == Outcome.NO_BASELINE]
        reasons = []
        if missing:
            reasons.append(self._missing_reason(nodeid, missing))
        if unreliable:
            details = "; ".join(f"{_name(v)}: {v.reason}" for v in unreliable)
            reasons.append(f"unreliable, not judged (not a regression): {details}")
        if not reasons:
            return Decision("passed", suspects=found.rechecked)
        unchecked = [v for v in unreliable if not undecided_by_ab(v)]
        if self.options.strict and (missing or unchecked):
            checkable = {*found.noisy, *found.host_sensitive, *found.unreliably_measured}
            clearable = not missing and all(v.metric_id in checkable for v in unchecked)
            return Decision("failed", "perf (--perf-strict: every measured metric must be "
                                          "checked): " + "; ".join(reasons),
                            suspects=found.all if clearable else ())
        return Decision("skipped", "perf: " + "; ".join(reasons),
                        suspects=found.unjudged if not missing else ())

    def _explanations(self, nodeid: str, verdicts: list[Verdict]) -> list[str]:
        """The kernel diff of each regressed step: against the A/B's base runs where A/B
        confirmed it, else against the reference's profiles (its recorded runs' where it has
        several)."""
        runs = self.ab_runs.get(nodeid)
        if runs is not None and not _profiled(runs[0]) and not _profiled(runs[1]):
            # The A/B ran without a profiled pass (its suspects were wall-clock metrics).
            explanations = explain_verdicts(verdicts)
            return [f"{report.render_explanation(e)}\n  profiles compared: the baseline's "
                    f"recorded runs and this run's first measurement (the A/B's runs were "
                    f"not profiled)" for e in explanations]
        explanations = explain_verdicts(
            verdicts, base_profiles=None if runs is None else runs_profiles(runs[0]),
            new_profiles=None if runs is None else runs_profiles(runs[1]))
        return [report.render_explanation(e) for e in explanations]

    def ab_base_commit(self) -> str | None:
        """The commit the reference was recorded at, when A/B may confirm against it: a clean
        checkout's commit, recorded with the reference, and --perf-confirm not "remeasure"."""
        if self.options.confirm == "remeasure" or self.reference is None:
            return None
        if self.distributed is not None:  # ranks would have to start children in lockstep
            return None
        commit = self.reference.environment.get("git_commit")
        dirty = self.reference.environment.get("git_dirty")
        if not isinstance(commit, str) or not commit or dirty is True:
            return None
        return commit

    def redecide(self, nodeid: str, final: list[Verdict], note: str,
                 runs: tuple[list[RunResults], list[RunResults]] | None = None) -> Decision:
        """Replace this test's suspected verdicts with `final` (an A/B's) and decide again;
        `runs` (base's, head's) explain a confirmed regression with their profiles."""
        if runs is not None:
            self.ab_runs[nodeid] = runs
        replaced = {v.metric_id: v for v in final}
        mine = [replaced.get(v.metric_id, v) for v in self.verdicts
                if split_metric_id(v.metric_id)[0] == nodeid]
        self.verdicts = [v for v in self.verdicts
                         if split_metric_id(v.metric_id)[0] != nodeid] + mine
        self.end_notes.append(f"{nodeid}: {note}")
        return self.decide(nodeid, mine)

    def _missing_reason(self, nodeid: str, missing: list[Verdict]) -> str:
        path = self.reference_path
        if self.options.compare_path is not None:
            return (f"no reference for {_names(missing)}: not in the --perf-compare file {path}")
        where = "does not exist" if self.reference is None else "has no entry for it"
        launcher = ("pytest" if self.distributed is None
                    else self.distributed.relaunch_command())
        command = " ".join([launcher, nodeid, "--perf-update-baselines",
                            *self.options.repeat_flags])
        return (f"no baseline for {_names(missing)}: {path} {where}; record it with "
                f"`{command}`")

    def discard_test(self, nodeid: str) -> None:
        """Forget what test `nodeid` recorded and how it was judged, before it is re-measured."""
        self.metrics = {mid: m for mid, m in self.metrics.items()
                        if split_metric_id(mid)[0] != nodeid}
        self.gpu_states = {key: state for key, state in self.gpu_states.items()
                           if split_metric_id(key)[0] != nodeid}
        self.verdicts = [v for v in self.verdicts if split_metric_id(v.metric_id)[0] != nodeid]

    def improvements(self) -> list[Verdict]:
        """The verdicts that improved beyond tolerance: candidates for a baseline refresh."""
        return [v for v in self.verdicts if v.outcome == Outcome.IMPROVEMENT]

    # -- the end of the run ------------------------------------------------------------------

    def results(self, kind: Literal["baseline", "results"] = "results") -> RunResults:
        """This run's metrics with its environment.

        The GPU snapshots around each measurement stay out of the file: clocks and temperatures
        differ between any two runs, and every comparison would list them. What matters from
        them, a throttled measurement, is in the unreliable metric's note.
        """
        return RunResults(kind=kind, fingerprint=self.fingerprint,
                          environment=dict(self.environment), metrics=dict(self.metrics),
                          created=utc_now())

    def baseline_refusal(self, run_ok: bool) -> str | None:
        """Why this run must not become the baseline, or None when it may (or --perf-force)."""
        return refresh.refusal(self.reference_path, self.metrics, failed_tests=self.failed_tests,
                               run_ok=run_ok, force=self.options.force)

    def merged_baseline(self) -> RunResults:
        """The new baseline: this run's metrics over the old baseline's (`refresh`)."""
        return refresh.merged_baseline(self.reference, self.results(kind="baseline"),
                                       passed_tests=self.passed_tests,
                                       add_run=self.options.add_run)

    def write_baseline(self) -> tuple[RunResults | None, RunResults, Path | None]:
        """Write the merged baseline; returns (old baseline, new baseline, where the old went)."""
        def merge(current: RunResults | None) -> RunResults:
            # The baseline as it is now, read under the writers' lock: another run may have
            # written it since this one started, and its metrics must survive.
            self.reference = current
            return self.merged_baseline()

        update = store.update_baseline(self.options.baselines_dir, self.fingerprint, merge)
        return update.old, update.new, update.archived

    def finish(self, *, run_ok: bool) -> bool:
        """Save the results (--perf-save) and refresh the baseline (--perf-update-baselines),
        noting each in `end_notes`; False when a save or write failed or was refused, which
        fails the run. `run_ok`: every test passed. Only the reporting rank writes."""
        if self.distributed is not None and not self.distributed.reports:
            return True  # rank 0 saves and writes for the whole launch
        ok = True
        path = self.options.save_path
        if path is not None:
            try:
                store.save_results(path, self.results())
                self.end_notes.append(f"saved {len(self.metrics)} metric(s) of this run to {path}")
            except store.StoreError as exc:
                self.end_notes.append(f"ERROR: results not saved: {exc}")
                ok = False
        if self.options.update_baselines:
            ok = self._refresh_baseline(run_ok) and ok
        self._keep_traces()
        return ok

    def trace_path(self, nodeid: str, label: str) -> Path | None:
        """Where the profiled pass of measurement `label` writes its trace (--perf-trace), or
        None without the option."""
        directory = self.options.trace_dir
        return None if directory is None else traces.trace_path(directory, nodeid, label,
                                                                 self.environment)

    def _keep_traces(self) -> None:
        """Keep only the traces of tests whose last verdict was a regression (--perf-trace)."""
        directory = self.options.trace_dir
        if directory is not None and not self.options.trace_all:
            tests = {split_metric_id(mid)[0]: False for mid in self.metrics}
            self.end_notes += traces.keep_regressed(directory, {**tests, **self.regressed})

    def _refresh_baseline(self, run_ok: bool) -> bool:
        """Write the merged baseline unless refused; notes what changed. False on failure."""
        if not self.metrics:
            self.end_notes.append(f"no metrics were recorded; {self.reference_path} is unchanged")
            return True
        refusal = self.baseline_refusal(run_ok=run_ok)
        if refusal is not None:
            self.end_notes.append(f"ERROR: {refusal}")
            return False
        try:
            old, new, archived = self.write_baseline()
        except store.StoreError as exc:
            self.end_notes.append(f"ERROR: baseline not written: {exc}")
            return False
        kept = "" if archived is None else f"; the previous one is kept as {archived}"
        self.end_notes.append(f"wrote {self.reference_path} ({len(new.metrics)} metric(s)){kept}")
        self.end_notes.append(report.render_baseline_changes(old, new))
        return True

    def summary_lines(self) -> list[str]:
        """The run's summary: the verdict table (regressions first), improvements, and what was
        saved or written (lines starting "ERROR" are failures); [] when there is nothing."""
        anatomy = report.render_anatomy_table(self.metrics)
        if not (self.verdicts or self.end_notes or anatomy):
            return []
        lines: list[str] = []
        if self.verdicts:
            lines.append(f"against {self.reference_path} (hardware fingerprint {self.fingerprint})")
            lines.append(report.render_summary(self.verdicts))
        if anatomy:
            lines.append(anatomy)
        named = note_host_shares(self.verdicts, self.ab_base_commit())
        if named:
            lines.append(named)
        improved = self.improvements()
        if improved:
            lines.append(f"{len(improved)} metric(s) improved beyond tolerance; if the change is "
                         f"real, refresh the baseline: pytest -m gpu --perf-update-baselines")
        return lines + self.end_notes


def _name(verdict: Verdict) -> str:
    return split_metric_id(verdict.metric_id)[1]


def _names(verdicts: list[Verdict]) -> str:
    return ", ".join(_name(v) for v in verdicts)


def _profiled(runs: Sequence[RunResults]) -> bool:
    """Whether any of these runs measured a kernel table."""
    return any(m.profile is not None for run in runs for m in run.metrics.values())
