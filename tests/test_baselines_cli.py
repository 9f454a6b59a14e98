"""`python -m harness baselines list | show | history` on a baselines directory with history."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import cli
from harness.gate import store
from harness.gate.lookup import find_metric_id
from harness.gate.results import Metric, RunResults

H100 = "nvidia-h100-80gb-hbm3-x1"
A100 = "nvidia-a100-sxm4-80gb-x1"
STEP_TIME = "perf_tests/test_gpt2.py::test_train_step::step_time"
PEAK = "perf_tests/test_gpt2.py::test_train_step::peak_allocated_bytes"


def step_time(median: float) -> Metric:
    # Five samples symmetric around the median: median exact, IQR = 2% of it.
    samples = tuple(median * f for f in (0.98, 0.99, 1.00, 1.01, 1.02))
    return Metric(name="step_time", unit="s", better="lower", kind="time", samples=samples,
                  tolerance=0.03)


def peak_bytes(value: float) -> Metric:
    return Metric(name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
                  samples=(value,))


def baseline(fingerprint: str, created: str, metrics: dict[str, Metric], *,
             gpu: str = "NVIDIA H100 80GB HBM3") -> RunResults:
    return RunResults(kind="baseline", fingerprint=fingerprint, created=created,
                      environment={"gpu_name": gpu, "torch": "2.13.0"}, metrics=metrics)


@pytest.fixture
def baselines_dir(tmp_path: Path) -> Path:
    """H100: three refreshes (step time 100 -> 105 -> 110 ms; peak memory only in the last two);
    A100: one baseline."""
    directory = tmp_path / "baselines"
    store.write_baseline(directory, baseline(H100, "2026-01-01T02:00:00+00:00",
                                             {STEP_TIME: step_time(0.100)}))
    store.write_baseline(directory, baseline(H100, "2026-02-01T02:00:00+00:00",
                                             {STEP_TIME: step_time(0.105),
                                              PEAK: peak_bytes(20 * 2**30)}))
    store.write_baseline(directory, baseline(H100, "2026-03-01T02:00:00+00:00",
                                             {STEP_TIME: step_time(0.110),
                                              PEAK: peak_bytes(20 * 2**30)}))
    store.write_baseline(directory, baseline(A100, "2026-01-10T02:00:00+00:00",
                                             {STEP_TIME: step_time(0.200)},
                                             gpu="NVIDIA A100-SXM4-80GB"))
    return directory


def run_baselines(monkeypatch: pytest.MonkeyPatch, *argv: str | Path) -> int:
    """The real command-line dispatcher."""
    return cli.main(["baselines", *map(str, argv)])


def test_list_prints_fingerprints_with_counts_dates_gpu_and_torch(baselines_dir, monkeypatch,
                                                                   capsys):
    assert run_baselines(monkeypatch, "list", "--dir", baselines_dir) == 0
    lines = capsys.readouterr().out.splitlines()
    h100 = next(line for line in lines if line.startswith(H100))
    a100 = next(line for line in lines if line.startswith(A100))
    assert h100.split()[1:3] == ["2", "2026-03-01T02:00:00+00:00"]
    assert "NVIDIA H100 80GB HBM3" in h100 and "2.13.0" in h100
    assert a100.split()[1] == "1" and "NVIDIA A100-SXM4-80GB" in a100


def test_dir_is_accepted_before_the_action(baselines_dir, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "--dir", baselines_dir, "list") == 0
    assert H100 in capsys.readouterr().out


def test_list_of_a_missing_directory_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere"
    assert run_baselines(monkeypatch, "list", "--dir", missing) == 2
    assert str(missing) in capsys.readouterr().err


def test_list_of_an_empty_directory_says_how_to_record(tmp_path, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "list", "--dir", tmp_path) == 0
    assert "--perf-update-baselines" in capsys.readouterr().out


def test_show_prints_median_spread_count_tolerance_and_unit(baselines_dir, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "show", H100, "--dir", baselines_dir) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(STEP_TIME))
    # median 110 ms; IQR 2% of it (quartiles at 0.99 and 1.01); 5 samples; stored 3%; seconds.
    assert row.split()[1:] == ["110", "ms", "2.0", "%", "5", "3.0", "%", "s"]
    memory = next(line for line in out.splitlines() if line.startswith(PEAK))
    assert "(default)" in memory  # no stored tolerance: the memory kind's default applies


def test_show_accepts_a_path(baselines_dir, monkeypatch, capsys):
    path = store.baseline_path(baselines_dir, A100)
    assert run_baselines(monkeypatch, "show", path) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: baseline for {A100}")
    assert STEP_TIME in out


def test_show_of_an_unknown_fingerprint_lists_the_known_ones(baselines_dir, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "show", "nvidia-b200-x8", "--dir", baselines_dir) == 2
    err = capsys.readouterr().err
    assert "nvidia-b200-x8" in err
    assert f"{A100}, {H100}" in err


def test_show_of_a_corrupted_file_exits_2_with_the_store_message(baselines_dir, monkeypatch,
                                                                 capsys):
    path = store.baseline_path(baselines_dir, H100)
    path.write_text(path.read_text()[:100])
    assert run_baselines(monkeypatch, "show", H100, "--dir", baselines_dir) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "truncated" in err


def test_history_prints_medians_oldest_first_with_change_vs_previous(baselines_dir, monkeypatch,
                                                                     capsys):
    assert run_baselines(monkeypatch, "history", H100, "step_time", "--dir", baselines_dir) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{STEP_TIME} [s, lower is better], 3 files")
    rows = [line for line in out.splitlines() if line.startswith("2026-")]
    assert [row.split()[0] for row in rows] == ["2026-01-01T02:00:00+00:00",
                                                "2026-02-01T02:00:00+00:00",
                                                "2026-03-01T02:00:00+00:00"]
    assert rows[0].split()[2:4] == ["100", "ms"]
    assert rows[1].split()[-2:] == ["+5.0", "%"]        # 105 / 100
    assert rows[2].split()[-2:] == ["+4.8", "%"]        # 110 / 105
    assert rows[2].split()[1] == f"{H100}.json"         # the current file comes last


def test_history_marks_files_without_the_metric_as_absent(baselines_dir, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "history", H100, PEAK, "--dir", baselines_dir) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("2026-")]
    assert "absent" in rows[0]
    assert rows[1].split()[2:4] == ["20", "GiB"] and "%" not in rows[1].split()[-1]
    assert rows[2].split()[-2:] == ["+0.0", "%"]


def test_history_with_an_ambiguous_substring_lists_the_matches(baselines_dir, monkeypatch,
                                                               capsys):
    assert run_baselines(monkeypatch, "history", H100, "test_train_step", "--dir",
                         baselines_dir) == 2
    err = capsys.readouterr().err
    assert "matches 2 metric ids" in err and STEP_TIME in err and PEAK in err


def test_history_of_an_unknown_metric_lists_the_metric_ids(baselines_dir, monkeypatch, capsys):
    assert run_baselines(monkeypatch, "history", H100, "mfu", "--dir", baselines_dir) == 2
    err = capsys.readouterr().err
    assert "no metric id contains 'mfu'" in err and STEP_TIME in err


def test_history_of_an_unknown_fingerprint_lists_the_known_ones(baselines_dir, monkeypatch,
                                                                capsys):
    assert run_baselines(monkeypatch, "history", "nvidia-b200-x8", "step_time", "--dir",
                         baselines_dir) == 2
    assert f"{A100}, {H100}" in capsys.readouterr().err


def test_find_metric_id_prefers_an_exact_match_over_substrings():
    ids = ["a::step_time", "a::step_time_p90"]
    assert find_metric_id(ids, "a::step_time", where="here") == "a::step_time"
    assert find_metric_id(ids, "p90", where="here") == "a::step_time_p90"
    with pytest.raises(ValueError, match="here: 'step' matches 2 metric ids"):
        find_metric_id(ids, "step", where="here")


def test_dir_that_is_a_file_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    not_a_directory = tmp_path / "baselines.json"
    not_a_directory.write_text("{}")
    assert run_baselines(monkeypatch, "list", "--dir", not_a_directory) == 2
    assert (f"error: {not_a_directory}: is a regular file, not a directory; pass --dir with "
            f"the directory") in capsys.readouterr().err


def test_show_of_a_fifo_exits_2_without_blocking(tmp_path, monkeypatch, capsys):
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    assert run_baselines(monkeypatch, "show", fifo) == 2
    assert f"error: {fifo}: is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


def test_list_with_a_dangling_link_exits_2_naming_it(baselines_dir, monkeypatch, capsys):
    link = baselines_dir / "nvidia-b200-x8.json"
    link.symlink_to(baselines_dir / "gone.json")
    assert run_baselines(monkeypatch, "list", "--dir", baselines_dir) == 2
    assert (f"error: {link}: is a symbolic link to '{baselines_dir / 'gone.json'}', which does "
            f"not exist") in capsys.readouterr().err


def test_history_leaves_out_a_replaced_unreadable_baseline(tmp_path, monkeypatch, capsys):
    directory = tmp_path / "baselines"
    directory.mkdir()
    store.baseline_path(directory, H100).write_text("{damaged")
    store.write_baseline(directory, baseline(H100, "2026-03-01T02:00:00+00:00",
                                             {STEP_TIME: step_time(0.110)}))
    assert run_baselines(monkeypatch, "history", H100, "step_time", "--dir", directory) == 0
    assert f"{STEP_TIME} [s, lower is better], 1 files" in capsys.readouterr().out
