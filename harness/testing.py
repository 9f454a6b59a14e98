"""Test doubles for measuring without a GPU: a seeded clock and a scripted GPU monitor.

Override the plugin's fixtures with them in a conftest.py to test measured tests, or anything
above the clock, on any machine:

    @pytest.fixture
    def perf_clock():
        return FakeClock(seed=0, base_seconds=1e-3)

    @pytest.fixture
    def perf_gpu_monitor():
        return FakeGpuMonitor(throttle_reasons=["HwThermalSlowdown"], throttled_snapshots=2)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from harness.checks import (
    require_non_negative,
    require_non_negative_int,
    require_positive,
    require_positive_int,
)
from harness.measure.gpu_state import NVML_THROTTLE_REASONS


class FakeClock:
    """Seeded synthetic durations for tests without a GPU; `fn` is still called every time.

    Each `time(fn, n)` returns `n * base_seconds * slowdown * (1 + e)` with e drawn from a
    normal distribution N(0, noise_cv) by `random.Random(seed)`; draws with 1 + e <= 0 are
    redrawn (a truncated normal), so durations stay positive at any noise level. The same seed
    gives the same durations, and a `slowdown` scales every one of them exactly. `now()` is the
    synthetic time spent so far, so that warmup and budget run on the fake clock too.
    """

    name = "fake"

    def __init__(self, seed: int, base_seconds: float, noise_cv: float = 0.01,
                 slowdown: float = 1.0) -> None:
        self.seed = require_non_negative_int("FakeClock seed", seed)
        self.base_seconds = require_positive("FakeClock base_seconds", base_seconds)
        self.noise_cv = require_non_negative("FakeClock noise_cv (0.01 is 1% noise)", noise_cv)
        self.slowdown = require_positive("FakeClock slowdown", slowdown)
        self.calls = 0
        self.elapsed = 0.0
        self._random = random.Random(seed)

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Call `fn` `iterations` times and return a synthetic duration for them."""
        require_positive_int("iterations", iterations)
        for _ in range(iterations):
            fn()
        self.calls += iterations
        factor = 1.0 + self._random.gauss(0.0, self.noise_cv)
        while factor <= 0.0:
            factor = 1.0 + self._random.gauss(0.0, self.noise_cv)
        seconds = iterations * self.base_seconds * self.slowdown * factor
        self.elapsed += seconds
        return seconds

    def now(self) -> float:
        """Synthetic seconds spent in `time` so far: a monotonic clock for warmup and budget."""
        return self.elapsed


class FakeGpuMonitor:
    """A scripted GPU for tests without one: its first `throttled_snapshots` snapshots report
    `throttle_reasons` (all of them when None), later ones a healthy GPU.

    A measurement takes a snapshot before and one after, so `throttled_snapshots=2` throttles the
    first attempt only (the retry is clean) and `throttled_snapshots=4` both attempts.
    """

    # A healthy H100 SXM under load: 1980 MHz is its max SM clock; 60 C and 500 W are typical
    # of a dense GEMM (nvidia-smi on a DGX H100).
    HEALTHY: dict[str, Any] = {"sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980,
                               "temperature_c": 60, "power_w": 500.0, "throttle_reasons": []}

    def __init__(self, *, throttle_reasons: Sequence[str] = (),
                 throttled_snapshots: int | None = None) -> None:
        unknown = [r for r in throttle_reasons if r not in NVML_THROTTLE_REASONS]
        if unknown or isinstance(throttle_reasons, str):
            raise ValueError(f"throttle_reasons must be a list of NVML reason names "
                             f"({', '.join(NVML_THROTTLE_REASONS)}), got {throttle_reasons!r}")
        if throttled_snapshots is not None:
            require_non_negative_int("throttled_snapshots (None: always)", throttled_snapshots)
        self.throttle_reasons = list(throttle_reasons)
        self.throttled_snapshots = throttled_snapshots
        self.snapshots_taken = 0

    def snapshot(self) -> dict[str, Any]:
        """The next scripted state; a throttled one also shows the lower clock and higher heat."""
        self.snapshots_taken += 1
        throttled = bool(self.throttle_reasons) and (
            self.throttled_snapshots is None or self.snapshots_taken <= self.throttled_snapshots)
        if not throttled:
            return dict(self.HEALTHY, throttle_reasons=[])
        # 1410 MHz and 87 C: what an H100 SXM reports in thermal slowdown (its slowdown
        # threshold is 87 C in `nvidia-smi -q -d TEMPERATURE`).
        return dict(self.HEALTHY, sm_clock_mhz=1410, temperature_c=87,
                    throttle_reasons=list(self.throttle_reasons))


def saved_activation_bytes(model: Any, forward_and_loss: Callable[[], Any], *,
                           flash_attention: bool = True) -> int:
    """Bytes autograd saves for backward while `forward_and_loss()` runs `model` under CPU bf16
    autocast: floating-point storages with at least one dimension, each counted once (views and
    shared tensors share a data pointer), the fp32 parameters excluded (model states, not
    activations; their bf16 copies are counted). What activation-memory formulas predict."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if (storage.data_ptr() not in parameters and tensor.is_floating_point()
                and tensor.dim() > 0 and storage.nbytes() > 0):
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    backend = SDPBackend.FLASH_ATTENTION if flash_attention else SDPBackend.MATH
    with sdpa_kernel(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward_and_loss()
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        raise ValueError("forward_and_loss must return the loss of a graph that needs gradients "
                         "(the saved tensors live as long as that graph)")
    return sum(saved.values())
