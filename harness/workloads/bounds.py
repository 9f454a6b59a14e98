"""The datasheet bounds a measured fraction is taken of: a GPU's dense peak FLOP/s and its
memory bandwidth, with a clear error for a GPU the table lacks (never a guessed bound)."""

from __future__ import annotations

from harness.theory.hardware import GPUSpec

# How to add a GPU the table lacks, for both errors below.
_HOW_TO_REGISTER = "register it with harness.theory.hardware.register_gpu(GPUSpec(...))"


def peak_flops_of(gpu: GPUSpec | None, dtype: str) -> float:
    """Dense peak FLOP/s of the GPU for `dtype`; a clear error when the GPU is not in the
    table (a fraction of peak needs the right peak, never a guessed one)."""
    if gpu is None:
        raise ValueError(f"the GPU is not in harness.theory.hardware's table, so its {dtype} "
                         f"peak is unknown; {_HOW_TO_REGISTER}")
    return float(gpu.peak_flops(dtype))


def memory_bandwidth_of(gpu: GPUSpec | None) -> float:
    """Datasheet memory bandwidth (bytes/s) of the GPU; a clear error when it is not in the
    table."""
    if gpu is None:
        raise ValueError(f"the GPU is not in harness.theory.hardware's table, so its memory "
                         f"bandwidth is unknown; {_HOW_TO_REGISTER}")
    return float(gpu.memory_bandwidth_bytes_per_s)
