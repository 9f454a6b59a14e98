"""The result of every memory estimate, and what a GPU holds beyond it.

`MemoryBreakdown` is a named, ordered set of parts in bytes. The CUDA context and the
communication buffers are never in it (torch's allocator does not see them): `fits` adds them
back when asking whether an estimate fits on a device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.checks import require_non_negative_int, require_positive_int, require_text
from harness.theory.units import GIB

# Fixed overheads the torch allocator does not see. Source 001 measured the CUDA context of an
# 80GB A100 at 0.47 GiB (torch 2.1, lazy module loading) to 1.78 GiB (torch 1.10, eager loading)
# and summarises it as "0.5-2GB" depending on GPU and torch version.
CUDA_CONTEXT_BYTES_RANGE: tuple[int, int] = (int(0.47 * GIB), 2 * GIB)
# Source 001: torch.distributed takes "about 1-2GB" at initialisation, more with more GPUs; its
# 2-GPU NCCL example grows from 0.55 to 2.00 GiB of device memory at the first barrier.
DISTRIBUTED_BUFFER_BYTES_RANGE: tuple[int, int] = (1 * GIB, 2 * GIB)


def device_reserve_bytes(num_gpus: int) -> int:
    """Device memory to keep free beside torch's allocations: the CUDA context's upper end, plus
    NCCL's buffers when more than one GPU takes part (the upper ends of the source 001 ranges)."""
    require_positive_int("num_gpus", num_gpus)
    return CUDA_CONTEXT_BYTES_RANGE[1] + (DISTRIBUTED_BUFFER_BYTES_RANGE[1] if num_gpus > 1 else 0)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Named, ordered parts of a memory estimate in bytes; `total` is their sum.

    `phase` names the moment of a training step the parts describe, where the estimate is the
    peak over several (autocast precisions, `AUTOCAST_PHASES`); None otherwise.
    `implementation` says which implementation of a transformer block a training estimate
    models (`training_memory`'s implementation= argument); None where it does not apply.
    """

    parts: Mapping[str, int]
    phase: str | None = None
    implementation: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parts, Mapping):
            raise ValueError(f"parts must be a mapping of name to bytes, got {self.parts!r}")
        for name, value in self.parts.items():
            require_text("part name", name)
            require_non_negative_int(f"part {name!r}", value)
        for name in ("phase", "implementation"):
            if getattr(self, name) is not None:
                require_text(name, getattr(self, name))
        object.__setattr__(self, "parts", dict(self.parts))

    @property
    def total(self) -> int:
        """Sum of all parts, in bytes."""
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON: {"total_bytes": ..., "parts": {name: bytes, ...}}, plus
        "phase" and "implementation" when the breakdown has them."""
        result: dict[str, object] = {"total_bytes": self.total, "parts": dict(self.parts)}
        for name in ("phase", "implementation"):
            if getattr(self, name) is not None:
                result[name] = getattr(self, name)
        return result


def fits(breakdown: MemoryBreakdown, gpu_memory_bytes: int,
         reserve_bytes: int = CUDA_CONTEXT_BYTES_RANGE[1]) -> bool:
    """Whether `breakdown` plus `reserve_bytes` fits in `gpu_memory_bytes`.

    The default reserve is the upper end of the CUDA context range; add
    `DISTRIBUTED_BUFFER_BYTES_RANGE[1]` for multi-GPU runs.
    """
    if not isinstance(breakdown, MemoryBreakdown):
        raise ValueError(f"breakdown must be a MemoryBreakdown (from training_memory or "
                         f"inference_memory), got {type(breakdown).__name__}")
    require_positive_int("gpu_memory_bytes", gpu_memory_bytes)
    require_non_negative_int("reserve_bytes", reserve_bytes)
    return breakdown.total + reserve_bytes <= gpu_memory_bytes
