"""`python -m harness plot`: gathering a metric's history (pure) and drawing it as a PNG."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness import cli
from harness.cli import plot
from harness.gate import store
from harness.gate.results import Metric, RunResults

H100 = "nvidia-h100-80gb-hbm3-x1"
STEP_TIME = "perf_tests/test_gpt2.py::test_train_step::step_time"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def step_time(median: float) -> Metric:
    # Quartiles (inclusive method) at 0.99 and 1.01 of the median.
    samples = tuple(median * f for f in (0.98, 0.99, 1.00, 1.01, 1.02))
    return Metric(name="step_time", unit="s", better="lower", kind="time", samples=samples,
                  tolerance=0.04)


def run(kind: str, created: str, median: float, fingerprint: str = H100) -> RunResults:
    return RunResults(kind=kind, fingerprint=fingerprint, created=created,  # type: ignore[arg-type]
                      environment={"torch": "2.13.0"}, metrics={STEP_TIME: step_time(median)})


@pytest.fixture
def baselines_dir(tmp_path: Path) -> Path:
    """Two history files and the current baseline, written in this order: 100, 102, 104 ms."""
    directory = tmp_path / "baselines"
    for created, median in (("2026-01-01T02:00:00+00:00", 0.100),
                            ("2026-02-01T02:00:00Z", 0.102),
                            ("2026-03-01T02:00:00+00:00", 0.104)):
        store.write_baseline(directory, run("baseline", created, median))
    return directory


@pytest.fixture
def nightly_results(tmp_path: Path) -> list[Path]:
    """Two nightly results files, given out of time order: 10 Mar (108 ms) before 5 Mar (106)."""
    later = tmp_path / "results" / "nightly-0310.json"
    earlier = tmp_path / "results" / "nightly-0305.json"
    store.save_results(later, run("results", "2026-03-10T02:00:00+00:00", 0.108))
    store.save_results(earlier, run("results", "2026-03-05T02:00:00+00:00", 0.106))
    return [later, earlier]


def test_metric_history_orders_baselines_and_results_by_created_time(baselines_dir,
                                                                     nightly_results):
    points = plot.metric_history(baselines_dir, H100, "step_time", nightly_results)
    assert [p.created.day for p in points] == [1, 1, 1, 5, 10]
    assert [p.created.month for p in points] == [1, 2, 3, 3, 3]
    assert [p.median for p in points] == pytest.approx([0.100, 0.102, 0.104, 0.106, 0.108])
    assert [p.source for p in points] == ["baseline"] * 3 + ["results"] * 2
    assert points[2].path == store.baseline_path(baselines_dir, H100)
    assert {p.metric_id for p in points} == {STEP_TIME}


def test_metric_history_points_carry_quartiles_and_tolerance(baselines_dir):
    first = plot.metric_history(baselines_dir, H100, STEP_TIME)[0]
    assert (first.q1, first.median, first.q3) == pytest.approx((0.099, 0.100, 0.101))
    assert first.tolerance == 0.04
    assert first.unit == "s"
    assert first.created == datetime(2026, 1, 1, 2, tzinfo=timezone.utc)


def test_metric_history_refuses_results_of_other_hardware(baselines_dir, tmp_path):
    foreign = tmp_path / "a100.json"
    store.save_results(foreign, run("results", "2026-03-05T02:00:00+00:00", 0.2,
                                    fingerprint="nvidia-a100-sxm4-80gb-x1"))
    with pytest.raises(ValueError, match="a100.json: recorded on 'nvidia-a100-sxm4-80gb-x1'"):
        plot.metric_history(baselines_dir, H100, "step_time", [foreign])


def test_metric_history_of_an_unknown_fingerprint_lists_the_known_ones(baselines_dir):
    with pytest.raises(ValueError, match=f"known fingerprints in .*: {H100}"):
        plot.metric_history(baselines_dir, "nvidia-b200-x8", "step_time")


def test_created_time_that_is_missing_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="old.json: no 'created' time"):
        plot.parse_created("", where=tmp_path / "old.json")
    with pytest.raises(ValueError, match="old.json: 'created' is 'yesterday'"):
        plot.parse_created("yesterday", where=tmp_path / "old.json")


def test_axis_scale_shows_step_times_in_ms_and_bytes_in_gib():
    assert plot.axis_scale("s", [0.1, 0.12]) == ("ms", 1e3)
    assert plot.axis_scale("s", [2e-5]) == ("us", 1e6)
    assert plot.axis_scale("s", [3.0]) == ("s", 1.0)
    assert plot.axis_scale("B", [2**34]) == ("GiB", 2**-30)
    assert plot.axis_scale("TFLOP/s", [400.0]) == ("TFLOP/s", 1.0)


def test_plot_command_writes_a_png(baselines_dir, nightly_results, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "out" / "trend.png"
    argv = ["plot", H100, "step_time", "--dir", str(baselines_dir), "-o", str(output),
            "--results", *map(str, nightly_results)]
    assert cli.main(argv) == 0
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # Bare axes of this size are about 12 kB; the points, band, legend and labels add far more.
    assert len(data) > 25_000, len(data)
    assert f"wrote {output}: {STEP_TIME}, 5 points" in capsys.readouterr().out


def test_missing_matplotlib_names_the_extra_to_install(baselines_dir, tmp_path, monkeypatch):
    # A None entry in sys.modules makes that import raise ImportError; submodules imported by
    # an earlier test would otherwise still be found.
    for name in ["matplotlib", *[m for m in sys.modules if m.startswith("matplotlib.")]]:
        monkeypatch.setitem(sys.modules, name, None)
    points = plot.metric_history(baselines_dir, H100, "step_time")
    with pytest.raises(ValueError) as error:
        plot.draw_trend(points, tmp_path / "trend.png", fingerprint=H100)
    assert str(error.value) == "matplotlib is not installed: pip install 'perf-harness[plot]'"
    assert not (tmp_path / "trend.png").exists()


def test_output_onto_a_directory_exits_2_before_any_work(baselines_dir, tmp_path, capsys):
    assert cli.main(["plot", H100, "step_time", "--dir", str(baselines_dir),
                     "-o", str(tmp_path)]) == 2
    assert (f"error: -o {tmp_path}: is a directory, not a regular file; give the PNG file to "
            f"write, such as {tmp_path / 'trend.png'}") in capsys.readouterr().err


def test_output_onto_a_fifo_exits_2_without_blocking(baselines_dir, tmp_path, capsys):
    fifo = tmp_path / "trend.png"
    os.mkfifo(fifo)
    assert cli.main(["plot", H100, "step_time", "--dir", str(baselines_dir),
                     "-o", str(fifo)]) == 2
    assert f"-o {fifo}: is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


def test_output_that_cannot_be_written_exits_2_naming_it(baselines_dir, tmp_path, monkeypatch,
                                                         capsys):
    matplotlib_figure = pytest.importorskip("matplotlib.figure")

    def refuse(self: object, path: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(matplotlib_figure.Figure, "savefig", refuse)  # a read-only place
    output = tmp_path / "trend.png"
    assert cli.main(["plot", H100, "step_time", "--dir", str(baselines_dir),
                     "-o", str(output)]) == 2
    assert (f"error: {output}: cannot be written (Permission denied); choose a writable path "
            f"with -o") in capsys.readouterr().err


def test_output_under_a_file_exits_2_naming_it(baselines_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    output = tmp_path / "notes.txt" / "trend.png"
    assert cli.main(["plot", H100, "step_time", "--dir", str(baselines_dir),
                     "-o", str(output)]) == 2
    assert (f"error: -o {output}: cannot exist: a part of its path is a file, not a directory"
            in capsys.readouterr().err)
