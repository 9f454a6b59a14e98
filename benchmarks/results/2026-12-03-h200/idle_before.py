"""Does an idle pause before a GEMM's measurement change what it measures?

The SwiGLU test measures the d_ff=10922 GEMM, then the 10944 one; between them, the measurement's
garbage collection leaves the GPU idle for as long as it takes. Here: 10922, then a pause of 0,
0.1, 0.3 or 1.0 s, then 10944, each measured as `perf.time` measures it; four passes over the
pauses. Prints, per pause, the 10944 and 10922 medians in microseconds.
"""

from __future__ import annotations

import statistics
import time

import torch

from harness.measure.clocks import CudaEventClock
from harness.measure.sampling import TimingPolicy, measure_time
from harness.workloads.gemm import SWIGLU_ALIGNED, SWIGLU_MISALIGNED, gemm_operands

DEVICE = "cuda"
PAUSES = (0.0, 1.0, 0.1, 0.3)


def main() -> None:
    clock, policy = CudaEventClock(DEVICE), TimingPolicy()
    operands = {}
    for shape in (SWIGLU_MISALIGNED, SWIGLU_ALIGNED):
        a, b = gemm_operands(shape, torch.bfloat16, DEVICE)
        operands[shape.n] = (a, b, torch.empty(shape.m, shape.n, dtype=torch.bfloat16,
                                               device=DEVICE))

    def median_us(width: int) -> float:
        a, b, out = operands[width]
        seconds = measure_time(lambda: torch.matmul(a, b, out=out), clock=clock, policy=policy,
                               device=DEVICE)
        return round(statistics.median(seconds) * 1e6, 1)

    rows: dict[float, list[tuple[float, float]]] = {pause: [] for pause in sorted(PAUSES)}
    for _ in range(4):
        for pause in PAUSES:
            first = median_us(SWIGLU_MISALIGNED.n)
            time.sleep(pause)
            rows[pause].append((first, median_us(SWIGLU_ALIGNED.n)))
    for pause, pairs in rows.items():
        aligned = [pair[1] for pair in pairs]
        print(f"pause {pause:>4} s: 10944 medians {aligned} mean {statistics.fmean(aligned):.1f}; "
              f"10922 {[pair[0] for pair in pairs]}", flush=True)


if __name__ == "__main__":
    main()
