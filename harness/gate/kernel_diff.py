"""Which kernels explain a change of a step: the kernel-level diff of two sides' device profiles.

Each side is one or more profiles of the same step (one per run: a baseline's recorded runs,
the rounds of an A/B, or a single saved result). A side's step is split into lines that add up
to its wall time per step: one line per kernel group (`anatomy.kernel_key`, so the same work
matches whatever kernel its library picked), the GPU's idle time (waiting for the host), and
minus the overlap of concurrent kernels (counted in two lines, once in the step). The lines'
changes (mean over runs, new minus base) therefore add up to the step's change, and each is
shown with its share of it.

Noise: a line moves only beyond its own spread. With two or more runs on a side, a line's
standard deviation over the runs gives the standard error of its change, and the line is shown
when it moved beyond SPREAD_MULTIPLE of them; with one run a side, beyond the stated floor
SINGLE_RUN_FLOOR of the base step. The hidden lines are summed in one line, so the total still
adds up. Like Holistic Trace Analysis's TraceDiff and AMD's TraceLens, this compares kernels of
two traces; unlike them it has a noise model.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from harness.gate.anatomy import (
    CLASSES,
    PHASES,
    UNLISTED_KEY,
    kernel_bound_scale,
    kernel_class,
    kernel_key,
    step_seconds,
)
from harness.gate.profile import OTHER_ROW_PREFIX, DeviceProfile

# With one run a side there is no spread to judge by: a line must move by 1% of the base step,
# half the 2% default time tolerance (harness.gate.tolerance), so a hidden line cannot by itself
# be the main cause of a regression the gate flags.
SINGLE_RUN_FLOOR = 0.01
# With runs: beyond 3 standard errors of the line's change (three sigma, as the fleet's
# tolerance in harness.gate.fleet), a chance move of an unchanged kernel in ~1 of 370 lines.
SPREAD_MULTIPLE = 3.0
# Even beyond its spread, a line under 0.2% of the base step is hidden: ten such lines still
# stay within the 2% default tolerance, and a deterministic kernel's tiny spread would list
# every small kernel that moved by a microsecond.
MIN_SHOWN_FRACTION = 0.002

IDLE_KEY = "GPU idle (waiting for the host)"
OVERLAP_KEY = "overlap of concurrent kernels"
REST_KEY = "within their noise"


@dataclass(frozen=True)
class Line:
    """One line of the diff: seconds per step on each side (means over runs), launches per
    step, the noise it had to pass, and how it changed: "changed", "new", "vanished" (or
    "unlisted" where the other side's table may hold it below its coverage), "idle",
    "overlap", or "rest" (the hidden lines summed)."""

    key: str
    klass: str
    base_seconds: float
    new_seconds: float
    base_calls: float
    new_calls: float
    noise_seconds: float
    status: str
    phase: str | None = None

    @property
    def change(self) -> float:
        return self.new_seconds - self.base_seconds


@dataclass(frozen=True)
class KernelDiff:
    """The diff of one step between a base and a new side; `movers` plus `rest` add up to
    `change`, the step's change in seconds per step."""

    base_step_seconds: float
    new_step_seconds: float
    movers: tuple[Line, ...]
    rest: Line
    hidden_new: tuple[str, ...]
    hidden_vanished: tuple[str, ...]
    hidden_unlisted: tuple[str, ...]
    base_runs: int
    new_runs: int
    noise_rule: str
    base_classes: Mapping[str, float]
    new_classes: Mapping[str, float]
    base_phases: Mapping[str, float]
    new_phases: Mapping[str, float]

    @property
    def change(self) -> float:
        return self.new_step_seconds - self.base_step_seconds

    def share(self, line: Line) -> float:
        """A line's share of the step's change (0 when the step did not change)."""
        return line.change / self.change if self.change else 0.0

    @property
    def base_calls(self) -> float:
        return sum(line.base_calls for line in (*self.movers, self.rest))

    @property
    def new_calls(self) -> float:
        return sum(line.new_calls for line in (*self.movers, self.rest))

    @property
    def cause(self) -> str:
        """What moved the step: "kernels" when kernel lines moved beyond their noise in the
        step's direction, "host" when only the GPU's idle time did (no kernel to blame),
        "noise" when nothing did."""
        direction = math.copysign(1.0, self.change) if self.change else 0.0
        moved = [line for line in self.movers if line.change * direction > 0]
        if any(line.status not in ("idle", "overlap") for line in moved):
            return "kernels"
        if any(line.status == "idle" for line in moved):
            return "host"
        return "noise"


@dataclass(frozen=True)
class _Side:
    """One side's lines per run: key -> [seconds per run], key -> [calls per run]."""

    seconds: dict[str, list[float]]
    calls: dict[str, list[float]]
    klass: dict[str, str]
    phase: dict[str, str | None]
    steps: list[float]
    unlisted: list[float]  # seconds of each run's "(other N kernels)" row
    classes: dict[str, float]
    phases: dict[str, float]


def diff_profiles(base: Sequence[DeviceProfile], new: Sequence[DeviceProfile]) -> KernelDiff:
    """The kernel diff of the step the profiles measured: `base` and `new` hold one profile per
    run (at least one each)."""
    if not base or not new:
        raise ValueError(f"a kernel diff needs at least one profile a side, got {len(base)} "
                         f"base and {len(new)} new")
    before, after = _side(base), _side(new)
    base_step = statistics.fmean(before.steps)
    by_spread = max(len(base), len(new)) >= 2
    floor = (MIN_SHOWN_FRACTION if by_spread else SINGLE_RUN_FLOOR) * base_step
    lines: list[Line] = []
    for key in sorted(set(before.seconds) | set(after.seconds)):
        b = _per_run(before.seconds, key, len(base))
        n = _per_run(after.seconds, key, len(new))
        lines.append(Line(
            key=key, klass=before.klass.get(key) or after.klass[key],
            base_seconds=statistics.fmean(b), new_seconds=statistics.fmean(n),
            base_calls=statistics.fmean(_per_run(before.calls, key, len(base))),
            new_calls=statistics.fmean(_per_run(after.calls, key, len(new))),
            noise_seconds=max(floor, _spread_noise(b, n)),
            status=_status(key, b, n, before, after),
            phase=after.phase.get(key) or before.phase.get(key)))
    relaunched = {key for key in before.calls.keys() & after.calls.keys()
                  if key != UNLISTED_KEY  # the rest rows' counts follow the tables' coverage
                  and _launches_changed(before.calls[key], after.calls[key])}
    unlisted_moved = _unlisted_moved(lines, before, after, floor)
    visible = {line.key: _shown(line, relaunched, floor, unlisted_moved) for line in lines}
    shown = sorted((line for line in lines if visible[line.key]),
                   key=lambda line: (-abs(line.change), line.key))
    hidden = [line for line in lines if not visible[line.key]]
    rest = Line(REST_KEY, "rest", sum(line.base_seconds for line in hidden),
                sum(line.new_seconds for line in hidden),
                sum(line.base_calls for line in hidden), sum(line.new_calls for line in hidden),
                0.0, "rest")
    return KernelDiff(
        base_step_seconds=base_step, new_step_seconds=statistics.fmean(after.steps),
        movers=tuple(shown), rest=rest,
        hidden_new=tuple(line.key for line in hidden if line.status == "new"),
        hidden_vanished=tuple(line.key for line in hidden if line.status == "vanished"),
        hidden_unlisted=tuple(line.key for line in hidden if line.status == "unlisted"),
        base_runs=len(base), new_runs=len(new),
        noise_rule=_noise_rule(len(base), len(new), by_spread),
        base_classes=before.classes, new_classes=after.classes,
        base_phases=before.phases, new_phases=after.phases)


def _shown(line: Line, relaunched: Collection[str], floor: float, unlisted_moved: bool) -> bool:
    """Whether a line is shown: it moved beyond its noise, or its launches per step changed
    (`_launches_changed`) and it moved at least by the floor. An "unlisted" line, in one side's
    table only, is shown only where such lines moved together with the tables' rest rows
    (`_unlisted_moved`); otherwise it joins the hidden lines, named in a note."""
    if line.status == "unlisted" and not unlisted_moved:
        return False
    return abs(line.change) > line.noise_seconds or (
        line.key in relaunched and abs(line.change) >= floor)


def _unlisted_moved(lines: Sequence[Line], before: _Side, after: _Side, floor: float) -> bool:
    """Whether the kernels listed in one side's table only moved, taken together with the
    tables' "(other N kernels)" rows that may hold them on the other side: the sum of those
    lines judged as one line is. Alone, such a line's change is unknown, not its whole time:
    two kernels of 0.63 ms at the edge of a 30-row table swapped places between the baseline's
    runs and a fresh machine's run of a training step, and shown as a kernel gone and a kernel
    come they made a host-bound regression read "cause: kernels" (H200, 2026-12-02); their sum
    with the rest rows moved 24 us. The for-loop AdamW's kernels, each smaller than the base's
    rest row, moved that sum by 6 ms."""
    keys = [line.key for line in lines if line.status == "unlisted"]
    if not keys:
        return False
    keys.append(UNLISTED_KEY)
    base_runs, new_runs = len(before.steps), len(after.steps)
    base = [sum(_per_run(before.seconds, key, base_runs)[run] for key in keys)
            for run in range(base_runs)]
    new = [sum(_per_run(after.seconds, key, new_runs)[run] for key in keys)
           for run in range(new_runs)]
    change = statistics.fmean(new) - statistics.fmean(base)
    return abs(change) > max(floor, _spread_noise(base, new))


def _launches_changed(base: Sequence[float], new: Sequence[float]) -> bool:
    """Whether a kernel line's launches per step differ between the sides while every run of
    each side agrees: the same code launches the same kernels, so a count that changed is
    another program, not noise, however noisy the line's time. A +5% GEMM injection added a
    launch to the GEMM line (1 -> 2 per call) while the four recorded runs' times of that line
    spread too widely for its +3.4% to stand out (H200, 2026-12-02)."""
    return (max(base) == min(base) and max(new) == min(new) and base[0] != new[0])


def _noise_rule(base_runs: int, new_runs: int, by_spread: bool) -> str:
    """The rule a line had to pass to be shown, in words."""
    if by_spread:
        return (f"shown: beyond {SPREAD_MULTIPLE:g} standard errors of the per-run spread "
                f"({base_runs} base, {new_runs} new run(s)) and at least "
                f"{MIN_SHOWN_FRACTION * 100:g}% of the step, or at least that with its "
                f"launches per step changed")
    return (f"shown: beyond {SINGLE_RUN_FLOOR * 100:g}% of the base step (one run a side, so "
            f"no spread to judge by), or with its launches per step changed")


def _spread_noise(base: Sequence[float], new: Sequence[float]) -> float:
    """SPREAD_MULTIPLE standard errors of the difference of two means; a side with one run
    borrows the other side's standard deviation."""
    sd_base = statistics.stdev(base) if len(base) >= 2 else None
    sd_new = statistics.stdev(new) if len(new) >= 2 else None
    sd_base = sd_new if sd_base is None else sd_base
    sd_new = sd_base if sd_new is None else sd_new
    if sd_base is None or sd_new is None:
        return 0.0
    return SPREAD_MULTIPLE * math.sqrt(sd_base**2 / len(base) + sd_new**2 / len(new))


def _per_run(values: Mapping[str, list[float]], key: str, runs: int) -> list[float]:
    return values.get(key) or [0.0] * runs


def _status(key: str, base: Sequence[float], new: Sequence[float], before: _Side,
            after: _Side) -> str:
    if key == IDLE_KEY:
        return "idle"
    if key == OVERLAP_KEY:
        return "overlap"
    had, has = any(base), any(new)
    if key == UNLISTED_KEY:  # the tables' rest rows: no kernel of their own
        return "changed"
    if has and not had:
        # A kernel absent from the base's table may sit in its "(other N kernels)" row.
        return "unlisted" if max(before.unlisted) >= statistics.fmean(new) else "new"
    if had and not has:
        return "unlisted" if max(after.unlisted) >= statistics.fmean(base) else "vanished"
    return "changed"


def _side(profiles: Sequence[DeviceProfile]) -> _Side:
    """Every run's lines (kernel groups, idle, minus the overlap), each run's step, and the
    side's mean seconds per class and per phase."""
    runs = len(profiles)
    seconds: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    klass: dict[str, str] = {IDLE_KEY: "idle", OVERLAP_KEY: "overlap"}
    phase: dict[str, str | None] = {}
    steps, unlisted = [], []
    classes = dict.fromkeys((*CLASSES, "idle", "overlap"), 0.0)
    phases = dict.fromkeys(PHASES, 0.0)
    named_phases = all(p.phases for p in profiles)
    for index, profile in enumerate(profiles):
        step = step_seconds(profile)
        steps.append(step)
        scale = kernel_bound_scale(profile)
        kernel_time = 0.0
        for row in profile.kernels:
            key = kernel_key(row.name)
            row_seconds = row.seconds_per_step * scale
            seconds.setdefault(key, [0.0] * runs)[index] += row_seconds
            calls.setdefault(key, [0.0] * runs)[index] += row.calls_per_step
            klass.setdefault(key, kernel_class(row.name))
            phase.setdefault(key, row.phase)
            kernel_time += row_seconds
            classes[kernel_class(row.name)] += row_seconds / runs
        unlisted.append(scale * sum(row.seconds_per_step for row in profile.kernels
                                    if row.name.startswith(OTHER_ROW_PREFIX)))
        device = profile.device_seconds * scale
        idle = _clean(step - device)
        overlap = _clean(device - kernel_time)  # minus the overlap
        for key, value in ((IDLE_KEY, idle), (OVERLAP_KEY, overlap)):
            seconds.setdefault(key, [0.0] * runs)[index] = value
            calls.setdefault(key, [0.0] * runs)
        classes["idle"] += idle / runs
        classes["overlap"] += overlap / runs
        if named_phases:
            for name, value in profile.phases.items():
                phases[name] = phases.get(name, 0.0) + value / runs
    return _Side(seconds, calls, klass, phase, steps, unlisted, classes,
                 phases if named_phases else {})


def _clean(seconds: float) -> float:
    """0 for a difference below a picosecond: float rounding of equal sums, not time."""
    return 0.0 if abs(seconds) < 1e-12 else seconds
