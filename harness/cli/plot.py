"""`python -m harness plot FINGERPRINT METRIC -o trend.png`: a metric's history as a picture.

Points come from the baseline history (`baselines/history/<fingerprint>/`), the current baseline
and any saved results files given; x is when each was recorded (`created`), y the median with an
IQR error bar, and the tolerance band around the latest baseline is shaded, so a slow drift that
no single comparison flags stands out at a glance. Gathering (`metric_history`: reads files, draws
nothing, testable anywhere) is separate from drawing (`draw_trend`: matplotlib, imported lazily,
since it is the optional extra `plot`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from harness.checks import file_problem
from harness.gate import store
from harness.gate.formatting import format_percent
from harness.gate.lookup import find_metric_id, unknown_fingerprint
from harness.gate.results import Better, RunResults, split_metric_id
from harness.gate.stats import quartiles
from harness.gate.store import DEFAULT_DIRECTORY
from harness.gate.tolerance import choose_tolerance

Source = Literal["baseline", "results"]

MATPLOTLIB_MISSING = "matplotlib is not installed: pip install 'perf-harness[plot]'"

# 10 x 5 inches at 120 dpi = 1200 x 600 pixels: a quarter of nightly points stay apart, and
# the picture fits a pull-request comment or a chat message without scaling.
FIGURE_SIZE_INCHES = (10.0, 5.0)
FIGURE_DPI = 120

# Axis units for seconds: (values below this many seconds, shown unit, factor). Step times are
# usually milliseconds, kernel times microseconds; a tick label like 0.000123 is unreadable.
SECONDS_SCALES: tuple[tuple[float, str, float], ...] = ((1e-3, "us", 1e6), (1.0, "ms", 1e3))
# Bytes are shown in GiB (2**30), the binary unit of torch.cuda.memory_summary and of the text
# reports; measured memory metrics are peaks of training runs, gigabytes in practice.
BYTES_PER_GIB = 2**30


@dataclass(frozen=True)
class Point:
    """One recorded value of a metric: when, the median and its quartiles, where it came from."""

    metric_id: str
    created: datetime
    median: float
    q1: float
    q3: float
    unit: str
    better: Better
    source: Source
    path: Path
    tolerance: float


def parse_created(created: str, *, where: Path) -> datetime:
    """The `created` field as an aware UTC datetime; a ValueError naming the file if unusable."""
    if not created:
        raise ValueError(f"{where}: no 'created' time, so it cannot be placed on the time axis; "
                         f"re-save it with this version of perf-harness")
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: 'created' is {created!r}, expected an ISO 8601 time such as "
                         f"2026-01-31T02:00:00+00:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _point(metric_id: str, results: RunResults, path: Path, source: Source) -> Point:
    metric = results.metrics[metric_id]
    q1, q3 = quartiles(metric.samples)
    # The band the verdict uses without an explicit tolerance: the metric's own or its kind's.
    tolerance = choose_tolerance(metric.kind, own=metric.tolerance).value
    return Point(metric_id=metric_id, created=parse_created(results.created, where=path),
                 median=metric.median, q1=q1, q3=q3, unit=metric.unit, better=metric.better,
                 source=source, path=path, tolerance=tolerance)


def metric_history(directory: Path, fingerprint: str, metric: str,
                   results_paths: Sequence[Path] = ()) -> list[Point]:
    """The metric's points, oldest first, from the baseline history and saved results files.

    `metric` is a full metric id or a substring matching exactly one (every point carries the
    resolved id). Results files must share the fingerprint: another hardware's numbers on the
    same axis would draw a false trend.
    """
    entries: list[tuple[Path, RunResults, Source]] = [
        (path, results, "baseline") for path, results in store.history(directory, fingerprint)]
    if not entries and not results_paths:
        raise unknown_fingerprint(directory, fingerprint)
    for path in results_paths:
        results = store.load_results(path)
        if results.fingerprint != fingerprint:
            raise ValueError(f"{path}: recorded on {results.fingerprint!r}, not {fingerprint!r}; "
                             f"plot only files of one hardware")
        entries.append((path, results, "results"))
    all_ids = {mid for _, results, _ in entries for mid in results.metrics}
    metric_id = find_metric_id(all_ids, metric, where=f"{fingerprint} ({len(entries)} files)")
    points = [_point(metric_id, results, path, source)
              for path, results, source in entries if metric_id in results.metrics]
    points.sort(key=lambda point: point.created)
    return points


def axis_scale(unit: str, values: Sequence[float]) -> tuple[str, float]:
    """(unit shown on the axis, factor to multiply values by) so tick labels stay readable."""
    largest = max((abs(v) for v in values), default=0.0)
    if unit == "s":
        for below, shown, factor in SECONDS_SCALES:
            if largest < below:
                return shown, factor
    if unit in ("B", "bytes"):
        return "GiB", 1 / BYTES_PER_GIB
    return unit, 1.0


def _import_matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), or the install hint as a ValueError: the extra is optional."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(MATPLOTLIB_MISSING) from None
    return Figure, FigureCanvasAgg


def draw_trend(points: Sequence[Point], output: Path, *, fingerprint: str) -> Path:
    """Write the trend PNG: medians with IQR bars, the latest baseline's tolerance band shaded."""
    if not points:
        raise ValueError(f"points: nothing to draw for {fingerprint!r}; give at least one point")
    metric_id = points[0].metric_id
    figure_class, canvas_class = _import_matplotlib()
    shown_unit, factor = axis_scale(points[0].unit, [p.median for p in points])
    figure = figure_class(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    canvas_class(figure)  # the Agg canvas: renders to PNG without a display
    axes = figure.add_subplot()

    baselines = [p for p in points if p.source == "baseline"]
    if baselines:
        latest = baselines[-1]
        low = latest.median * (1 - latest.tolerance) * factor
        high = latest.median * (1 + latest.tolerance) * factor
        axes.axhspan(low, high, color="tab:green", alpha=0.15,
                     label=f"latest baseline ±{format_percent(latest.tolerance)}")
        axes.axhline(latest.median * factor, color="tab:green", linewidth=1, linestyle="--")

    times = [p.created for p in points]
    axes.plot(times, [p.median * factor for p in points], color="0.6", linewidth=1, zorder=1)
    for source, color, marker in (("baseline", "tab:blue", "o"), ("results", "tab:orange", "s")):
        chosen = [p for p in points if p.source == source]
        if not chosen:
            continue
        medians = [p.median * factor for p in chosen]
        error = [[(p.median - p.q1) * factor for p in chosen],
                 [(p.q3 - p.median) * factor for p in chosen]]
        axes.errorbar([p.created for p in chosen], medians, yerr=error, fmt=marker, color=color,
                      capsize=3, label=f"{source} (median, IQR)", zorder=2)

    _, name = split_metric_id(metric_id)
    axes.set_title(f"{metric_id}\non {fingerprint}", fontsize=10)
    axes.set_xlabel("recorded (UTC)")
    axes.set_ylabel(f"{name} ({shown_unit}, {points[0].better} is better)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    check_output(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, format="png")
    except OSError as exc:
        raise ValueError(f"{output}: cannot be written ({exc.strerror or exc}); choose a "
                         f"writable path with -o, such as /tmp/trend.png") from None
    return output


def check_output(output: Path) -> None:
    """A ValueError when `output` cannot become a PNG: it is a directory, a FIFO or another
    thing that is not a regular file (a missing file is fine: it is created)."""
    problem = file_problem(output)
    if problem is None:
        return
    example = output / "trend.png" if output.is_dir() else Path("trend.png")
    raise ValueError(f"-o {output}: {problem}; give the PNG file to write, such as {example}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m harness plot`."""
    parser.add_argument("fingerprint", metavar="FINGERPRINT")
    parser.add_argument("metric", metavar="METRIC",
                        help="a full metric id or a part that matches only one")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIRECTORY,
                        help=f"baselines directory (default: {DEFAULT_DIRECTORY})")
    parser.add_argument("--results", type=Path, nargs="+", action="extend", default=[],
                        metavar="RESULTS.json", help="saved results files to add (--perf-save)")
    parser.add_argument("-o", "--output", type=Path, default=Path("trend.png"),
                        help="PNG to write (default: trend.png)")


def run(args: argparse.Namespace) -> int:
    """Gather the points, draw them, say where the picture is."""
    check_output(args.output)  # before the work, so a wrong -o costs nothing
    points = metric_history(args.dir, args.fingerprint, args.metric, args.results)
    output = draw_trend(points, args.output, fingerprint=args.fingerprint)
    print(f"wrote {output}: {points[0].metric_id}, {len(points)} points")
    return 0
