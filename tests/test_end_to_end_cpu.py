"""The whole loop on a CPU with the real clock: measure, save, record a baseline, re-run against it.

No fake clock here: a small matmul is timed by HostClock (`--perf-device cpu`), so this is the
path a user's CPU run takes, from the `perf` fixture through timing, the verdict and the store
to the terminal report.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.gate import store
from harness.measure import environment

MATMUL_TEST = """
import torch

# 128 x 128 x 128: about 4 MFLOP, tens of microseconds on one core; many samples fit in the budget.
N = 128


def test_small_matmul(perf):
    # One thread: OpenMP threads spin while they wait, and on a busy 2-core CI box two of them
    # stall each other for whole scheduler ticks; a single thread measures the matmul, not that.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measure(perf)
    finally:
        torch.set_num_threads(threads)


def measure(perf):
    generator = torch.Generator().manual_seed(0)
    # Random operands: timing a matmul of zeros measures a different machine (see DESIGN.md).
    a = torch.randn(N, N, generator=generator)
    b = torch.randn(N, N, generator=generator)
    # Tolerance 2.0 (a 200% change): the CPU suite runs on a shared 2-core CI box, where the
    # neighbouring job can make a small matmul several times slower between the two runs. This
    # test checks the loop from fixture to report, not the speed of the CI machine.
    measured = perf.time(lambda: torch.mm(a, b), name="matmul", flops=2 * N**3, tolerance=2.0)
    assert measured["matmul"].count >= 10
    assert measured["matmul"].unit == "s"
"""

NODEID = "test_matmul.py::test_small_matmul"

# Sampling budget of the measurement in seconds: 0.2 s gives a few hundred samples of a
# ~50 us matmul on a CI core and keeps the two runs of this test near one second.
BUDGET = "0.2"


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same CPU run on a GPU machine: the plugin is told no CUDA device is visible."""
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


def test_measure_save_record_and_rerun_against_the_baseline(pytester: pytest.Pytester,
                                                           tmp_path: Path) -> None:
    pytester.makepyfile(test_matmul=MATMUL_TEST)
    baselines = tmp_path / "baselines"
    common = ("-p", "harness.pytest_plugin", "-p", "no:cacheprovider", "--perf-device=cpu",
              f"--perf-budget={BUDGET}", f"--perf-baselines={baselines}")

    first = pytester.runpytest(*common, "--perf-update-baselines",
                               f"--perf-save={tmp_path / 'first.json'}")
    first.assert_outcomes(passed=1)
    assert first.ret == 0
    cpu = environment.cpu_fingerprint()
    first.stdout.fnmatch_lines([f"wrote {baselines / f'{cpu}.json'} (2 metric(s))",
                                f"new baseline for {cpu}: 2 metrics",
                                f"{NODEID}::matmul *s*added"])
    saved = store.load_results(tmp_path / "first.json")
    baseline = store.load_baseline(baselines, cpu)
    assert baseline is not None and baseline.kind == "baseline"
    assert set(saved.metrics) == set(baseline.metrics) == {f"{NODEID}::matmul",
                                                           f"{NODEID}::matmul_tflops"}
    assert baseline.metrics[f"{NODEID}::matmul"].samples == saved.metrics[
        f"{NODEID}::matmul"].samples
    assert baseline.metrics[f"{NODEID}::matmul"].tolerance == 2.0

    second = pytester.runpytest(*common, f"--perf-save={tmp_path / 'second.json'}")
    second.assert_outcomes(passed=1)
    assert second.ret == 0
    second.stdout.fnmatch_lines([
        f"against {baselines / f'{cpu}.json'} (hardware fingerprint {cpu})",
        "test*metric*baseline*measured*change*verdict",
        f"{NODEID}*matmul *s*s*%*",
        f"{NODEID}*matmul_tflops*FLOP/s*FLOP/s*%*",
    ])
    rerun = store.load_results(tmp_path / "second.json")
    assert rerun.kind == "results" and rerun.fingerprint == cpu
    assert rerun.metrics[f"{NODEID}::matmul"].samples != saved.metrics[
        f"{NODEID}::matmul"].samples, "the second run must measure anew, not reuse samples"
