"""The analysis: every saved repetition judged against its phase's baseline with the plugin's
own verdict (confirmation included), counted per condition against the targets; the A/B phase's
comparisons judged again with the plugin's A/B rounds and paired verdict (`analyse_ab`)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from benchmarks.detection_power.ab_rounds import ABSettings, replay
from benchmarks.detection_power.design import AB_PHASE
from benchmarks.detection_power.document import check_document, conditions_of
from harness.checks import require_finite
from harness.gate.paired import PairedOutcome
from harness.gate.results import Metric, metric_id
from harness.gate.run_options import DEFAULT_CONFIRM_DELAY_SECONDS
from harness.gate.verdict import DEFAULT_ALPHA, Outcome, judge

# The plugin re-measures a regression after DEFAULT_CONFIRM_DELAY_SECONDS and judges the second
# measurement with `judge(..., confirming=True)`; `analyse` models it with a later repetition of
# the same condition (see `confirmation_lag`).
CONFIRM_DELAY_SECONDS = DEFAULT_CONFIRM_DELAY_SECONDS

# Tolerances and alphas of the re-analysis grid; None is the plugin's default per metric kind.
GRID_TOLERANCES: tuple[float | None, ...] = (None, 0.01, 0.02, 0.03, 0.05)
GRID_ALPHAS: tuple[float, ...] = (DEFAULT_ALPHA, 0.05, 0.001)

# Node id under which the metrics are judged (the verdict needs a metric id; nothing is stored).
NODE_ID = "benchmarks/detection_power"


@dataclass(frozen=True)
class AnalysisRow:
    """How often the gate flagged one condition of one metric at one tolerance and alpha."""

    phase: str
    metric: str
    condition: str
    fraction: float
    tolerance: float
    default_tolerance: bool
    alpha: float
    repetitions: int
    # Repetitions the gate failed: the first measurement regressed and so did its confirmation.
    flagged: int
    # Repetitions whose first measurement regressed (before confirmation).
    first_flagged: int
    unreliable: int
    median_change: float | None
    min_change: float | None
    max_change: float | None
    target: str
    met: bool

    @property
    def tolerance_label(self) -> str:
        """"default 5%" for the plugin's default, else "2%"."""
        label = f"{self.tolerance * 100:g}%"
        return f"default {label}" if self.default_tolerance else label


def confirmation_lag(records: Sequence[dict[str, Any]],
                     delay_seconds: float = CONFIRM_DELAY_SECONDS) -> int:
    """How many repetitions of one condition later its confirmation is taken, modelling the
    plugin's pause before re-measuring: the first repetition of the same condition that ends at
    least `delay_seconds` after (by the median time between them). Repetitions near the end
    wrap around to the first ones (`analyse`); with one repetition it confirms itself (0)."""
    if len(records) < 2:
        return 0
    ends = [float(r["elapsed_s"]) for r in records]
    gap = statistics.median(b - a for a, b in pairwise(ends))
    lag = math.ceil(delay_seconds / gap) if gap > 0 else 1
    return min(max(lag, 1), len(records) - 1)


def analyse(data: dict[str, Any], *, tolerances: Sequence[float | None] = (None,),
            alpha: float = DEFAULT_ALPHA) -> list[AnalysisRow]:
    """Judge every saved repetition against its phase's baseline with `verdict.judge` and count
    the regressions per phase, tolerance and condition, as the plugin's gate decides them: a
    first measurement judged as usual, and when it regressed, a confirmation judged with
    `confirming=True`. The confirmation is the repetition of the same condition
    `confirmation_lag` places later (wrapping around): measured about the plugin's
    DEFAULT_CONFIRM_DELAY_SECONDS after, as the plugin's re-measurement is. A tolerance of None
    is the plugin's default for the metric's kind (DEFAULT_TOLERANCES)."""
    check_document(data, "data")
    if isinstance(tolerances, (int, float)) or not isinstance(tolerances, Sequence):
        raise ValueError(f"tolerances must be a sequence of tolerances (None for the default), "
                         f"such as (None, 0.02), got {tolerances!r}")
    if not 0 < require_finite("alpha", alpha) < 1:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1 such as 0.01, "
                         f"got {alpha!r}")
    conditions = conditions_of(data)
    rows: list[AnalysisRow] = []
    for phase, result in data["phases"].items():
        if "skipped" in result or phase == AB_PHASE:
            continue
        name = result["judged_metric"]
        mid = metric_id(NODE_ID, name)
        baseline = Metric.from_json(name, result["baseline"]["metrics"][name], f"{phase} baseline")
        for tolerance in tolerances:
            for condition in conditions:
                records = [r for r in result["repetitions"] if r["condition"] == condition.name]
                measured = [Metric.from_json(name, r["metrics"][name], f"{phase} repetition")
                            for r in records]
                verdicts = [judge(mid, m, baseline, tolerance=tolerance, alpha=alpha)
                            for m in measured]
                lag = confirmation_lag(records)
                confirmed = [
                    v.outcome == Outcome.REGRESSION
                    and judge(mid, measured[(i + lag) % len(measured)], baseline,
                              tolerance=tolerance, alpha=alpha,
                              confirming=True).outcome == Outcome.REGRESSION
                    for i, v in enumerate(verdicts)]
                outcomes = Counter(v.outcome for v in verdicts)
                changes = [v.change for v in verdicts if v.change is not None]
                flagged = sum(confirmed)
                least, most = condition.required(len(measured))
                resolved = (verdicts[0].tolerance if verdicts
                            else judge(mid, baseline, baseline, tolerance=tolerance).tolerance)
                rows.append(AnalysisRow(
                    phase=phase, metric=name, condition=condition.name,
                    fraction=condition.fraction, tolerance=resolved,
                    default_tolerance=tolerance is None, alpha=float(alpha),
                    repetitions=len(measured), flagged=flagged,
                    first_flagged=outcomes[Outcome.REGRESSION],
                    unreliable=outcomes[Outcome.UNRELIABLE],
                    median_change=statistics.median(changes) if changes else None,
                    min_change=min(changes) if changes else None,
                    max_change=max(changes) if changes else None,
                    target=condition.target(len(measured)),
                    met=bool(measured) and least <= flagged <= most))
    return rows


def analyse_grid(data: dict[str, Any], *,
                 tolerances: Sequence[float | None] = GRID_TOLERANCES,
                 alphas: Sequence[float] = GRID_ALPHAS) -> list[AnalysisRow]:
    """`analyse` for every alpha of `alphas` and every tolerance of `tolerances`."""
    rows: list[AnalysisRow] = []
    for alpha in alphas:
        rows.extend(analyse(data, tolerances=tolerances, alpha=alpha))
    return rows


@dataclass(frozen=True)
class ABRow:
    """How often the A/B confirmation flagged one condition: repetitions whose final paired
    outcome was a regression, and how many rounds it took."""

    condition: str
    fraction: float
    repetitions: int
    flagged: int
    # Comparisons that ended undecided: the plugin reports those as unreliable, not as failures.
    undecided: int
    mean_rounds: float | None
    median_p: float | None
    median_change: float | None
    target: str
    met: bool


def analyse_ab(data: dict[str, Any]) -> list[ABRow]:
    """Judge every stored A/B comparison again (`ab_rounds.replay`: the plugin's `run_ab` and
    paired verdict on the stored run medians, with the stored tolerance, alpha and rounds) and
    count the regressions per condition against the targets; [] when the run has no A/B phase."""
    check_document(data, "data")
    result = data["phases"].get(AB_PHASE)
    if result is None or "skipped" in result:
        return []
    settings = ABSettings(**result["settings"])
    metric = result["metric"]
    template = Metric(name=result["judged_metric"], unit=metric["unit"],
                      better=metric["better"], kind=metric["kind"], samples=(1.0,))
    rows: list[ABRow] = []
    for condition in conditions_of(data):
        judged = [replay(record, settings, template, f"{AB_PHASE} repetitions[{position}]")
                  for position, record in enumerate(result["repetitions"])
                  if record["condition"] == condition.name]
        flagged = sum(1 for j in judged if j["outcome"] == PairedOutcome.REGRESSION.value)
        p_values = [j["p_value"] for j in judged if j["p_value"] is not None]
        changes = [j["change"] for j in judged if j["change"] is not None]
        least, most = condition.required(len(judged))
        rows.append(ABRow(
            condition=condition.name, fraction=condition.fraction, repetitions=len(judged),
            flagged=flagged,
            undecided=sum(1 for j in judged if j["outcome"] == PairedOutcome.UNDECIDED.value),
            mean_rounds=statistics.fmean(j["rounds"] for j in judged) if judged else None,
            median_p=statistics.median(p_values) if p_values else None,
            median_change=statistics.median(changes) if changes else None,
            target=condition.target(len(judged)),
            met=bool(judged) and least <= flagged <= most))
    return rows
