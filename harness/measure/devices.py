"""The GPUs this process can see: detection through torch or NVML, and the local GPU's spec.

Detection never raises: a machine without a GPU, a driver or NVML detects none. torch and pynvml
are imported inside the functions that need them, so importing this module costs nothing on a
machine without either.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_non_negative_int
from harness.theory.hardware import GPUSpec, gpu_spec

# The device types a run measures on, as `--perf-device` resolves them.
DEVICES: tuple[str, ...] = ("cuda", "cpu")


@dataclass(frozen=True)
class DetectedGPU:
    """A GPU visible to this process. `uuid` is as the source reports it: torch without and
    NVML with nvidia-smi's "GPU-" prefix; `num_sms` is known only through torch."""

    index: int
    name: str
    memory_bytes: int
    num_sms: int | None = None
    uuid: str | None = None


def nvml_text(value: object) -> str:
    """An NVML string as text: older pynvml releases return bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _detect_with_torch() -> list[DetectedGPU] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        uuid = getattr(properties, "uuid", None)
        gpus.append(DetectedGPU(index=index, name=properties.name,
                                memory_bytes=int(properties.total_memory),
                                num_sms=int(properties.multi_processor_count),
                                uuid=None if uuid is None else str(uuid)))
    return gpus


def _detect_with_nvml() -> list[DetectedGPU]:
    import pynvml

    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(DetectedGPU(
                index=index, name=nvml_text(pynvml.nvmlDeviceGetName(handle)),
                memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                uuid=nvml_text(pynvml.nvmlDeviceGetUUID(handle))))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def detect_gpus() -> list[DetectedGPU]:
    """The GPUs this process can use; [] on a machine without them, never an exception.

    torch.cuda first (it honours CUDA_VISIBLE_DEVICES and also sees ROCm devices); NVML when
    torch has no CUDA (a CPU build of torch on a GPU machine), whose indices are physical ones.
    """
    try:
        found = _detect_with_torch()
        if found is not None:
            return found
    except Exception:  # a broken driver or CUDA runtime means no usable GPU, not a crash
        pass
    try:
        return _detect_with_nvml()
    except Exception:  # no NVML library, no driver, or no NVIDIA GPU
        return []


def local_spec(index: int = 0) -> GPUSpec:
    """The spec of the detected GPU at `index`. A ValueError when there is no such GPU, when
    its name is unknown, or when its SM count differs from the table's (a MIG slice, or another
    variant sold under the same name) - its peak would then be wrong."""
    require_non_negative_int("index", index)
    gpus = detect_gpus()
    if not gpus:
        raise ValueError("no GPU detected (torch.cuda and NVML see none); local_spec needs one, "
                         "use gpu_spec(name) to look a GPU up by name")
    if index >= len(gpus):
        raise ValueError(f"index={index} but only {len(gpus)} GPU(s) are visible "
                         f"(valid: 0..{len(gpus) - 1})")
    detected = gpus[index]
    spec = gpu_spec(detected.name)
    if detected.num_sms is not None and detected.num_sms != spec.num_sms:
        raise ValueError(f"GPU {index} ({detected.name}) has {detected.num_sms} SMs but the "
                         f"table's {spec.name} has {spec.num_sms}: a MIG slice or a different "
                         f"variant, whose peak is not the table's; register its spec with "
                         f"harness.register_gpu(..., replace=True)")
    return spec
