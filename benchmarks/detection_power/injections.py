"""The injected regressions: an extra GEMM (calibrated to cost a fraction of the baseline's time)
or a held allocation (a fraction of its peak), and a model wrapper that runs one per forward."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from benchmarks.detection_power.design import SEED
from harness.checks import require_positive, require_positive_int
from harness.workloads.gemm import GemmShape

# The extra GEMM's reduction dimension k moves in steps of 64 elements: the K tile of cuBLAS's
# bf16 tensor-core kernels on Hopper is 64, so every tile stays full and time grows linearly in k.
K_MULTIPLE = 64
# k of the probe GEMM that gives the first estimate of seconds per unit of k.
PROBE_K = 4096
# Measurements per injected fraction while calibrating k: k <- k * target / measured converges
# geometrically (by the ratio of the GEMM's fixed cost to its total), two steps land within a
# few tenths of a percent of the step's time, far finer than the 3% to 10% being injected.
CALIBRATION_STEPS = 2

# The caching allocator hands out blocks in multiples of 512 bytes (CUDACachingAllocator's
# kMinBlockSize): the held allocation is rounded up to it, so the peak grows by exactly its size.
ALLOCATION_GRANULARITY = 512


class Injection(Protocol):
    """Extra work added to the measured function: `run` once per call, `release` afterwards."""

    def run(self) -> None:
        """Do the extra work once."""
        ...

    def release(self) -> None:
        """Free whatever `run` keeps alive."""
        ...


def random_matrix(rows: int, cols: int, dtype: torch.dtype, device: str,
                  seed: int = SEED) -> torch.Tensor:
    """A random normal matrix: never time zeros, which some GPUs multiply faster."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(rows, cols, dtype=dtype, device=device, generator=generator)


class ExtraGemm:
    """An extra GEMM of preallocated random operands, written into a preallocated output.

    Autocast is switched off around it, so the same kernel runs inside a training step's
    autocast region as when it is calibrated alone.
    """

    def __init__(self, m: int, n: int, k: int, dtype: torch.dtype, device: str) -> None:
        for name, value in (("m", m), ("n", n), ("k", k)):
            require_positive_int(f"ExtraGemm {name}", value)
        self.shape = GemmShape("extra", m, n, k)
        self.device_type = torch.device(device).type
        self.a = random_matrix(m, k, dtype, device, seed=SEED + 1)
        self.b = random_matrix(k, n, dtype, device, seed=SEED + 2)
        self.out = torch.empty(m, n, dtype=dtype, device=device)

    def run(self) -> None:
        """One extra GEMM."""
        with torch.autocast(device_type=self.device_type, enabled=False):
            torch.matmul(self.a, self.b, out=self.out)

    def release(self) -> None:
        """Nothing to free: the operands live as long as the injection."""


class HeldAllocation:
    """An extra tensor of `nbytes`, allocated and written at every `run` and held until the next
    one (or `release`): a buffer that lives through the whole training step."""

    def __init__(self, nbytes: int, device: str) -> None:
        self.nbytes = require_positive_int("nbytes", nbytes)
        self.device = device
        self.tensor: torch.Tensor | None = None

    def run(self) -> None:
        """Drop the previous buffer, then allocate and fill a new one (real memory, touched)."""
        self.tensor = None
        self.tensor = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        self.tensor.fill_(1)

    def release(self) -> None:
        """Free the buffer."""
        self.tensor = None


def held_allocation_bytes(fraction: float, reference_bytes: float) -> int:
    """Bytes of an allocation that is `fraction` of `reference_bytes`, rounded up to the
    allocator's block granularity."""
    require_positive("fraction", fraction)
    require_positive("reference_bytes", reference_bytes)
    blocks = math.ceil(fraction * reference_bytes / ALLOCATION_GRANULARITY)
    return blocks * ALLOCATION_GRANULARITY


class InjectedModel(torch.nn.Module):
    """The measured model with optional extra work at the start of every forward pass: the
    injected regression of a training step. Its parameters are exactly the model's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.injection: Injection | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The injection's extra work, then the model's logits for `tokens`."""
        if self.injection is not None:
            self.injection.run()
        logits: torch.Tensor = self.model(tokens)
        return logits


def calibrate_k(target_seconds: float, time_k: Callable[[int], float], *,
                seconds_per_k: float, k_multiple: int = K_MULTIPLE,
                steps: int = CALIBRATION_STEPS) -> tuple[int, float]:
    """The k (a multiple of `k_multiple`) whose measured time `time_k(k)` is closest to
    `target_seconds`, and that time; each step rescales k by target / measured."""
    require_positive("target_seconds", target_seconds)
    require_positive("seconds_per_k", seconds_per_k)
    require_positive_int("steps", steps)
    best: tuple[int, float] | None = None
    tried: set[int] = set()
    for _ in range(steps):
        k = max(k_multiple, round(target_seconds / seconds_per_k / k_multiple) * k_multiple)
        if k in tried:
            break
        tried.add(k)
        seconds = time_k(k)
        if best is None or abs(seconds - target_seconds) < abs(best[1] - target_seconds):
            best = (k, seconds)
        # Measured in a step, a small extra GEMM can vanish into the step's idle gaps (or the
        # noise): no cost measured, so try twice the k.
        seconds_per_k = seconds / k if seconds > 0 else seconds_per_k / 2
    assert best is not None
    return best
