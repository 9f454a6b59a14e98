"""Text reports of verdicts and baseline refreshes: pure functions from data to `str`.

The terminal summary and the failure detail of one metric use tabulate's "simple" format; the
pull-request comment uses GitHub-flavoured markdown. Nothing here measures, judges or writes:
the callers print or post what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate

from harness.gate.formatting import format_change, format_percent, format_value
from harness.gate.results import Metric, RunResults, split_metric_id
from harness.gate.verdict import (
    REPORT_ORDER,
    Outcome,
    Verdict,
    environment_differences,
    sort_for_report,
)

SUMMARY_HEADERS: tuple[str, ...] = ("test", "metric", "baseline", "measured", "change", "verdict")
DEFAULT_MARKDOWN_TITLE = "Performance report"


def render_summary(verdicts: Sequence[Verdict]) -> str:
    """The end-of-run table (test, metric, baseline, measured, change, verdict), regressions
    first, one line per metric; then the counts and how the environment differs from the
    baseline's. Why a verdict was reached is in `render_verdict_detail`."""
    if not verdicts:
        return "perf: no metrics were judged"
    ordered = sort_for_report(verdicts)
    table = tabulate([_summary_row(v) for v in ordered], headers=SUMMARY_HEADERS,
                     tablefmt="simple", disable_numparse=True)
    parts = [table, _counts(ordered)]
    differences = _merged_differences(ordered)
    if differences:
        parts.append("environment differs from the baseline's:\n" + "\n".join(
            f"  {key}: {_shown(old)} -> {_shown(new)}" for key, (old, new) in differences.items()))
    return "\n\n".join(parts)


def render_verdict_detail(verdict: Verdict) -> str:
    """The failure table of one metric: baseline and measured median and spread, sample counts,
    change, tolerance, p-value and rule, then the environment differences."""
    measured, baseline = verdict.measured, verdict.baseline
    unit = measured.unit

    def median(metric: Metric | None) -> str:
        return "" if metric is None else format_value(metric.median, metric.unit)

    def spread(metric: Metric | None) -> str:
        return "" if metric is None else f"{format_percent(metric.spread)} (IQR/median)"

    rows: list[list[str]] = [
        ["median", median(baseline), median(measured)],
        ["spread", spread(baseline), spread(measured)],
        ["samples", "" if baseline is None else str(baseline.count), str(measured.count)],
        ["range", _range(baseline), _range(measured)],
    ]
    if measured.theory is not None:
        rows.append(["theory", "", format_value(measured.theory, unit)])
    rows += [
        ["change", "", format_change(verdict.change) or "n/a"],
        ["tolerance", "", format_percent(verdict.tolerance)],
        ["p-value", "", "n/a" if verdict.p_value is None
         else f"{verdict.p_value:.3g} (alpha {verdict.alpha:g})"],
        ["rule", "", verdict.rule or "n/a"],
    ]
    table = tabulate(rows, headers=["", "baseline", "measured"], tablefmt="simple",
                     disable_numparse=True)
    heading = f"{verdict.metric_id}: {_verdict_word(verdict)}\n  {verdict.reason}"
    parts = [heading, table]
    if verdict.environment_differences:
        parts.append("environment differences:\n" + tabulate(
            [[key, _shown(old), _shown(new)]
             for key, (old, new) in verdict.environment_differences.items()],
            headers=["", "baseline", "measured"], tablefmt="simple", disable_numparse=True))
    else:
        parts.append("environment differences: none recorded")
    return "\n\n".join(parts)


def render_markdown(verdicts: Sequence[Verdict], *, title: str = DEFAULT_MARKDOWN_TITLE) -> str:
    """A pull-request comment: a heading, the counts, a GitHub table (regressions first), the
    reasons of regressions and unreliable verdicts, and the environment differences."""
    lines = [f"### {_markdown_text(title)}", ""]
    if not verdicts:
        lines.append("No metrics were judged.")
        return "\n".join(lines)
    ordered = sort_for_report(verdicts)
    rows = []
    for verdict in ordered:
        row = [_markdown_text(cell) for cell in _summary_row(verdict)]
        if verdict.outcome is Outcome.REGRESSION:
            row[-1] = f"**{row[-1]}**"
        rows.append(row)
    lines += [_counts(ordered), "",
              tabulate(rows, headers=SUMMARY_HEADERS, tablefmt="github", disable_numparse=True)]
    notes = [f"- `{_code_text(v.metric_id)}`: {v.outcome.value}: {_markdown_text(v.reason)}"
             for v in ordered if v.outcome in (Outcome.REGRESSION, Outcome.UNRELIABLE)]
    if notes:
        lines += ["", *notes]
    differences = _merged_differences(ordered)
    if differences:
        lines += ["", "Environment differs from the baseline's:", "",
                  tabulate([[_markdown_text(key), _markdown_text(_shown(old)),
                             _markdown_text(_shown(new))]
                            for key, (old, new) in differences.items()],
                           headers=["key", "baseline", "measured"], tablefmt="github",
                           disable_numparse=True)]
    return "\n".join(lines)


def render_baseline_changes(old: RunResults | None, new: RunResults) -> str:
    """What a baseline refresh changes: old -> new median of every metric, added and removed
    metrics, and how the environment changed."""
    fingerprint = new.fingerprint
    if old is None:
        heading = f"new baseline for {fingerprint}: {_plural(len(new.metrics), 'metric')}"
    else:
        added = len(set(new.metrics) - set(old.metrics))
        removed = len(set(old.metrics) - set(new.metrics))
        kept = len(set(new.metrics) & set(old.metrics))
        heading = (f"baseline for {fingerprint}: {_plural(kept, 'metric')} updated, {added} added, "
                   f"{removed} removed")
    old_metrics = {} if old is None else old.metrics
    rows = []
    for mid in sorted(set(old_metrics) | set(new.metrics)):
        before, after = old_metrics.get(mid), new.metrics.get(mid)
        rows.append([mid, "" if before is None else format_value(before.median, before.unit),
                     "" if after is None else format_value(after.median, after.unit),
                     _refresh_change(before, after)])
    parts = [heading]
    if rows:
        parts.append(tabulate(rows, headers=["metric", "old", "new", "change"],
                              tablefmt="simple", disable_numparse=True))
    if old is not None:
        differences = environment_differences(old.environment, new.environment)
        if differences:
            parts.append("environment changes:\n" + "\n".join(
                f"  {key}: {_shown(a)} -> {_shown(b)}" for key, (a, b) in differences.items()))
    return "\n\n".join(parts)


def _summary_row(verdict: Verdict) -> list[str]:
    nodeid, name = split_metric_id(verdict.metric_id)
    baseline = verdict.baseline
    return [nodeid, name,
            "-" if baseline is None else format_value(baseline.median, baseline.unit),
            format_value(verdict.measured.median, verdict.measured.unit),
            format_change(verdict.change), _verdict_word(verdict)]


def _verdict_word(verdict: Verdict) -> str:
    """The outcome's word, with which way is better where that is needed to read the change."""
    if verdict.outcome in (Outcome.REGRESSION, Outcome.IMPROVEMENT):
        return f"{verdict.outcome.value} ({verdict.measured.better} is better)"
    return str(verdict.outcome.value)


def _counts(verdicts: Iterable[Verdict]) -> str:
    verdicts = list(verdicts)
    counted = {outcome: sum(v.outcome is outcome for v in verdicts) for outcome in Outcome}
    words = {Outcome.REGRESSION: ("regression", "regressions"),
             Outcome.UNRELIABLE: ("unreliable", "unreliable"),
             Outcome.NO_BASELINE: ("without baseline", "without baseline"),
             Outcome.ENVIRONMENT_CHANGED: ("environment changed", "environment changed"),
             Outcome.IMPROVEMENT: ("improvement", "improvements"),
             Outcome.UNCHANGED: ("unchanged", "unchanged")}
    shown = [f"{n} {words[o][0] if n == 1 else words[o][1]}"
             for o, n in sorted(counted.items(), key=lambda item: REPORT_ORDER[item[0]]) if n]
    return f"{', '.join(shown)} ({_plural(len(verdicts), 'metric')})"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _merged_differences(verdicts: Iterable[Verdict]) -> dict[str, tuple[Any, Any]]:
    """The environment differences of all verdicts (usually the same run against one file)."""
    merged: dict[str, tuple[Any, Any]] = {}
    for verdict in verdicts:
        for key, pair in verdict.environment_differences.items():
            merged.setdefault(key, pair)
    return dict(sorted(merged.items()))


def _refresh_change(before: Metric | None, after: Metric | None) -> str:
    if before is None:
        return "added"
    if after is None:
        return "removed"
    if before.unit != after.unit:
        return f"unit {before.unit} -> {after.unit}"
    if before.median == 0:
        return "" if after.median == 0 else "from 0"
    return format_change((after.median - before.median) / abs(before.median))


def _range(metric: Metric | None) -> str:
    if metric is None:
        return ""
    low, high = min(metric.samples), max(metric.samples)
    if low == high:
        return format_value(low, metric.unit)
    return f"{format_value(low, metric.unit)} .. {format_value(high, metric.unit)}"


def _shown(value: Any) -> str:
    return "(absent)" if value is None else str(value)


def _markdown_text(text: str) -> str:
    """Text safe inside a GitHub table cell: pipes escaped, no HTML, on one line."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\n", " "))


def _code_text(text: str) -> str:
    """Text safe inside a markdown code span."""
    return str(text).replace("`", "'").replace("\n", " ")
