"""Text reports of verdicts, baseline refreshes, step anatomies and kernel diffs: pure functions
from data to `str`.

The terminal summary and the failure detail of one metric use tabulate's "simple" format; the
pull-request comment uses GitHub-flavoured markdown. Nothing here measures, judges or writes:
the callers print or post what these functions return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

from harness.gate.anatomy import (
    BACKWARD_FORWARD_RATIO,
    BACKWARD_FORWARD_RATIO_RECOMPUTE,
    CLASS_LABELS,
    CONTRACTION_FLOP_SHARE,
    Anatomy,
)
from harness.gate.anatomy import anatomy as profile_anatomy
from harness.gate.explanation import Explanation
from harness.gate.formatting import format_change, format_percent, format_signed, format_value
from harness.gate.kernel_diff import KernelDiff, Line
from harness.gate.results import Metric, RunResults, split_metric_id
from harness.gate.suspects import undecided_by_ab
from harness.gate.verdict import (
    AB_RULE,
    HOST_BOUND_RULE,
    REPORT_ORDER,
    Outcome,
    Verdict,
    environment_differences,
    sort_for_report,
)

SUMMARY_HEADERS: tuple[str, ...] = ("test", "metric", "baseline", "measured", "change", "verdict")
DEFAULT_MARKDOWN_TITLE = "Performance report"
# What an A/B's unjudged metric is called in tables: "unreliable" would suggest a broken
# measurement, while its runs were sound and only disagreed too much to decide.
UNDECIDED_WORD = "undecided (rounds disagree)"
HOST_BOUND_WORD = "host-bound change"
# The change of a metric an A/B decided is the geometric mean of its rounds' head/base ratios:
# with rounds that differ (a GPU whose clock wanders between processes) it can differ from the
# ratio of the two medians shown beside it (the fp8 GEMM's device time read 1.044 ms -> 976 us,
# +0.1% paired, on a fresh H200, 2026-12-03).
PAIRED_MARK = "(paired)"
PAIRED_NOTE = ("(paired): an A/B's change, the geometric mean of its rounds' head/base ratios "
               "on this machine; the columns beside it are the medians of each side's runs")


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
    if any(_paired(v) for v in ordered):
        parts.append(PAIRED_NOTE)
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
    if any(_paired(v) for v in ordered):
        lines += ["", _markdown_text(PAIRED_NOTE)]
    notes = [f"- `{_code_text(v.metric_id)}`: {_verdict_word(v)}: {_markdown_text(v.reason)}"
             for v in _with_reasons(ordered)]
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
    change = format_change(verdict.change)
    if _paired(verdict):
        change += f" {PAIRED_MARK}"
    return [nodeid, name,
            "-" if baseline is None else format_value(baseline.median, baseline.unit),
            format_value(verdict.measured.median, verdict.measured.unit),
            change, _verdict_word(verdict)]


def _paired(verdict: Verdict) -> bool:
    """Whether the verdict's change is an A/B's paired change (not the ratio of its columns)."""
    return verdict.rule == AB_RULE and verdict.change is not None


def _verdict_word(verdict: Verdict) -> str:
    """The outcome's word, with which way is better where that is needed to read the change."""
    if verdict.outcome in (Outcome.REGRESSION, Outcome.IMPROVEMENT):
        return f"{verdict.outcome.value} ({verdict.measured.better} is better)"
    return outcome_word(verdict)


def outcome_word(verdict: Verdict) -> str:
    """The outcome's word: "undecided (rounds disagree)" for a metric an A/B left unjudged,
    "host-bound change" for the host's share of a step (`harness.gate.host_share`)."""
    if undecided_by_ab(verdict):
        return UNDECIDED_WORD
    if verdict.rule == HOST_BOUND_RULE:
        return HOST_BOUND_WORD
    return str(verdict.outcome.value)


def _counts(verdicts: Iterable[Verdict]) -> str:
    verdicts = list(verdicts)
    words = {Outcome.REGRESSION: ("regression", "regressions"),
             Outcome.UNRELIABLE: ("unreliable", "unreliable"),
             Outcome.NO_BASELINE: ("without baseline", "without baseline"),
             Outcome.ENVIRONMENT_CHANGED: ("environment changed", "environment changed"),
             Outcome.IMPROVEMENT: ("improvement", "improvements"),
             Outcome.UNCHANGED: ("unchanged", "unchanged")}
    shown = []
    for outcome in sorted(Outcome, key=REPORT_ORDER.__getitem__):
        of_outcome = [v for v in verdicts if v.outcome is outcome]
        undecided = sum(undecided_by_ab(v) for v in of_outcome)
        host = sum(v.rule == HOST_BOUND_RULE for v in of_outcome)
        for count, (one, many) in ((len(of_outcome) - undecided - host, words[outcome]),
                                   (host, (HOST_BOUND_WORD, f"{HOST_BOUND_WORD}s")),
                                   (undecided, ("undecided", "undecided"))):
            if count:
                shown.append(f"{count} {one if count == 1 else many}")
    return f"{', '.join(shown)} ({_plural(len(verdicts), 'metric')})"


def render_reasons(verdicts: Sequence[Verdict]) -> str:
    """Why each regression and each unjudged metric was decided so, one line each (regressions
    first): for an A/B, the rounds, the change and the paired t-test's p-value."""
    return "\n".join(f"{v.metric_id}: {_verdict_word(v)}: {v.reason}"
                     for v in _with_reasons(sort_for_report(verdicts)))


def _with_reasons(ordered: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts whose reason a report prints under its table: regressions, unjudged ones
    and host-bound changes."""
    return [v for v in ordered if v.outcome in (Outcome.REGRESSION, Outcome.UNRELIABLE)
            or v.rule == HOST_BOUND_RULE]


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


# -- the anatomy of a step and the kernel diff of a regression --------------------------------

ANATOMY_HEADERS: tuple[str, ...] = ("part", "per step", "of step", "theory")
# Short column names of the one-line-per-step anatomy table.
ANATOMY_COLUMNS: dict[str, str] = {
    "contraction": "GEMM/attn", "normalisation": "norm/softmax", "elementwise": "elementwise",
    "memcpy": "copies", "communication": "NCCL", "optimizer": "optimizer", "other": "other",
}
_THEORY: dict[str, str] = {
    "contraction": f"{format_percent(CONTRACTION_FLOP_SHARE)} of FLOPs",
    "idle": "0 % (GPU-bound)",
}
_STATUS_WORDS: dict[str, str] = {"new": " (new)", "vanished": " (vanished)",
                                 "unlisted": " (below one side's table)"}


def render_anatomy(anatomy: Anatomy, *, markdown: bool = False) -> str:
    """One step's anatomy: seconds and share of the step per class of work, the GPU's idle
    time and the overlap of concurrent kernels (classes + idle - overlap = step), each beside
    its theory; then the phases and backward / forward against ~2."""
    rows = [[CLASS_LABELS[klass], format_value(seconds, "s"),
             format_percent(anatomy.share(seconds)), _THEORY.get(klass, "")]
            for klass, seconds in anatomy.classes.items() if seconds > 0]
    rows.append(["GPU idle (waiting for the host)", format_value(anatomy.idle_seconds, "s"),
                 format_percent(anatomy.idle_share), _THEORY["idle"]])
    if anatomy.overlap_seconds > 0:
        rows.append(["overlap of concurrent kernels", format_signed(-anatomy.overlap_seconds,
                                                                    "s"),
                     format_percent(-anatomy.share(anatomy.overlap_seconds)), ""])
    rows.append(["step (wall)", format_value(anatomy.step_seconds, "s"), format_percent(1.0),
                 ""])
    parts = [_table(rows, ANATOMY_HEADERS, markdown)]
    kernel_time = sum(anatomy.classes.values())
    parts.append(f"contractions: {format_percent(anatomy.contraction_time_share)} of kernel "
                 f"time for {format_percent(CONTRACTION_FLOP_SHARE)} of a transformer's FLOPs "
                 f"(Ivanov et al. 2020); the rest of the time is data movement")
    if anatomy.phases:
        phases = ", ".join(f"{phase} {format_value(seconds, 's')} "
                           f"({format_percent(seconds / kernel_time if kernel_time else 0.0)})"
                           for phase, seconds in anatomy.phases.items() if seconds > 0)
        ratio = anatomy.backward_forward_ratio
        parts.append(f"phases (kernel time): {phases}; backward / forward "
                     f"{'n/a' if ratio is None else format_value(ratio, 'x')} (theory "
                     f"~{BACKWARD_FORWARD_RATIO:g}x, ~{BACKWARD_FORWARD_RATIO_RECOMPUTE:g}x with "
                     f"full activation checkpointing)")
    if anatomy.from_table:
        parts.append("(classes from the stored kernel table: its rest row counts as other)")
    return "\n\n".join(parts)


def render_anatomy_table(metrics: Mapping[str, Metric], *, markdown: bool = False) -> str:
    """One line per profiled step: its wall time, the share of each class of work and of the
    GPU's idle time, and backward / forward; "" when no metric carries a profile."""
    rows = []
    for mid, metric in sorted(metrics.items()):
        if metric.profile is None:
            continue
        anatomy = profile_anatomy(metric.profile)
        ratio = anatomy.backward_forward_ratio
        rows.append([mid, format_value(anatomy.step_seconds, "s"),
                     *(format_percent(anatomy.share(anatomy.classes.get(klass, 0.0)))
                       for klass in ANATOMY_COLUMNS),
                     format_percent(anatomy.idle_share),
                     "" if ratio is None else format_value(ratio, "x")])
    if not rows:
        return ""
    headers = ("metric", "step", *ANATOMY_COLUMNS.values(), "GPU idle", "bwd/fwd")
    return ("anatomy of the profiled steps (share of the step's wall time; theory: "
            f"contractions {format_percent(CONTRACTION_FLOP_SHARE)} of FLOPs, idle 0 %, "
            f"bwd/fwd ~{BACKWARD_FORWARD_RATIO:g}x):\n\n" + _table(rows, headers, markdown))


def render_explanations(explanations: Sequence[Explanation], *, markdown: bool = False) -> str:
    """Every explanation of a regression: its kernel diff, or why there is none."""
    return "\n\n".join(render_explanation(e, markdown=markdown) for e in explanations)


def render_explanation(explanation: Explanation, *, markdown: bool = False) -> str:
    """The kernel diff that explains regressed metrics: the step's change and its cause, the
    lines that moved beyond their noise with their share of the change (they and the rest add
    up to it), launches, new and vanished kernels within noise, and the move per class and
    phase."""
    names = ", ".join(split_metric_id(mid)[1] for mid in explanation.metric_ids)
    title = f"kernel diff of {explanation.profile_id} (explains {names})"
    if markdown:
        title = f"**kernel diff** of `{_code_text(explanation.profile_id)}` (explains " \
                f"{_markdown_text(names)})"
    diff = explanation.diff
    if diff is None:
        return f"{title}: {explanation.missing}"
    relative = diff.change / diff.base_step_seconds if diff.base_step_seconds else None
    heading = (f"{title}: step {format_value(diff.base_step_seconds, 's')} -> "
               f"{format_value(diff.new_step_seconds, 's')} "
               f"({format_signed(diff.change, 's')}, {format_change(relative) or 'n/a'}); "
               f"cause: {_CAUSES[explanation.cause or diff.cause]}")
    rows = [_diff_row(diff, line) for line in (*diff.movers, diff.rest)]
    rows.append(["total (the step)", "", "", format_value(diff.base_step_seconds, "s"),
                 format_value(diff.new_step_seconds, "s"), format_signed(diff.change, "s"),
                 format_percent(1.0 if diff.change else 0.0),
                 _launches(diff.base_calls, diff.new_calls)])
    parts = [heading, _table(rows, ("line", "class", "phase", "base", "new", "change",
                                    "of change", "launches/step"), markdown)]
    notes = [diff.noise_rule]
    if diff.hidden_new:
        notes.append(f"new within noise: {', '.join(diff.hidden_new)}")
    if diff.hidden_vanished:
        notes.append(f"vanished within noise: {', '.join(diff.hidden_vanished)}")
    if diff.hidden_unlisted:
        notes.append(f"in one side's table only (the other may hold them among its kernels "
                     f"outside the table): {', '.join(diff.hidden_unlisted)}")
    notes.append("by class: " + _moves(diff.base_classes, diff.new_classes,
                                       {**CLASS_LABELS, "idle": "GPU idle"}))
    if diff.base_phases and diff.new_phases:
        notes.append("by phase: " + _moves(diff.base_phases, diff.new_phases, {}))
    parts.append("\n".join(f"- {note}" if markdown else f"  {note}" for note in notes))
    return "\n\n".join(parts)


_CAUSES: dict[str, str] = {
    "kernels": "kernels (below, largest first)",
    "host": "the host: the GPU idled longer, no kernel moved beyond its noise",
    "host by elimination": "the host: the step's device time was judged unchanged and the GPU "
                           "idled longer (no line moved beyond the noise of the compared runs)",
    "noise": "nothing beyond its noise in the kernel table",
}


def _diff_row(diff: KernelDiff, line: Line) -> list[str]:
    name = line.key + _STATUS_WORDS.get(line.status, "")
    klass = {"rest": "", "idle": "idle", "overlap": ""}.get(line.klass, line.klass)
    return [name, klass, line.phase or "", format_value(line.base_seconds, "s"),
            format_value(line.new_seconds, "s"), format_signed(line.change, "s"),
            format_percent(diff.share(line)),
            "" if line.klass in ("idle", "overlap") else _launches(line.base_calls,
                                                                    line.new_calls)]


def _launches(before: float, after: float) -> str:
    if round(before, 3) == round(after, 3):
        return format_value(after, "")
    return f"{format_value(before, '')} -> {format_value(after, '')}"


def _moves(before: Mapping[str, float], after: Mapping[str, float],
           labels: Mapping[str, str]) -> str:
    """"label a -> b (+c)" for every name with time on either side."""
    moved = [f"{labels.get(name, name)} {format_value(before.get(name, 0.0), 's')} -> "
             f"{format_value(after.get(name, 0.0), 's')} "
             f"({format_signed(after.get(name, 0.0) - before.get(name, 0.0), 's')})"
             for name in dict.fromkeys((*before, *after))
             if before.get(name, 0.0) or after.get(name, 0.0)]
    return "; ".join(moved) or "none"


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], markdown: bool) -> str:
    if markdown:
        rows = [[_markdown_text(cell) for cell in row] for row in rows]
    return str(tabulate(rows, headers=list(headers), tablefmt="github" if markdown else "simple",
                        disable_numparse=True))
