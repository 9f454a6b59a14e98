"""`python -m harness baselines list | show | history`: look into the stored baselines.

`list` answers "which hardware has baselines, how many metrics, recorded when and with what";
`show` prints one file's metrics with their spread and tolerance, and the anatomy of each
profiled step; `history` follows one metric's median through
`baselines/history/<fingerprint>/` so a slow drift across refreshes is visible.
Unknown fingerprints and bad files are errors (exit 2) that name the known fingerprints or the file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.gate import report, store
from harness.gate.formatting import format_percent, format_value
from harness.gate.lookup import (
    find_metric_id,
    known_fingerprints,
    load_known_baseline,
    unknown_fingerprint,
)
from harness.gate.results import Metric, RunResults
from harness.gate.store import DEFAULT_DIRECTORY
from harness.gate.tolerance import choose_tolerance


def _environment_value(environment: dict[str, Any], key: str) -> str:
    """A field of `environment.run_environment` as text; "?" for files recorded without it."""
    value = environment.get(key)
    return "?" if value in (None, "") else str(value)


def render_list(directory: Path) -> str:
    """One row per stored fingerprint: metric count, created date, GPU and torch version."""
    rows = []
    for fingerprint in known_fingerprints(directory):
        baseline = load_known_baseline(directory, fingerprint)
        env = baseline.environment
        rows.append([fingerprint, len(baseline.metrics), baseline.created or "?",
                     _environment_value(env, "gpu_name"), _environment_value(env, "torch")])
    if not rows:
        return (f"no baselines in {directory}; record them with "
                f"`pytest -m gpu --perf-update-baselines`")
    table: str = tabulate(rows, headers=["fingerprint", "metrics", "created", "gpu", "torch"])
    return table


def render_show(results: RunResults, source: Path) -> str:
    """A file's header (fingerprint, kind, created) and a row per metric."""
    header = (f"{source}: {results.kind} for {results.fingerprint}, created "
              f"{results.created or '?'}, {len(results.metrics)} metrics")
    rows = []
    for mid, metric in sorted(results.metrics.items()):
        # What the verdict uses without an explicit tolerance: the metric's own or its kind's.
        tolerance = choose_tolerance(metric.kind, own=metric.tolerance)
        rows.append([
            mid,
            format_value(metric.median, metric.unit),
            format_percent(metric.spread),
            metric.count,
            format_percent(tolerance.value) + (" (default)" if tolerance.is_default else ""),
            metric.unit,
            "" if metric.reliable else "unreliable",
        ])
    table = tabulate(rows, headers=["metric id", "median", "spread", "n", "tolerance", "unit",
                                    "note"])
    # The anatomy of every profiled step: where its time went, beside the theory.
    anatomy = report.render_anatomy_table(results.metrics)
    return f"{header}\n\n{table}" + (f"\n\n{anatomy}" if anatomy else "")


def render_history(entries: Sequence[tuple[Path, RunResults]], metric_id: str) -> str:
    """The metric's median in every stored file, oldest first, with the change vs the previous."""
    rows = []
    previous: float | None = None
    described: Metric | None = None
    for path, results in entries:
        metric = results.metrics.get(metric_id)
        if metric is None:
            rows.append([results.created or "?", path.name, "absent", "", "", ""])
            continue
        described = metric
        change = "" if previous in (None, 0) else format_percent(metric.median / previous - 1,
                                                                 signed=True)
        rows.append([results.created or "?", path.name,
                     format_value(metric.median, metric.unit),
                     format_percent(metric.spread), str(metric.count), change])
        previous = metric.median
    about = "" if described is None else f" [{described.unit}, {described.better} is better]"
    table = tabulate(rows, headers=["created", "file", "median", "spread", "n",
                                    "change vs previous"])
    return f"{metric_id}{about}, {len(entries)} files, oldest first\n\n{table}"


def _show_target(directory: Path, target: str) -> tuple[RunResults, Path]:
    path = Path(target)
    # Any existing path but a directory is a file meant here; load_results names a bad one.
    if target.endswith(".json") or (os.path.lexists(path) and not path.is_dir()):
        return store.load_results(path), path
    return load_known_baseline(directory, target), store.baseline_path(directory, target)


def _history(directory: Path, fingerprint: str, query: str) -> str:
    known_fingerprints(directory)  # a clear error for a wrong --dir
    entries = store.history(directory, fingerprint)
    if not entries:
        raise unknown_fingerprint(directory, fingerprint)
    all_ids = {mid for _, results in entries for mid in results.metrics}
    where = f"{directory} ({fingerprint}, {len(entries)} files)"
    return render_history(entries, find_metric_id(all_ids, query, where=where))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands and options of `python -m harness baselines`."""
    dir_help = f"baselines directory (default: {DEFAULT_DIRECTORY})"
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIRECTORY, help=dir_help)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    # --dir is accepted before or after the action; SUPPRESS keeps the parent's default.
    list_parser = actions.add_parser("list", help="stored fingerprints with metric counts, "
                                                  "created dates, GPU and torch")
    list_parser.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)
    show_parser = actions.add_parser("show", help="the metrics of one baseline or results file")
    show_parser.add_argument("target", metavar="FINGERPRINT_OR_PATH",
                             help="a fingerprint in --dir (e.g. nvidia-h100-80gb-hbm3-x1) or "
                                  "a path to a .json baseline or results file")
    show_parser.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)
    history_parser = actions.add_parser("history", help="one metric's median over the "
                                                        "baseline history, oldest first")
    history_parser.add_argument("fingerprint", metavar="FINGERPRINT")
    history_parser.add_argument("metric", metavar="METRIC_ID_OR_SUBSTRING",
                                help="a full metric id or a part that matches only one")
    history_parser.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=dir_help)


def run(args: argparse.Namespace) -> int:
    """Print what the action asks for; user errors are raised as ValueError (exit 2)."""
    directory: Path = args.dir
    if args.action == "list":
        print(render_list(directory))
    elif args.action == "show":
        results, source = _show_target(directory, args.target)
        print(render_show(results, source))
    elif args.action == "history":
        print(_history(directory, args.fingerprint, args.metric))
    else:  # argparse restricts the choices; this guards a new action added without a branch
        raise ValueError(f"action must be list, show or history, got {args.action!r}")
    return 0
