"""One A/B repetition, taken by the plugin's own `harness.gate.ab.run_ab`: base and head runs in
alternating rounds (ABBA...), at least MIN_ROUNDS, at most `max_rounds`, stopped early once the
watched metric is settled, judged with the paired verdict. Only the runner differs from the
plugin's: a run is one measurement in this process instead of a pytest child process. A
stored repetition is judged again the same way, its runs served from the JSON (`replay`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.gate.ab import ABResult, Side, judge_rounds, run_ab
from harness.gate.paired import PairedVerdict
from harness.gate.results import Metric, RunResults, SchemaError

# The two sides: base is the unchanged code, head the code under test.
BASE, HEAD = "base", "head"
# What a run's results name as their fingerprint: they were measured here, not loaded.
IN_PROCESS = "in-process"
# `run_ab` names a save path per run under its work directory; the in-process runner returns its
# results instead of saving them, so nothing is ever written there.
UNUSED_WORK_DIR = Path("unused-by-in-process-runs")

# One run of a side in a round: seconds per run, or the stored median served again.
MeasureRun = Callable[[str, int], Metric]


@dataclass(frozen=True)
class RunCall:
    """One run the runner took: its side, its round (0-based), the metric and its seconds."""

    side: str
    round_index: int
    metric: Metric
    seconds: float


class InProcessRunner:
    """A `harness.gate.ab.TreeRunner` that measures in this process: the side's tree is named
    after the side, and `measure(side, round_index)` takes that side's run of that round.
    Every call is kept in order, so the JSON holds the order the rounds really ran in."""

    def __init__(self, measure: MeasureRun, metric_id: str) -> None:
        self.measure = measure
        self.metric_id = metric_id
        self.calls: list[RunCall] = []

    def __call__(self, tree: Path, pytest_args: Sequence[str], save_path: Path) -> RunResults:
        side = tree.name
        round_index = sum(1 for call in self.calls if call.side == side)
        start = time.perf_counter()
        metric = self.measure(side, round_index)
        self.calls.append(RunCall(side, round_index, metric, time.perf_counter() - start))
        return RunResults(kind="results", fingerprint=IN_PROCESS, environment={},
                          metrics={self.metric_id: metric})


@dataclass(frozen=True)
class ABSettings:
    """How the plugin's A/B confirmation judges: the metric's tolerance, alpha, the most rounds
    (`--perf-ab-rounds`) and the time budget (`--perf-ab-budget`)."""

    metric_id: str
    tolerance: float
    alpha: float
    max_rounds: int
    budget_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"metric_id": self.metric_id, "tolerance": self.tolerance, "alpha": self.alpha,
                "max_rounds": self.max_rounds, "budget_seconds": self.budget_seconds}


def ab_repetition(measure: MeasureRun, settings: ABSettings, *,
                  clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run one A/B comparison with `run_ab`, the watched metric being `settings.metric_id`, and
    return it as JSON: every run in order, the rounds' order, the paired verdict after each
    round (p-value and outcome; before MIN_ROUNDS it is undecided) and the final one."""
    runner = InProcessRunner(measure, settings.metric_id)
    result = run_ab(Side(BASE, "unchanged", Path(BASE)), Side(HEAD, "injected", Path(HEAD)),
                    [], runner=runner, tolerance_of=lambda mid, metric: settings.tolerance,
                    alpha=settings.alpha, max_rounds=settings.max_rounds,
                    budget_seconds=settings.budget_seconds, work_dir=UNUSED_WORK_DIR,
                    clock=clock, watch={settings.metric_id}.__contains__)
    final = result.verdicts[settings.metric_id]
    after_each = [_verdict_after(result, rounds, settings)
                  for rounds in range(1, result.rounds + 1)]
    round_order = [[call.side for call in runner.calls if call.round_index == index]
                   for index in range(result.rounds)]
    return {
        "runs": [{"round": call.round_index, "side": call.side, "median": call.metric.median,
                  "samples": len(call.metric.samples), "reliable": call.metric.reliable,
                  "seconds": call.seconds} for call in runner.calls],
        "round_order": round_order,
        "base_medians": list(final.base_values),
        "head_medians": list(final.head_values),
        "rounds": final.rounds,
        "p_values": [verdict.p_value for verdict in after_each],
        "outcomes": [verdict.outcome.value for verdict in after_each],
        "outcome": final.outcome.value,
        "change": final.change,
        "p_value": final.p_value,
        "reason": final.reason,
        "ab_seconds": result.elapsed_seconds,
    }


def _verdict_after(result: ABResult, rounds: int, settings: ABSettings) -> PairedVerdict:
    """The paired verdict on the first `rounds` rounds, as `run_ab` saw it after that round."""
    return judge_rounds(result.base_runs[:rounds], result.head_runs[:rounds],
                        tolerance_of=lambda mid, metric: settings.tolerance,
                        alpha=settings.alpha)[settings.metric_id]


def replay(record: dict[str, Any], settings: ABSettings, template: Metric,
           where: str) -> dict[str, Any]:
    """Judge a stored repetition again with `run_ab`: each run is served from its stored median
    (a metric like `template` with that one sample) and the clock stands still, so the budget
    never stops it. A stop rule that asks for a round the record does not hold is a SchemaError."""
    stored = {BASE: record["base_medians"], HEAD: record["head_medians"]}

    def serve(side: str, round_index: int) -> Metric:
        medians = stored[side]
        if round_index >= len(medians):
            raise SchemaError(f"{where}: holds {len(medians)} {side} run(s), but the A/B stop "
                              f"rule with {settings.max_rounds} rounds at most asks for round "
                              f"{round_index + 1} (the comparison stopped earlier, under another "
                              f"stop rule); re-run the A/B phase")
        return template.with_changes(samples=(float(medians[round_index]),))

    return ab_repetition(serve, settings, clock=lambda: 0.0)
