"""`python -m harness explain`, and the kernel diff under the regressions `compare` and `ab`
print, and the anatomy in `baselines show`: on saved files with scripted kernel tables."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import cli
from harness.gate import ab, store
from harness.gate.anatomy import class_seconds
from harness.gate.profile import DeviceProfile, KernelRow
from harness.gate.results import Metric, RunResults

FINGERPRINT = "nvidia-h200"
NODE = "perf_tests/test_training.py::test_step[gpt-none]"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"
ADAM = ("void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, "
        "FusedAdamMathFunctor<float, 4>, float*>(x)")


def step_profile(gemm: float) -> DeviceProfile:
    rows = (KernelRow(GEMM, 96, gemm, "forward"), KernelRow(ADAM, 4, 0.003, "optimizer"))
    return DeviceProfile(steps=5, device_seconds=gemm + 0.003, idle_fraction=0.01,
                         host_issue_seconds=0.01, kernels=rows,
                         classes=class_seconds((r.name, r.seconds_per_step) for r in rows),
                         phases={"forward": gemm, "optimizer": 0.003})


def metrics(seconds: float, gemm: float) -> dict[str, Metric]:
    samples = tuple(seconds * (1 + 0.001 * i) for i in range(20))
    return {
        f"{NODE}::step_time": Metric(name="step_time", unit="s", better="lower", kind="time",
                                     samples=samples),
        f"{NODE}::device_time": Metric(name="device_time", unit="s", better="lower",
                                       kind="time", samples=samples,
                                       profile=step_profile(gemm)),
        f"{NODE}::peak_allocated_bytes": Metric(name="peak_allocated_bytes", unit="B",
                                                better="lower", kind="memory",
                                                samples=(2.0**30,)),
    }


def save(path: Path, seconds: float, gemm: float, *, fingerprint: str = FINGERPRINT) -> Path:
    store.save_results(path, RunResults(kind="results", fingerprint=fingerprint,
                                        environment={}, metrics=metrics(seconds, gemm),
                                        created="2026-12-01T00:00:00+00:00"))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A base run and a run whose GEMMs got 6 ms slower."""
    return (save(tmp_path / "main.json", 0.054, 0.050),
            save(tmp_path / "branch.json", 0.060, 0.056))


def test_explain_diffs_every_regressed_step_once(runs, capsys) -> None:
    assert cli.main(["explain", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert out.count("kernel diff of") == 1
    assert f"kernel diff of {NODE}::device_time (explains" in out
    assert "step_time" in out and "cause: kernels" in out
    assert any(line.startswith("gemm tn") and "+6 ms" in line for line in out.splitlines())


def test_explain_of_a_named_metric_diffs_its_step_even_without_a_regression(
        tmp_path, capsys) -> None:
    base = save(tmp_path / "a.json", 0.054, 0.050)
    same = save(tmp_path / "b.json", 0.054, 0.0502)
    assert cli.main(["explain", str(base), str(same)]) == 0
    assert "no regression; give METRIC to diff a step anyway" in capsys.readouterr().out
    assert cli.main(["explain", str(base), str(same), "step_time", "--anatomy"]) == 0
    out = capsys.readouterr().out
    assert "cause: nothing beyond its noise" in out
    assert f"anatomy of {NODE}::device_time (base)" in out and "(new)" in out


def test_explain_in_markdown_for_a_pull_request(runs, capsys) -> None:
    assert cli.main(["explain", *map(str, runs), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**") and "| gemm tn" in out and "|---" in out


@pytest.mark.parametrize(("query", "message"), [
    ("no_such_metric", "no metric id contains 'no_such_metric'"),
    ("peak_allocated_bytes", "no kernel table explains it (a memory metric"),
])
def test_explain_of_a_metric_it_cannot_explain_exits_2_saying_why(runs, capsys, query,
                                                                  message) -> None:
    assert cli.main(["explain", *map(str, runs), query]) == 2
    assert message in capsys.readouterr().err


def test_explain_of_a_missing_file_exits_2_naming_it(tmp_path, runs, capsys) -> None:
    assert cli.main(["explain", str(tmp_path / "none.json"), str(runs[1])]) == 2
    assert "none.json" in capsys.readouterr().err


def test_explain_across_hardware_needs_a_metric_and_says_so(tmp_path, runs, capsys) -> None:
    other = save(tmp_path / "h100.json", 0.060, 0.056, fingerprint="nvidia-h100")
    assert cli.main(["explain", str(runs[0]), str(other)]) == 2
    assert cli.main(["explain", str(runs[0]), str(other), "step_time"]) == 0
    assert "different hardware" in capsys.readouterr().out


def test_compare_prints_the_kernel_diff_under_its_table(runs, capsys) -> None:
    assert cli.main(["compare", *map(str, runs)]) == 1
    out = capsys.readouterr().out
    assert out.index("regression") < out.index(f"kernel diff of {NODE}::device_time")


def test_baselines_show_prints_the_anatomy_of_profiled_steps(runs, capsys) -> None:
    assert cli.main(["baselines", "show", str(runs[0])]) == 0
    anatomy = capsys.readouterr().out.split("anatomy of the profiled steps")[1]
    (row,) = [line.split() for line in anatomy.splitlines() if line.startswith(NODE)]
    # step, then GEMM/attn ... other, GPU idle: 50 of 53.5 ms in GEMMs, 1% idle.
    assert row[1:4] == ["53.54", "ms", "93.4"] and row[-2:] == ["1.0", "%"]


def test_ab_prints_the_kernel_diff_over_its_rounds(tmp_path, monkeypatch, capsys) -> None:
    def results(seconds: float, gemm: float) -> RunResults:
        return RunResults(kind="results", fingerprint=FINGERPRINT, environment={},
                          metrics=metrics(seconds, gemm))

    @contextlib.contextmanager
    def worktree(repo: Path, ref: str) -> Iterator[tuple[str, Path]]:
        yield "0123456789abcdef", tmp_path

    def runner(tree: Path, args: object, save_path: Path) -> RunResults:
        slow = tree != tmp_path  # head runs in the working tree, base in the "worktree"
        rounds = len(list(save_path.parent.glob("*.json")))
        save_path.touch()
        jitter = 1 + 0.001 * rounds
        return results(0.060 * jitter, 0.056 * jitter) if slow \
            else results(0.054 * jitter, 0.050 * jitter)

    monkeypatch.chdir(tmp_path / "..")
    monkeypatch.setattr(ab, "repository_root", lambda here: here)
    monkeypatch.setattr(ab, "worktree", worktree)
    monkeypatch.setattr(ab, "PytestRunner", lambda: runner)
    code = cli.main(["ab", "main", "--keep", str(tmp_path / "runs"), "--", "-m", "gpu"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"kernel diff of {NODE}::device_time" in out
    assert "per-run spread" in out and "gemm tn" in out
