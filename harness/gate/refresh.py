"""What a baseline refresh (--perf-update-baselines) writes, and when it must not write.

The refresh merges: the metrics of every test whose body ran and passed this time replace that
test's old metrics (a metric the test no longer records is dropped); metrics of tests that did
not run (deselected, skipped) are kept from the old baseline. The merged file carries this run's
environment. With --perf-add-run each metric also carries the old baseline's recorded runs of it
plus this run (`harness.gate.fleet`). Pure functions of the run's results: the session
(`harness.gate.session`) owns the state and the writing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.gate.fleet import RunSummary
from harness.gate.results import Metric, RunResults, split_metric_id


def merged_baseline(reference: RunResults | None, new: RunResults, *, passed_tests: set[str],
                    add_run: bool) -> RunResults:
    """`new` (this run's results as a baseline) with the metrics of `reference` (the old
    baseline) that no test of this run measured or passed; see the module doc."""
    kept: dict[str, Metric] = {}
    if reference is not None:
        measured_now = passed_tests | {split_metric_id(mid)[0] for mid in new.metrics}
        kept = {mid: m for mid, m in reference.metrics.items()
                if split_metric_id(mid)[0] not in measured_now}
    measured = new.metrics
    if add_run:
        measured = {mid: with_runs(reference, mid, metric, new.environment, new.created)
                    for mid, metric in measured.items()}
    new.metrics = {**kept, **measured}
    return new


def with_runs(reference: RunResults | None, mid: str, metric: Metric,
              environment: dict[str, Any], created: str) -> Metric:
    """`metric` carrying the old baseline's runs of it and this run (--perf-add-run); an old
    baseline metric without runs counts as one run, recorded on its own host."""
    old = None if reference is None else reference.metrics.get(mid)
    earlier: tuple[RunSummary, ...] = ()
    if reference is not None and old is not None:
        earlier = old.runs or (run_summary(old, reference.environment, reference.created),)
    return metric.with_changes(runs=(*earlier, run_summary(metric, environment, created)))


def run_summary(metric: Metric, environment: dict[str, Any], created: str) -> RunSummary:
    """One run of `metric` for a baseline's runs: its statistics, the host it ran on, and its
    device profile (the per-run spread of its kernels explains a regression later)."""
    host = environment.get("hostname") or "unknown host"
    record = environment.get("host")
    cpu = record.get("cpu_model") if isinstance(record, dict) else None
    return RunSummary(median=metric.median, spread=metric.spread, count=metric.count,
                      host=f"{host} ({cpu})" if cpu else str(host), created=created,
                      profile=metric.profile)


def refusal(path: Path, metrics: Mapping[str, Metric], *, failed_tests: set[str], run_ok: bool,
            force: bool) -> str | None:
    """Why this run must not become the baseline at `path`, or None when it may (or `force`,
    --perf-force): a failed test, a run that did not complete, a metric measured unreliably."""
    if force:
        return None
    problems = []
    if failed_tests:
        problems.append(f"{len(failed_tests)} test(s) failed: {', '.join(sorted(failed_tests))}")
    elif not run_ok:
        problems.append("the run did not complete cleanly (interrupted or errors)")
    unreliable = [mid for mid, m in metrics.items() if not m.reliable]
    if unreliable:
        problems.append(f"{len(unreliable)} metric(s) were measured unreliably: "
                        f"{', '.join(unreliable)}")
    if not problems:
        return None
    return (f"baseline {path} not written: {'; '.join(problems)}. Fix and "
            f"re-run, or pass --perf-force to record these numbers anyway")
