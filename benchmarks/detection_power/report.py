"""The printed report: notes on what the counts rest on, the re-analysis grid, the main table of
regressions flagged per condition, the A/B phase's table, timing fidelity and wall time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from benchmarks.detection_power.analysis import (
    ABRow,
    AnalysisRow,
    analyse,
    analyse_ab,
    analyse_grid,
)
from benchmarks.detection_power.design import AB_PHASE
from benchmarks.detection_power.document import conditions_of
from harness.gate.verdict import DEFAULT_ALPHA

# An injection whose calibrated cost is off its condition's fraction by more than this share of
# it (a 3% one outside 2.25-3.75%) does not test that condition; the report says so.
INJECTION_MISS = 0.25


def _signed(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:+.2f}%"


def render_table(rows: Sequence[AnalysisRow]) -> str:
    """The main table: per metric and condition, regressions flagged against the target."""
    table = [[f"{r.phase} ({r.metric})", r.condition, r.repetitions,
              f"{r.flagged}/{r.repetitions}", r.target, "yes" if r.met else "NO",
              f"{r.first_flagged}/{r.repetitions}", _signed(r.median_change),
              f"{_signed(r.min_change)}..{_signed(r.max_change)}", r.unreliable]
             for r in rows]
    return tabulate(table, headers=["metric", "condition", "repetitions", "regressions (gate)",
                                    "target", "met?", "first measurement", "median change",
                                    "change range", "unreliable"])


def render_grid(rows: Sequence[AnalysisRow]) -> str:
    """One line per metric, tolerance and alpha: flagged counts per condition, whether every
    target is met; then the settings that meet every target for every metric."""
    settings: dict[tuple[str, str, float], list[AnalysisRow]] = {}
    for row in rows:
        settings.setdefault((row.phase, row.tolerance_label, row.alpha), []).append(row)
    conditions = list(dict.fromkeys(r.condition for r in rows))
    table = []
    passing: dict[tuple[str, float], set[str]] = {}
    phases = list(dict.fromkeys(r.phase for r in rows))
    for (phase, label, alpha), group in settings.items():
        cells = {r.condition: f"{r.flagged}/{r.repetitions}" + ("" if r.met else " !")
                 for r in group}
        all_met = all(r.met for r in group)
        table.append([phase, label, f"{alpha:g}"] + [cells.get(c, "") for c in conditions]
                     + ["yes" if all_met else "no"])
        # The default tolerance differs by metric kind; its rows count as one setting.
        setting = "default" if label.startswith("default") else label
        if all_met:
            passing.setdefault((setting, alpha), set()).add(phase)
    text = tabulate(table, headers=["metric", "tolerance", "alpha"] + conditions
                    + ["meets all targets"])
    winners = [f"tolerance {tol}, alpha {alpha:g}" for (tol, alpha), met in passing.items()
               if met == set(phases)]
    text += ("\n'!' marks a missed target. Settings meeting every target for every metric: "
             + ("; ".join(winners) if winners else "none"))
    return text


def render_ab_table(rows: Sequence[ABRow], result: dict[str, Any]) -> str:
    """The A/B phase's table: per condition, comparisons whose paired verdict was a regression
    against the target, undecided ones, mean rounds used, median p-value and change."""
    settings = result["settings"]
    table = [[r.condition, f"{r.flagged}/{r.repetitions}", r.target, "yes" if r.met else "NO",
              r.undecided, "-" if r.mean_rounds is None else f"{r.mean_rounds:.2f}",
              "-" if r.median_p is None else f"{r.median_p:.2g}", _signed(r.median_change)]
             for r in rows]
    title = (f"A/B phase ({result['judged_metric']}): the paired verdict of alternating base "
             f"and head runs in this process, {result['min_rounds']}-{settings['max_rounds']} "
             f"rounds stopped once settled, tolerance {settings['tolerance']:.0%}, alpha "
             f"{settings['alpha']:g}; {result['seconds']:.1f} s (sized for "
             f"{result['time_budget_seconds']:.0f} s):")
    text: str = tabulate(table, headers=[
        "condition", "regressions (paired)", "target", "met?", "undecided", "mean rounds",
        "median p", "median change"])
    return f"{title}\n{text}"


def render_fidelity(fidelity: dict[str, Any] | None) -> str:
    """The timing-fidelity rows: fixture vs triton do_bench TFLOP/s per GEMM shape."""
    if fidelity is None:
        return "timing fidelity: not run"
    if "skipped" in fidelity:
        return f"timing fidelity: skipped, {fidelity['skipped']}"
    table = [[row["gemm"]["name"],
              f"{row['gemm']['m']}x{row['gemm']['n']}x{row['gemm']['k']}",
              f"{row['fixture_tflops']:.1f}", f"{row['do_bench_tflops']:.1f}",
              _signed(row["relative_difference"]), "yes" if row["within_limit"] else "NO"]
             for row in fidelity["rows"]]
    return tabulate(table, headers=["GEMM", "m x n x k", "fixture TFLOP/s",
                                    "do_bench TFLOP/s", "difference",
                                    f"within {fidelity['limit']:.0%}?"])


def render_wall_time(data: dict[str, Any]) -> str:
    """Wall seconds per phase and in total, against the time budget."""
    seconds = data.get("wall_seconds", {})
    parts = [f"{name} {value:.1f} s" for name, value in seconds.items() if name != "total"]
    total = seconds.get("total")
    line = "wall time: " + ", ".join(parts)
    if total is not None:
        line += f"; total {total:.1f} s of the {data['time_budget_seconds']:.0f} s budget"
        if total > data["time_budget_seconds"]:
            line += " (OVER BUDGET)"
    return line


def render_notes(data: dict[str, Any]) -> str:
    """What the tables rest on: run status, policy, skipped phases, cold start, injections."""
    lines: list[str] = []
    fractions = {c.name: c.fraction for c in conditions_of(data)}
    if not data.get("complete", False):
        lines.append("note: this run did not finish; only its completed phases are analysed")
    if not data["policy_is_fixture_default"]:
        lines.append(f"note: measured with {data['policy']}, not the fixture's default "
                     f"TimingPolicy: these counts say nothing about the defaults")
    for phase, result in data["phases"].items():
        if "skipped" in result:
            lines.append(f"{phase}: skipped, {result['skipped']}")
            continue
        if phase == AB_PHASE:
            lines.append(f"{phase}: runs measured with {result['policy']}; base and head "
                         f"alternate in one process, so per-process effects (cuBLAS's kernel "
                         f"choice, the allocator's layout, a fresh CUDA context) are not in it")
        name = result["judged_metric"]
        first = statistics.median(result["warmup"]["metrics"][name]["samples"])
        base = statistics.median(result["baseline"]["metrics"][name]["samples"])
        lines.append(f"{phase}: the first (thrown away) measurement in the process was "
                     f"{_signed(first / base - 1)} against the baseline (cold start)")
        for condition, info in result["injections"].items():
            if "shape" in info:
                shape = info["shape"]
                what = (f"an extra {shape['m']}x{shape['n']}x{shape['k']} GEMM costing "
                        f"{info['injected_fraction']:.2%} of the baseline time, measured "
                        f"{info.get('measured', 'alone')}")
            else:
                what = (f"{info['bytes'] / 2**20:.1f} MiB held through the step, "
                        f"{info['injected_fraction']:.2%} of the baseline peak")
            lines.append(f"{phase} {condition}: {what}")
            target = fractions.get(condition)
            if target and abs(info["injected_fraction"] - target) > INJECTION_MISS * target:
                lines.append(f"WARNING: {phase} {condition} injected "
                             f"{info['injected_fraction']:.2%}, not {target:.0%}: its counts do "
                             f"not measure a {target:.0%} regression (calibration missed; is the "
                             f"workload host-bound?)")
    return "\n".join(lines)


def render_report(data: dict[str, Any], *, grid: bool) -> str:
    """Everything printed after a run or by --analyse; the main table (for the phases judged
    against a baseline), the A/B table, fidelity and wall time come last."""
    blocks = [render_notes(data)]
    rows = analyse(data)
    if grid and rows:
        blocks.append("re-analysis grid (regressions the gate reports, confirmation included, "
                      "per condition):\n"
                      + render_grid(analyse_grid(data)))
    if rows:
        blocks.append(f"with the plugin's default tolerances and alpha {DEFAULT_ALPHA:g}:\n"
                      + render_table(rows))
    ab_rows = analyse_ab(data)
    if ab_rows:
        blocks.append(render_ab_table(ab_rows, data["phases"][AB_PHASE]))
    blocks.append(render_fidelity(data.get("fidelity")))
    blocks.append(render_wall_time(data))
    return "\n\n".join(block for block in blocks if block)
