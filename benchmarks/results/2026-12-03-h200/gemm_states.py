"""Where does a GEMM's run-to-run spread come from: the process, its operands' placement, or time?

In one process, for each of three GEMMs (SwiGLU 10944, tf32 square, qkv): allocate four operand
sets one after another (each kept alive, with a spacer allocation between, so that each lands
elsewhere), measure each as `perf.time` measures, then the first set again; read the SM clock
after each measurement. Prints one JSON line: per GEMM, `[set, median us, median of the first 10
samples us, SM clock MHz]` for each of the five measurements. Run it in several fresh processes:
`for i in $(seq 8); do python3 gemm_states.py >> states.jsonl; done`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

START = time.perf_counter()

import pynvml  # noqa: E402  (imported after START: the import time is part of the record)
import torch  # noqa: E402

from harness.measure.clocks import default_clock  # noqa: E402
from harness.measure.sampling import TimingPolicy, measure_time  # noqa: E402
from harness.workloads.gemm import (  # noqa: E402
    LLAMA_7B_LAYER_GEMMS,
    SQUARE_GEMM,
    SWIGLU_ALIGNED,
    gemm_operands,
    tf32_matmul,
)

SHAPES = [("swiglu10944", SWIGLU_ALIGNED, torch.bfloat16, False),
          ("tf32sq", SQUARE_GEMM, torch.float32, True),
          ("qkv", LLAMA_7B_LAYER_GEMMS[0], torch.bfloat16, False)]


def main(sets: int) -> None:
    imported = time.perf_counter() - START
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    device = "cuda"
    clock, policy = default_clock(device), TimingPolicy()
    record: dict[str, object] = {"pid": os.getpid(), "import_s": round(imported, 2)}
    spacers = []
    for label, shape, dtype, tf32 in SHAPES:
        operands = []
        for index in range(sets):
            a, b = gemm_operands(shape, dtype, device, seed=index)
            out = torch.empty(shape.m, shape.n, dtype=dtype, device=device)
            operands.append((a, b, out))
            spacers.append(torch.empty(7_000_000 * (index + 1), dtype=torch.uint8,
                                       device=device))
        rows = []
        for index in [*range(sets), 0]:
            a, b, out = operands[index]
            with tf32_matmul(tf32):
                seconds = measure_time(lambda a=a, b=b, out=out: torch.matmul(a, b, out=out),
                                       clock=clock, policy=policy, device=device)
            sm_clock = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
            rows.append((index, round(statistics.median(seconds) * 1e6, 2),
                         round(statistics.median(seconds[:10]) * 1e6, 2), sm_clock))
        record[label] = rows
    record["total_s"] = round(time.perf_counter() - START, 2)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
