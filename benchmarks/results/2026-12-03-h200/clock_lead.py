"""Does the time `CudaEventClock` gives a GEMM include the host's launch of a sample's first call?

The GPU is idle when a sample's start event is recorded (the previous sample ended in a
synchronisation), so the first call's launch latency could be part of the time. Each GEMM is
measured as `perf.time` measures it, three times each way, alternating: plain events with 1 ms
samples (as the suite does), plain events with 10 ms samples (the launch diluted tenfold), the
queued clock (calls queued behind a GPU spin of 1 ms plus 150 us per call), and plain events
after a spin of 1e6 GPU cycles before each start event. Prints one line per GEMM: the medians in
microseconds per way.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import torch

from harness.measure.clocks import CudaEventClock, QueuedCudaEventClock
from harness.measure.sampling import TimingPolicy, measure_time
from harness.workloads.gemm import (
    LLAMA_7B_LAYER_GEMMS,
    SQUARE_GEMM,
    SWIGLU_ALIGNED,
    gemm_operands,
    tf32_matmul,
)

DEVICE = "cuda"
SPIN_CYCLES = 1_000_000


class SpinLeadClock(CudaEventClock):
    """`CudaEventClock` with a GPU spin queued before each start event."""

    name = "cuda-events, spin lead"

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        torch.cuda._sleep(SPIN_CYCLES)  # queued ahead of the start event that super() records
        return super().time(fn, iterations)


def main() -> None:
    policy = TimingPolicy()
    long_samples = dataclasses.replace(policy, min_sample_seconds=10e-3)
    shapes = [("swiglu10944", SWIGLU_ALIGNED, torch.bfloat16, False),
              ("qkv", LLAMA_7B_LAYER_GEMMS[0], torch.bfloat16, False),
              ("bf16sq", SQUARE_GEMM, torch.bfloat16, False),
              ("tf32sq", SQUARE_GEMM, torch.float32, True)]
    for label, shape, dtype, tf32 in shapes:
        a, b = gemm_operands(shape, dtype, DEVICE)
        out = torch.empty(shape.m, shape.n, dtype=dtype, device=DEVICE)
        queued = QueuedCudaEventClock(DEVICE)
        ways = (("plain", CudaEventClock(DEVICE), policy),
                ("plain10ms", CudaEventClock(DEVICE), long_samples),
                ("queued", queued, policy),
                ("spinlead", SpinLeadClock(DEVICE), policy))
        medians: dict[str, list[float]] = {name: [] for name, _, _ in ways}
        started = time.perf_counter()

        def gemm(a: torch.Tensor = a, b: torch.Tensor = b, out: torch.Tensor = out) -> None:
            torch.matmul(a, b, out=out)

        with tf32_matmul(tf32):
            for _ in range(3):
                for name, clock, chosen in ways:
                    seconds = measure_time(gemm, clock=clock, policy=chosen, device=DEVICE)
                    medians[name].append(round(statistics.median(seconds) * 1e6, 2))
        rows = {**medians, "queued_host_bound": f"{queued.host_bound_samples}/{queued.samples}",
                "seconds": round(time.perf_counter() - started, 1)}
        print(label, json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
