"""Where a step's device time goes: a short, untimed profiled pass and its kernel table.

Wall time mixes what the code costs on the GPU with what the host does to issue it. A profiled
pass of a few steps (torch.profiler, which reads CUPTI) separates the two. Every step runs in its
own window, from the host's first launch to the GPU's last kernel (a synchronize closes it):

- device time per step: the union of the window's kernel and copy intervals, so overlapping
  streams count once; what the code costs the GPU, whatever host issues it. One sample a step;
- GPU idle share: 1 - device time / the timed wall time of a step (`with_wall_time`), near 0 for
  a GPU-bound step and large where the GPU waited for the host (on an H200: 0.8% for two
  Llama-2-7B layers, 9% for gpt2-medium, 33% for a 336M Llama-style model, 2026-12-02); without
  a wall time, the gaps between a step's kernels in the profiled timeline;
- host issue time per step: how long the host took to enqueue the step;
- the kernel table: name, calls and seconds per step, the top rows covering >= KERNEL_COVERAGE of
  device time (and any kernel of MIN_LISTED_SHARE or more) and the rest summed in one row, to
  explain a regression later;
- per class of work and per phase: the kernel seconds of each class (`harness.gate.anatomy`) and,
  where the step names its phases (`phase_range`: forward, backward, optimizer; ranges that
  record in the profiled pass only), of each phase.
  A kernel belongs to the phase whose host-side range holds the start of the op that launched
  it (the profiler links every kernel to that op), whatever thread launched it: the backward's
  kernels come from autograd's own thread while the caller waits inside the range.

The pass runs after the timed samples and is never part of them: profiling slows the host.
With a trace target (`trace_into`, the plugin's --perf-trace) it also writes the pass as a
Chrome/Perfetto trace, cut to its first steps and gzipped (`write_bounded_trace`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import gzip
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks import require_positive, require_positive_int
from harness.gate.anatomy import class_seconds
from harness.gate.formatting import format_bytes, format_percent, format_value
from harness.gate.profile import OTHER_ROW_PREFIX, DeviceProfile, KernelRow
from harness.gate.results import Metric

# Share of device time the listed kernels must cover; the rest is one "(other N kernels)" row.
KERNEL_COVERAGE = 0.95
# Beyond the coverage, a kernel of at least this share of device time is still listed: half the
# 2% default tolerance, so a kernel that can carry half a regression by itself is named. The
# coverage alone hid one: 5% more GEMM rows in a GEMM test added a 4% kernel, which the kernel
# diff could only call "(kernels outside the table)" (H200, 2026-12-02).
MIN_LISTED_SHARE = 0.01
# Never more rows than this, whatever the coverage: a table is read by a person.
MAX_KERNEL_ROWS = 40
# Steps in the profiled pass: five device-time samples are the fewest a one-sided rank test at
# alpha 0.01 can decide on (1/C(10,5) = 0.004); few enough to stay near a second per step.
DEFAULT_PROFILE_STEPS = 5

STEP_RANGE = "perf::step"
WINDOW_RANGE = "perf::window"
# The ranges a step names its phases with: perf::phase::forward, ::backward, ::optimizer.
PHASE_PREFIX = "perf::phase::"
# The phase of device work launched outside every named phase (zero_grad, say).
OUTSIDE_PHASES = "other"

# A written trace keeps the first TRACE_STEPS steps of the pass (one is enough to read a step;
# two show what repeats), gzipped; if it is still larger than TRACE_MAX_BYTES it keeps one
# step, and if that is too large it is not written (a warning says so). 16 MiB keeps a CI
# artifact of a few regressed tests, candidate and base, near 100 MB; Perfetto opens it.
TRACE_STEPS = 2
TRACE_MAX_BYTES = 16 * 2**20

_TRACE_TARGET: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "perf_trace_target", default=None)
# True while profile_kernels runs its steps: only then do `phase_range`s record.
_IN_PROFILED_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "perf_in_profiled_pass", default=False)


@dataclass(frozen=True)
class DeviceInterval:
    """One kernel or copy on the GPU timeline, in microseconds."""

    name: str
    start_us: float
    end_us: float
    # The phase of the step that launched it ("" where the step named no phases).
    phase: str = ""


@dataclass(frozen=True)
class ProfiledSteps:
    """The profile of the pass and the device seconds of each of its steps (the samples)."""

    profile: DeviceProfile
    device_seconds: tuple[float, ...]


def summarize(intervals: Sequence[DeviceInterval], windows: Sequence[tuple[float, float]], *,
              host_issue_seconds: float | None = None) -> ProfiledSteps:
    """The profile of steps that ran in `windows` (microseconds, one per step) with the device
    work `intervals`; work starting outside every window (a flush between steps) is left out.
    A window without device work is all idle."""
    steps = require_positive_int("number of windows", len(windows))
    per_window: list[list[DeviceInterval]] = [[] for _ in windows]
    for interval in intervals:
        for index, (start, end) in enumerate(windows):
            if start <= interval.start_us <= end:
                per_window[index].append(interval)
                break
    busy = [_union_length((i.start_us, i.end_us) for i in chosen) for chosen in per_window]
    # The GPU's part of each window: its first kernel's start to its last kernel's end. The
    # launch before and the synchronize after are the fence's own cost, not the step's: counted
    # as idle, they made a lone 1.4 ms GEMM 8-12% idle on an H200 (2026-12-02).
    spans_us = [max(i.end_us for i in chosen) - min(i.start_us for i in chosen)
                for chosen in per_window if chosen]
    span_us = sum(spans_us)
    idle = 1.0 if span_us <= 0 else min(1.0, max(0.0, 1.0 - sum(busy) / span_us))
    totals: dict[str, list[float]] = {}
    by_phase: dict[str, dict[str, float]] = {}  # kernel name -> phase -> microseconds
    for interval in (i for chosen in per_window for i in chosen):
        length = max(0.0, interval.end_us - interval.start_us)
        entry = totals.setdefault(interval.name, [0.0, 0.0])
        entry[0] += 1
        entry[1] += length
        if interval.phase:
            phases_of = by_phase.setdefault(interval.name, {})
            phases_of[interval.phase] = phases_of.get(interval.phase, 0.0) + length
    rows = [KernelRow(name, calls / steps, us / steps / 1e6,
                      _dominant(by_phase.get(name)))
            for name, (calls, us) in totals.items()]
    phases: dict[str, float] = {}
    for phases_of in by_phase.values():
        for phase, us in phases_of.items():
            phases[phase] = phases.get(phase, 0.0) + us / steps / 1e6
    classes = class_seconds((row.name, row.seconds_per_step) for row in rows) if rows else {}
    profile = DeviceProfile(steps=steps, device_seconds=sum(busy) / steps / 1e6,
                            idle_fraction=idle, host_issue_seconds=host_issue_seconds,
                            kernels=top_rows(rows), classes=classes, phases=phases)
    return ProfiledSteps(profile, tuple(us / 1e6 for us in busy))


def _dominant(phases: dict[str, float] | None) -> str | None:
    """The phase most of a kernel's time ran in; None when it ran in no named phase."""
    if not phases:
        return None
    return max(sorted(phases), key=lambda phase: phases[phase])


def top_rows(rows: Iterable[KernelRow], coverage: float = KERNEL_COVERAGE,
             max_rows: int = MAX_KERNEL_ROWS,
             min_share: float = MIN_LISTED_SHARE) -> tuple[KernelRow, ...]:
    """The largest rows until they cover `coverage` of the total and the next is below
    `min_share` of it (at most `max_rows`), then one row for the rest."""
    ordered = sorted(rows, key=lambda r: (-r.seconds_per_step, r.name))
    total = sum(r.seconds_per_step for r in ordered)
    kept: list[KernelRow] = []
    covered = 0.0
    for row in ordered:
        if len(kept) >= max_rows or (total > 0 and covered >= coverage * total
                                     and row.seconds_per_step < min_share * total):
            break
        kept.append(row)
        covered += row.seconds_per_step
    rest = ordered[len(kept):]
    if rest:
        kept.append(KernelRow(f"{OTHER_ROW_PREFIX}{len(rest)} kernels)",
                              sum(r.calls_per_step for r in rest),
                              sum(r.seconds_per_step for r in rest)))
    return tuple(kept)


def profile_kernels(fn: Callable[[], object], *, steps: int = DEFAULT_PROFILE_STEPS,
                    before_each: Callable[[], object] | None = None) -> ProfiledSteps:
    """Run `fn` `steps` times under torch.profiler (CUDA activity), each step in its own window,
    `before_each` (an L2 flush, say) finished before the window opens; summarize the windows."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    require_positive_int("steps", steps)
    fn()  # one call outside the profile: lazy initialisation is not a step
    torch.cuda.synchronize()
    token = _IN_PROFILED_PASS.set(True)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                if before_each is not None:
                    before_each()
                torch.cuda.synchronize()
                with record_function(WINDOW_RANGE):
                    with record_function(STEP_RANGE):
                        fn()
                    torch.cuda.synchronize()
    finally:
        _IN_PROFILED_PASS.reset(token)
    # The raw kineto records, not prof.events(): building that tree of FunctionEvents took
    # 8-10 s for 5 steps of a 336M model (thousands of ops each) on an H200, 2026-12-02.
    events = prof.profiler.kineto_results.events()
    spans = [end - start for start, end in _annotation_ranges(events, STEP_RANGE)]
    target = _TRACE_TARGET.get()
    if target is not None:
        _export_trace(prof, target)
    return summarize(_device_intervals(events), _annotation_ranges(events, WINDOW_RANGE),
                     host_issue_seconds=sum(spans) / len(spans) / 1e6 if spans else None)


def phase_range(phase: str) -> contextlib.AbstractContextManager[object]:
    """A profiler range naming a phase of the step (forward, backward, optimizer) for the
    kernel table, inside a profiled pass; a no-op context elsewhere (the timed steps)."""
    if not _IN_PROFILED_PASS.get():
        return contextlib.nullcontext()
    from torch.profiler import record_function

    return record_function(PHASE_PREFIX + phase)


@contextlib.contextmanager
def trace_into(path: Path | None) -> Iterator[None]:
    """Within the block, profiled passes also write their trace to `path` (None: none)."""
    token = _TRACE_TARGET.set(path)
    try:
        yield
    finally:
        _TRACE_TARGET.reset(token)


def _export_trace(prof: Any, target: Path) -> None:
    """Write the pass's trace, bounded (`write_bounded_trace`); a warning, never an error."""
    try:
        with tempfile.TemporaryDirectory(prefix="perf-trace-") as work:
            raw = Path(work) / "trace.json"
            prof.export_chrome_trace(str(raw))
            written = write_bounded_trace(json.loads(raw.read_text(encoding="utf-8")), target)
        if written is None:
            warnings.warn(f"the trace of {target.name} is larger than "
                          f"{format_bytes(TRACE_MAX_BYTES)} gzipped even for one step; not "
                          f"written", RuntimeWarning, stacklevel=3)
    except (OSError, ValueError) as exc:
        warnings.warn(f"the trace {target} was not written ({type(exc).__name__}: {exc})",
                      RuntimeWarning, stacklevel=3)


def write_bounded_trace(trace: dict[str, Any], target: Path, *, steps: int = TRACE_STEPS,
                        max_bytes: int = TRACE_MAX_BYTES) -> int | None:
    """Write a Chrome trace (as `export_chrome_trace` writes it) to `target`, gzipped, cut to
    its first `steps` step windows (fewer, down to one, until it fits `max_bytes`); returns the
    steps written, or None when not even one step fits (nothing is written)."""
    events = trace.get("traceEvents")
    if not isinstance(events, list):
        raise ValueError("a Chrome trace needs a 'traceEvents' list")
    # The host-side step windows ("user_annotation"; the GPU-side extent of the same range is
    # a "gpu_user_annotation").
    windows = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
                     for e in events if isinstance(e, dict) and e.get("name") == WINDOW_RANGE
                     and e.get("ph") == "X" and "ts" in e
                     and e.get("cat", "user_annotation") == "user_annotation")
    for kept in range(min(steps, len(windows)) or 1, 0, -1):
        chosen = events
        if windows:
            start, end = windows[0][0], windows[kept - 1][1]
            # Metadata (process and thread names) has no place in time: always kept.
            chosen = [e for e in events if not isinstance(e, dict) or "ts" not in e
                      or e.get("ph") == "M" or start <= float(e["ts"]) <= end]
        data = gzip.compress(json.dumps({**trace, "traceEvents": chosen}).encode("utf-8"))
        if len(data) <= max_bytes:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            return kept
    return None


def profile_or_reason(fn: Callable[[], object], *, steps: int = DEFAULT_PROFILE_STEPS,
                      before_each: Callable[[], object] | None = None
                      ) -> tuple[ProfiledSteps | None, str]:
    """`profile_kernels`, or None and why it failed, with a warning: the profiled pass is a
    diagnostic beside the measurement and never fails a measured test (a profiler that another
    tool holds, a torch whose profiler records differ)."""
    try:
        return profile_kernels(fn, steps=steps, before_each=before_each), ""
    except Exception as exc:  # any failure of torch.profiler: reported, not raised
        reason = f"the profiled pass failed ({type(exc).__name__}: {exc}), so no device time"
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return None, reason


def _is_annotation(event: Any) -> bool:
    """Whether a kineto record is a record_function range (on the host, or its GPU-side extent)
    rather than work. torch >= 2.13 names the activity; older ones only flag annotations."""
    activity = getattr(event, "activity_type", None)
    if activity is not None:
        return str(activity()) in ("user_annotation", "gpu_user_annotation")
    flag = getattr(event, "is_user_annotation", None)
    return bool(flag()) if flag is not None else False


def _annotation_ranges(events: Any, name: str) -> list[tuple[float, float]]:
    """The host-side spans (microseconds) of the record_function ranges called `name`."""
    from torch.profiler import DeviceType

    return sorted((e.start_ns() / 1e3, e.end_ns() / 1e3) for e in events
                  if e.name() == name and e.device_type() == DeviceType.CPU)


def _device_intervals(events: Any) -> list[DeviceInterval]:
    """Every kernel, copy and memset on the GPU timeline (microseconds), no annotations, each
    with the phase its launching op started in."""
    from torch.profiler import DeviceType

    events = list(events)
    phases = sorted((e.start_ns() / 1e3, e.end_ns() / 1e3, e.name()[len(PHASE_PREFIX):])
                    for e in events if e.device_type() == DeviceType.CPU
                    and e.name().startswith(PHASE_PREFIX))
    # The host-side ops (the profiler links each kernel to one): correlation id -> start. An
    # op's own link is 0; runtime calls and kernels link to their op.
    op_starts = {e.correlation_id(): e.start_ns() / 1e3 for e in events
                 if e.device_type() == DeviceType.CPU and e.linked_correlation_id() == 0}
    intervals = []
    for e in events:
        if e.device_type() != DeviceType.CUDA or _is_annotation(e):
            continue
        phase = ""
        if phases:
            phase = phase_of(op_starts.get(e.linked_correlation_id()), phases)
        intervals.append(DeviceInterval(e.name(), e.start_ns() / 1e3, e.end_ns() / 1e3, phase))
    return intervals


def phase_of(launched_us: float | None, phases: Sequence[tuple[float, float, str]]) -> str:
    """The phase whose host-side range (start, end, name) holds a launch time; OUTSIDE_PHASES
    when none does or the launch time is unknown."""
    if launched_us is not None:
        for start, end, name in phases:
            if start <= launched_us <= end:
                return name
    return OUTSIDE_PHASES


def _union_length(spans: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the spans, overlaps counted once."""
    total = 0.0
    current: tuple[float, float] | None = None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


def with_wall_time(profiled: ProfiledSteps, wall_seconds: float) -> ProfiledSteps:
    """The profile with its idle share taken against the timed (unprofiled) wall time per step:
    1 - device time / wall time. The profiler slows the host, so the gaps of the profiled
    timeline overstate what the host costs: on an H200 a 336M Llama-style step took 100 ms per
    step timed but its host issued it in 162 ms under the profiler, and gpt2-medium's profiled
    gaps read 31% idle where device time over wall time gives 9% (2026-12-02). Device time
    itself does not depend on how fast the host is."""
    wall = require_positive("wall_seconds", wall_seconds)
    idle = min(1.0, max(0.0, 1.0 - profiled.profile.device_seconds / wall))
    return ProfiledSteps(dataclasses.replace(profiled.profile, idle_fraction=idle),
                         profiled.device_seconds)


def device_time_metric(name: str, profiled: ProfiledSteps, *,
                       tolerance: float | None = None) -> Metric:
    """The metric of a profiled pass: device seconds per step (one sample a step), carrying the
    profile with its kernel table."""
    profile = profiled.profile
    host = ("" if profile.host_issue_seconds is None
            else f", host issue {format_value(profile.host_issue_seconds, 's')} per step")
    return Metric(name=name, unit="s", better="lower", kind="time",
                  samples=profiled.device_seconds, tolerance=tolerance, profile=profile,
                  note=(f"GPU busy time per step (kernel intervals, overlaps once) over "
                        f"{profile.steps} profiled steps; GPU idle "
                        f"{format_percent(profile.idle_fraction, space=False)} of the timed "
                        f"step"
                        f"{host}; {'host-bound' if profile.host_bound else 'GPU-bound'}"))
