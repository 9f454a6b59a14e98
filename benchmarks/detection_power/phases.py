"""The three phases: a bf16 GEMM's TFLOP/s, a training step's time and its peak memory, each
recorded as a baseline, given calibrated injections, and re-measured under every condition."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.detection_power.bench import (
    Bench,
    gemm_metrics,
    phase_result,
    record_reference,
    run_repetitions,
    standalone_seconds,
)
from benchmarks.detection_power.design import MEMORY_POLICY, SEED
from benchmarks.detection_power.injections import (
    PROBE_K,
    ExtraGemm,
    HeldAllocation,
    InjectedModel,
    Injection,
    calibrate_k,
    held_allocation_bytes,
    random_matrix,
)
from harness.gate.results import Metric
from harness.measure.sampling import TimingPolicy
from harness.measure.train_step import measure_train_step
from harness.model import build_model, lm_loss, random_batch
from harness.theory.config import TransformerConfig
from harness.workloads.gemm import GemmShape
from harness.workloads.training import TRAINING_LR


def calibrate_gemm_injections(bench: Bench, reference_seconds: float, mn: int, *,
                              added_seconds: Callable[[Injection], float] | None = None
                              ) -> tuple[dict[str, Injection], dict[str, dict[str, Any]]]:
    """An extra GEMM per injected condition that costs that fraction of `reference_seconds`,
    and what it cost after calibration. The cost is the GEMM's time alone, or with
    `added_seconds` what it adds where it is injected (a training step hides part of an extra
    kernel in the gaps where the GPU waits for the host)."""
    dtype, device = bench.sizes.dtype, bench.device
    probe = ExtraGemm(mn, mn, PROBE_K, dtype, device)
    seconds_per_k = standalone_seconds(bench, probe.run) / PROBE_K
    del probe
    where = "alone" if added_seconds is None else "in the step"

    def time_k(k: int) -> float:
        extra = ExtraGemm(mn, mn, k, dtype, device)
        if added_seconds is None:
            return standalone_seconds(bench, extra.run)
        return added_seconds(extra)

    injections: dict[str, Injection] = {}
    injected: dict[str, dict[str, Any]] = {}
    for condition in bench.conditions:
        if condition.fraction == 0:
            continue
        target = condition.fraction * reference_seconds
        k, seconds = calibrate_k(target, time_k, seconds_per_k=seconds_per_k)
        extra = ExtraGemm(mn, mn, k, dtype, device)
        injections[condition.name] = extra
        injected[condition.name] = {
            "kind": "extra GEMM",
            "shape": dataclasses.asdict(extra.shape),
            "flops": extra.shape.flops,
            "seconds": seconds,
            "measured": where,
            "reference_seconds": reference_seconds,
            "injected_fraction": seconds / reference_seconds,
        }
    return injections, injected


def paired_added_seconds(step_seconds: Callable[[Injection | None], float],
                         extra: Injection) -> float:
    """What `extra` adds to a step: the step's time with it minus the time of an unchanged
    step measured just before. Not minus the phase's baseline: taken in a slow moment of a
    shared host, that one measurement makes every injection look free (on an H200 the baseline
    step read 94.4 ms while most unchanged ones read 85-90 ms, and the calibration then took
    GEMMs that added about 2% and 9% for ones adding -0.3% to 0.3%, 2026-11-21)."""
    unchanged = step_seconds(None)
    return step_seconds(extra) - unchanged


def describe_gemm_injections(injected: dict[str, dict[str, Any]]) -> str:
    """"+3% = 3.01% (k=3968), ...": what each calibrated extra GEMM costs, for the log."""
    return ", ".join(f"{name} = {info['injected_fraction']:.2%} (k={info['shape']['k']})"
                     for name, info in injected.items())


@dataclass(frozen=True)
class GemmWorkload:
    """The GEMM phase's workload: the base GEMM on fixed random operands, measured as the fixture
    measures `perf.time(fn, flops=...)`, alone or followed by an injected extra GEMM."""

    shape: GemmShape
    base: Callable[[], None]

    def measure(self, bench: Bench, injection: Injection | None) -> dict[str, Metric]:
        """`gemm` and `gemm_tflops` with the bench's clock and policy; TFLOP/s always counts
        the base FLOPs, not the extra GEMM's: throughput drops as a real regression's would."""
        if injection is None:
            return gemm_metrics(self.base, self.shape.flops, bench)
        extra = injection

        def with_extra() -> None:
            self.base()
            extra.run()

        return gemm_metrics(with_extra, self.shape.flops, bench)


def gemm_workload(bench: Bench) -> GemmWorkload:
    """The base GEMM of the bench's sizes, its operands allocated once on the bench's device."""
    shape, dtype, device = bench.sizes.gemm, bench.sizes.dtype, bench.device
    a = random_matrix(shape.m, shape.k, dtype, device)
    b = random_matrix(shape.k, shape.n, dtype, device, seed=SEED + 3)
    out = torch.empty(shape.m, shape.n, dtype=dtype, device=device)

    def base() -> None:
        torch.matmul(a, b, out=out)

    return GemmWorkload(shape=shape, base=base)


def gemm_injections(bench: Bench, workload: GemmWorkload, base_seconds: float, phase: str
                    ) -> tuple[dict[str, Injection], dict[str, dict[str, Any]]]:
    """The extra GEMMs of every injected condition, each timed alone to cost its fraction of
    `base_seconds`, with their FLOPs as a share of the base GEMM's; logged under `phase`."""
    shape = workload.shape
    injections, injected = calibrate_gemm_injections(bench, base_seconds,
                                                     bench.sizes.gemm_extra_mn)
    for info in injected.values():
        info["flops_fraction"] = info["flops"] / shape.flops
    bench.log(f"{phase}: baseline {shape.flops / base_seconds / 1e12:.1f} TFLOP/s; injected "
              + describe_gemm_injections(injected))
    return injections, injected


def gemm_workload_json(bench: Bench) -> dict[str, Any]:
    """The GEMM workload as JSON."""
    return {"gemm": dataclasses.asdict(bench.sizes.gemm), "dtype": str(bench.sizes.dtype),
            "extra_gemm_mn": bench.sizes.gemm_extra_mn}


def run_gemm_phase(bench: Bench) -> dict[str, Any]:
    """Baseline, calibration and repetitions of the GEMM's TFLOP/s (always the base FLOPs)."""
    start = time.perf_counter()
    workload = gemm_workload(bench)

    def measure(injection: Injection | None) -> dict[str, Metric]:
        return workload.measure(bench, injection)

    warmup, baseline = record_reference(bench, measure)
    base_seconds = statistics.median(baseline["metrics"]["gemm"]["samples"])
    injections, injected = gemm_injections(bench, workload, base_seconds, "gemm")
    order, repetitions = run_repetitions(bench, "gemm", measure, injections, injected,
                                         "gemm_tflops", baseline)
    return phase_result("gemm_tflops", gemm_workload_json(bench), warmup, baseline, injected,
                        order, repetitions, time.perf_counter() - start)


@dataclass
class Training:
    """A model wrapped for injection, its optimizer, one fixed batch, and a `measure` that runs
    `measure_train_step` with one injection (or none) in the step."""

    model: InjectedModel
    optimizer: torch.optim.Optimizer
    inputs: tuple[torch.Tensor, torch.Tensor]
    measure: Callable[[Injection | None], dict[str, Metric]]
    workload: dict[str, Any]


def build_training(bench: Bench, config: TransformerConfig, batch: int, seq: int, *,
                   policy: TimingPolicy) -> Training:
    """A training step of `config` on `batch` x `seq` tokens on the bench's device, as the
    suite's training tests run it, ready to be measured with `policy`."""
    sizes, device = bench.sizes, bench.device
    torch.manual_seed(SEED)
    model = InjectedModel(build_model(config, device=device, dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_LR)
    generator = torch.Generator(device=device).manual_seed(SEED)
    inputs = random_batch(config, batch, seq, device=device, generator=generator)

    def measure(injection: Injection | None) -> dict[str, Metric]:
        model.injection = injection
        try:
            return measure_train_step(model, inputs, lm_loss, optimizer, clock=bench.clock,
                                      policy=policy, device=device,
                                      autocast_dtype=sizes.autocast_dtype)
        finally:
            model.injection = None
            if injection is not None:
                injection.release()

    autocast = None if sizes.autocast_dtype is None else str(sizes.autocast_dtype)
    workload = {"model": config.name, "batch": batch, "seq": seq, "autocast_dtype": autocast,
                "optimizer": "adamw", "lr": TRAINING_LR}
    return Training(model=model, optimizer=optimizer, inputs=inputs, measure=measure,
                    workload=workload)


def run_train_phase(bench: Bench) -> dict[str, Any]:
    """Baseline, calibration and repetitions of the training step's time; the extra GEMM runs
    inside the step, at the start of the forward pass."""
    start = time.perf_counter()
    sizes = bench.sizes
    training = build_training(bench, sizes.train_config, sizes.train_batch, sizes.train_seq,
                              policy=bench.policy)
    warmup, baseline = record_reference(bench, training.measure)
    step_seconds = statistics.median(baseline["metrics"]["step_time"]["samples"])

    def median_step(injection: Injection | None) -> float:
        return statistics.median(training.measure(injection)["step_time"].samples)

    injections, injected = calibrate_gemm_injections(
        bench, step_seconds, bench.sizes.train_extra_mn,
        added_seconds=lambda extra: paired_added_seconds(median_step, extra))
    bench.log(f"train: baseline step {step_seconds * 1e3:.2f} ms; injected "
              + describe_gemm_injections(injected))
    order, repetitions = run_repetitions(bench, "train", training.measure, injections,
                                         injected, "step_time", baseline)
    workload = dict(training.workload, extra_gemm_mn=bench.sizes.train_extra_mn)
    return phase_result("step_time", workload, warmup, baseline, injected, order, repetitions,
                        time.perf_counter() - start)


# Why the memory phase needs a GPU (also the JSON's "skipped" text for CPU runs).
MEMORY_NEEDS_CUDA = ("peak memory is tracked by torch's CUDA caching allocator only; "
                     "measure_train_step records no memory metric on CPU")


def run_memory_phase(bench: Bench) -> dict[str, Any]:
    """Baseline and repetitions of the training step's peak allocated memory; the injection is a
    tensor of that fraction of the baseline peak, allocated in the step and held through it."""
    if bench.device != "cuda":
        return {"skipped": MEMORY_NEEDS_CUDA}
    start = time.perf_counter()
    sizes = bench.sizes
    training = build_training(bench, sizes.memory_config, sizes.memory_batch, sizes.memory_seq,
                              policy=MEMORY_POLICY)
    warmup, baseline = record_reference(bench, training.measure)
    peak = statistics.median(baseline["metrics"]["peak_allocated_bytes"]["samples"])
    injections: dict[str, Injection] = {}
    injected: dict[str, dict[str, Any]] = {}
    for condition in bench.conditions:
        if condition.fraction == 0:
            continue
        nbytes = held_allocation_bytes(condition.fraction, peak)
        injections[condition.name] = HeldAllocation(nbytes, bench.device)
        injected[condition.name] = {"kind": "held allocation", "bytes": nbytes,
                                    "reference_bytes": peak, "injected_fraction": nbytes / peak}
    bench.log(f"memory: baseline peak {peak / 2**30:.2f} GiB; injected "
              + ", ".join(f"{name} = {info['bytes'] / 2**20:.0f} MiB"
                          for name, info in injected.items()))
    order, repetitions = run_repetitions(bench, "memory", training.measure, injections,
                                         injected, "peak_allocated_bytes", baseline)
    return phase_result("peak_allocated_bytes", training.workload, warmup, baseline, injected,
                        order, repetitions, time.perf_counter() - start)


PHASE_RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "gemm": run_gemm_phase,
    "train": run_train_phase,
    "memory": run_memory_phase,
}
