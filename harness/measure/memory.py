"""Device memory as torch sees it (caching allocator peaks) and as the driver sees it (NVML).

The two differ by what torch does not manage: the CUDA context, loaded kernel images, NCCL and
other libraries' buffers, typically 0.5-2 GB per process. Both matter for "does it still fit".
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import pynvml
import torch

from harness.checks import require_non_negative_int
from harness.measure.clocks import cuda_initialized, require_cuda_device
from harness.measure.gpu_state import nvml_handle


@dataclass(frozen=True)
class DeviceMemoryUsage:
    """Device memory in use according to NVML, and whether it is this process's alone."""

    used_bytes: int
    # False when NVML could not attribute memory to this process (no process list on MIG or in
    # some containers, where NVML reports host PIDs): `used_bytes` is then the whole device's usage.
    per_process: bool

    def describe(self) -> str:
        """One line for a Metric note: what the number covers."""
        if self.per_process:
            return "device memory of this process from NVML, CUDA context included"
        return ("NVML could not attribute memory to this process: this is the whole device's "
                "used memory, other processes included")


def release_cached_memory() -> None:
    """Collect garbage and hand torch's cached CUDA blocks back to the driver, so that what runs
    next starts with only its own memory reserved. Nothing to do while CUDA is uninitialised."""
    gc.collect()
    if cuda_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _check_index(index: object) -> int:
    checked = require_non_negative_int("index (a CUDA device index)", index)
    if not torch.cuda.is_available():
        raise ValueError(f"device memory of CUDA device {checked} needs CUDA, but "
                         f"torch.cuda.is_available() is False on this machine")
    count = torch.cuda.device_count()
    if checked >= count:
        raise ValueError(f"index={checked} is not a CUDA device of this process; valid indices "
                         f"are 0..{count - 1}")
    return checked


def device_memory_usage(index: int = 0) -> DeviceMemoryUsage:
    """This process's memory on CUDA device `index` from NVML, CUDA context included; the whole
    device's used memory (and `per_process=False`) when NVML cannot attribute it."""
    _check_index(index)
    try:
        handle = nvml_handle(index)  # initialises NVML (reference counted; shut down below)
    except pynvml.NVMLError as exc:
        raise ValueError(f"NVML is not usable on this machine ({exc}); device memory needs the "
                         f"NVIDIA driver's NVML library") from None
    try:
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:
            processes = []
        mine = [p.usedGpuMemory for p in processes
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        if mine:
            return DeviceMemoryUsage(used_bytes=int(sum(mine)), per_process=True)
        used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        return DeviceMemoryUsage(used_bytes=int(used), per_process=False)
    finally:
        pynvml.nvmlShutdown()


def device_memory_used_bytes(index: int = 0) -> int:
    """Bytes of device memory this process uses on CUDA device `index` (see
    `device_memory_usage` for the fallback to the whole device)."""
    return device_memory_usage(index).used_bytes


def cuda_context_bytes(index: int = 0) -> int | None:
    """Device memory of this process that torch does not see: NVML's figure minus
    `torch.cuda.memory_reserved()`. None when NVML cannot attribute memory to this process."""
    usage = device_memory_usage(index)
    if not usage.per_process:
        return None
    return usage.used_bytes - torch.cuda.memory_reserved(index)


def _check_cuda_device(device: str) -> torch.device:
    return require_cuda_device(device, "peak memory (tracked by torch's CUDA caching allocator)",
                               "expected 'cuda' or 'cuda:<index>'")


def reset_peak_memory(device: str) -> None:
    """Start a new peak: reset torch's max allocated/reserved counters of a CUDA device."""
    torch.cuda.reset_peak_memory_stats(_check_cuda_device(device))


def peak_memory(device: str) -> tuple[int, int]:
    """(peak allocated, peak reserved) bytes on a CUDA device since the last reset."""
    torch_device = _check_cuda_device(device)
    return (torch.cuda.max_memory_allocated(torch_device),
            torch.cuda.max_memory_reserved(torch_device))
