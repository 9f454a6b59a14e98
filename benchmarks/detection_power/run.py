"""One benchmark run: the selected phases and the fidelity check on one device, the document
rewritten after each, a plan and progress lines on the log."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
import torch

from benchmarks.detection_power.ab_phase import run_ab_phase
from benchmarks.detection_power.bench import Bench
from benchmarks.detection_power.design import (
    AB_PHASE,
    AB_POLICY,
    AB_TIME_BUDGET_SECONDS,
    CONDITIONS,
    CPU_SIZES,
    CPU_THREADS,
    CUDA_SIZES,
    QUICK_POLICY,
    SEED,
    TIME_BUDGET_SECONDS,
    Condition,
)
from benchmarks.detection_power.document import new_document, save_document
from benchmarks.detection_power.fidelity import run_fidelity
from benchmarks.detection_power.injections import CALIBRATION_STEPS
from benchmarks.detection_power.phases import PHASE_RUNNERS
from harness.gate.run_options import DEFAULT_AB_ROUNDS
from harness.measure.clocks import default_clock
from harness.measure.environment import run_environment
from harness.measure.gpu_state import GpuStateMonitor, NullGpuMonitor, default_gpu_monitor
from harness.measure.memory import release_cached_memory
from harness.measure.sampling import TimingPolicy


@dataclass(frozen=True)
class Options:
    """The command line of a benchmark run, validated."""

    out: Path
    device: str
    repeats: int
    phases: tuple[str, ...]
    quick: bool


def gpu_monitor(device: str, log: Callable[[str], None]) -> GpuStateMonitor:
    """The fixture's GPU monitor for `device`; a null one (and a note) when NVML is unusable."""
    try:
        return default_gpu_monitor(device)
    except (ValueError, pynvml.NVMLError) as exc:
        log(f"no GPU state recorded: NVML is not usable ({exc})")
        return NullGpuMonitor()


# Every phase by name; the A/B phase reuses the GEMM phase's workload and injections.
RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {**PHASE_RUNNERS, AB_PHASE: run_ab_phase}


def planned_measurements(options: Options, conditions: Sequence[Condition]) -> int:
    """Measurements with the run's policy, those of the timed phases that run: a throwaway
    one and a baseline each, repeats x conditions (not the A/B phase's runs, see
    `planned_ab_runs`), a probe and the calibration steps of every injected condition. (The
    memory phase measures with the short MEMORY_POLICY.)"""
    injected = sum(1 for c in conditions if c.fraction > 0)
    repetitions = options.repeats * len(conditions)
    # Each calibration step of the training step measures an unchanged step and an injected one.
    per_phase = {"gemm": 2 + repetitions + 1 + CALIBRATION_STEPS * injected,
                 "train": 2 + repetitions + 1 + 2 * CALIBRATION_STEPS * injected,
                 AB_PHASE: 2 + 1 + CALIBRATION_STEPS * injected}
    return sum(per_phase[phase] for phase in options.phases if phase in per_phase)


def planned_ab_runs(options: Options, conditions: Sequence[Condition]) -> int:
    """The A/B phase's runs at most: two per round, DEFAULT_AB_ROUNDS rounds per comparison,
    `repeats` comparisons per condition (most stop after fewer rounds)."""
    return 2 * DEFAULT_AB_ROUNDS * options.repeats * len(conditions)


def run_benchmark(options: Options, *, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the selected phases and the fidelity check; the JSON is rewritten after each. CPU
    runs use CPU_THREADS threads, restored afterwards."""
    threads = torch.get_num_threads()
    if options.device == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        return _run_phases(options, log=log)
    finally:
        torch.set_num_threads(threads)


def _run_phases(options: Options, *, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = CUDA_SIZES if options.device == "cuda" else CPU_SIZES
    policy = QUICK_POLICY if options.quick else TimingPolicy()
    ab_policy = QUICK_POLICY if options.quick else AB_POLICY
    clock = default_clock(options.device)
    torch.manual_seed(SEED)
    bench = Bench(device=options.device, clock=clock, policy=policy, ab_policy=ab_policy,
                  monitor=gpu_monitor(options.device, log), sizes=sizes, conditions=CONDITIONS,
                  repeats=options.repeats, started=started, log=log)
    data = new_document(device=options.device, quick=options.quick, repeats=options.repeats,
                        policy=policy, conditions=CONDITIONS, sizes=sizes,
                        environment=run_environment(options.device), clock=clock.name)
    measurements = planned_measurements(options, CONDITIONS)
    log(f"plan: {measurements} measurements of at most ~"
        f"{policy.warmup_seconds + policy.budget_seconds:.2f} s of warmup and sampling each "
        f"(~{measurements * (policy.warmup_seconds + policy.budget_seconds):.0f} s), plus "
        f"untimed steps, the memory phase's short measurements and the fidelity check; "
        f"budget {TIME_BUDGET_SECONDS:.0f} s")
    if AB_PHASE in options.phases:
        runs = planned_ab_runs(options, CONDITIONS)
        run_seconds = ab_policy.warmup_seconds + ab_policy.budget_seconds
        log(f"plan: {AB_PHASE}: at most {runs} A/B runs of at most {run_seconds:.2f} s each "
            f"(less once {ab_policy.max_samples} samples are in; most comparisons stop before "
            f"{DEFAULT_AB_ROUNDS} rounds); sized for {AB_TIME_BUDGET_SECONDS:.0f} s")
    data["wall_seconds"]["setup"] = time.perf_counter() - started
    save_document(options.out, data)
    for phase in options.phases:
        phase_start = time.perf_counter()
        data["phases"][phase] = RUNNERS[phase](bench)
        release_cached_memory()
        data["wall_seconds"][phase] = time.perf_counter() - phase_start
        log(f"{phase}: done in {data['wall_seconds'][phase]:.1f} s "
            f"(total {time.perf_counter() - started:.1f} s of {TIME_BUDGET_SECONDS:.0f} s)")
        save_document(options.out, data)
    if "gemm" in options.phases:
        fidelity_start = time.perf_counter()
        data["fidelity"] = run_fidelity(bench)
        data["wall_seconds"]["fidelity"] = time.perf_counter() - fidelity_start
        log(f"fidelity: done in {data['wall_seconds']['fidelity']:.1f} s")
    data["wall_seconds"]["total"] = time.perf_counter() - started
    data["complete"] = True
    save_document(options.out, data)
    return data
