"""The host a run measured on: CPU model and count, the process's CPU affinity against the GPU's
NUMA node, and a calibration of under a second (kernel launch rate, a Python dispatch loop, a
pageable host-to-device copy).

Between fresh machines of one GPU model, host-bound training steps were measured 35-65% apart and
pageable copies +-15% while GEMMs moved 2-5%: the host is a variable of its own. Recording it
beside every run lets the verdict say "the host differs" for a host-bound metric instead of
calling the code slower, and lets a person see why two runs disagree. The NUMA check follows the
handbook's advice (pin each process to the CPUs of its GPU's NUMA node, read through NVML).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

# Repetitions of each calibration probe after WARMUP_REPEATS unrecorded ones; the fastest counts.
# A probe measures what the host can do, which preemption or a CPU clock still ramping up only
# slows: the first of three calibrations in one process on an H200 host read dispatch 101 us and
# launch 9.5 us, the next two 47 us and 7.0 us (medians of 5, 2026-12-02).
CALIBRATION_REPEATS = 7
WARMUP_REPEATS = 3
# Seconds each probe is also run unrecorded before it counts. Three warm-up repeats (~15-50 ms)
# were not enough: a fresh process on an H200 host read dispatch 96 us and launch 11.4 us in its
# first calibration (best of 7 after 3 warm-ups) and 51-54 us and 7.4-8.0 us in the next three,
# 0.3 s later (2026-12-02); the slow phase lasted over 50 ms and under 0.3 s after CUDA's start.
# Only on CUDA, where the calibration is judged; a CPU session keeps its start fast.
WARMUP_SECONDS = 0.3
# Tiny kernels launched per repetition of the launch probe: ~2-10 ms of host work at 5-20 us
# per launch, long enough to average the clock's granularity, short enough for the budget.
LAUNCHES_PER_REPEAT = 400
# Iterations of the Python dispatch probe: ~5 ms of interpreter work on a current server core.
DISPATCH_ITERATIONS = 50_000
# Bytes of the pageable copy probe: 64 MiB streams through the staging buffer many times, so the
# figure is the host's memcpy-and-DMA rate, not a fixed cost.
PAGEABLE_COPY_BYTES = 64 * 2**20

def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Platinum 8480C"), or the platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_ranges(cpus: set[int] | list[int]) -> str:
    """CPU numbers as ranges, as taskset and numactl print them: {0,1,2,5} -> "0-2,5"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    first = 0
    while first < len(ordered):
        last = first
        while last + 1 < len(ordered) and ordered[last + 1] == ordered[last] + 1:
            last += 1
        parts.append(str(ordered[first]) if first == last
                     else f"{ordered[first]}-{ordered[last]}")
        first = last + 1
    return ",".join(parts)


def process_affinity() -> set[int]:
    """The CPUs this process may run on (all CPUs where the OS cannot say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def gpu_cpu_affinity(cuda_index: int) -> set[int] | None:
    """The CPUs of the GPU's NUMA node as NVML reports them, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
        count = os.cpu_count() or 1
        words = pynvml.nvmlDeviceGetCpuAffinity(handle, (count + 63) // 64)
    except Exception:  # NVML absent, no GPU of that index, a driver without the call
        return None
    cpus = {64 * index + bit for index, word in enumerate(words) for bit in range(64)
            if int(word) >> bit & 1}
    return cpus or None


def describe_host(cuda_index: int | None) -> dict[str, Any]:
    """CPU model and count, this process's affinity and, with a GPU, its NUMA node's CPUs and
    whether the process runs only there (`numa_ok`; None when NVML cannot say)."""
    affinity = process_affinity()
    host: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": cpu_ranges(affinity),
        "affinity_count": len(affinity),
    }
    gpu_cpus = gpu_cpu_affinity(cuda_index) if cuda_index is not None else None
    host["gpu_numa_cpus"] = None if gpu_cpus is None else cpu_ranges(gpu_cpus)
    host["numa_ok"] = None if gpu_cpus is None else affinity <= gpu_cpus
    return host


def numa_warning(host: dict[str, Any]) -> str | None:
    """A warning when the process may run on CPUs outside its GPU's NUMA node, else None."""
    if host.get("numa_ok") is not False:
        return None
    return (f"this process may run on CPUs {host['affinity']}, but its GPU is attached to the "
            f"NUMA node of CPUs {host['gpu_numa_cpus']}: host-side time (launches, copies, "
            f"data loading) pays cross-node latency. Pin it, e.g. `numactl "
            f"--cpunodebind=<node> pytest ...` or `taskset -c {host['gpu_numa_cpus']}`")


def calibrate_host(device: str) -> dict[str, float]:
    """The host's speed in three probes, each the best of CALIBRATION_REPEATS: kernel launches
    (CUDA only), a Python call loop, and a pageable host-to-device copy (CUDA only)."""
    warmup = WARMUP_SECONDS if device == "cuda" else 0.0
    result = {"dispatch_us": _best_of(_dispatch_probe, "lower", warmup)}
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            result["launch_us"] = _best_of(_launch_probe, "lower", warmup)
            result["pageable_h2d_gbps"] = _best_of(_pageable_copy_probe, "higher", warmup)
    return result


def _best_of(probe: Callable[[], float], better: str, warmup_seconds: float) -> float:
    """The best reading of CALIBRATION_REPEATS after at least WARMUP_REPEATS unrecorded runs and
    `warmup_seconds` of them (one-time costs, a CPU clock still ramping up)."""
    start = time.perf_counter()
    warmups = 0
    while warmups < WARMUP_REPEATS or time.perf_counter() - start < warmup_seconds:
        probe()
        warmups += 1
    readings = [probe() for _ in range(CALIBRATION_REPEATS)]
    return min(readings) if better == "lower" else max(readings)


def _dispatch_probe() -> float:
    def call(value: int) -> int:
        return value + 1

    start = time.perf_counter()
    value = 0
    for _ in range(DISPATCH_ITERATIONS):
        value = call(value)
    return (time.perf_counter() - start) / DISPATCH_ITERATIONS * 1e3 * 1e6


def _launch_probe() -> float:
    import torch

    tensor = torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(LAUNCHES_PER_REPEAT):
        tensor.add_(1)
    host_seconds = time.perf_counter() - start
    torch.cuda.synchronize()
    return host_seconds / LAUNCHES_PER_REPEAT * 1e6


def _pageable_copy_probe() -> float:
    import torch

    source = torch.empty(PAGEABLE_COPY_BYTES, dtype=torch.uint8)
    source.fill_(1)
    target = torch.empty_like(source, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    target.copy_(source)
    torch.cuda.synchronize()
    return PAGEABLE_COPY_BYTES / (time.perf_counter() - start) / 1e9
