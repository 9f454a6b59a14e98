"""Test doubles for measuring without a GPU: a seeded clock, a scripted GPU monitor, and CPU
stand-ins for what autograd saves and what the allocator holds (memory formulas on any machine).

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

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness.checks import (
    require_non_negative,
    require_non_negative_int,
    require_positive,
    require_positive_int,
)
from harness.measure.gpu_state import NVML_THROTTLE_REASONS

# torch's weak reference to a storage (untyped in torch), called through Any.
_WEAK_STORAGE: Any = StorageWeakRef


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


class LiveStorages(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's base is untyped
    """Bytes of floating-point tensor storages alive after each op, a CPU stand-in for
    torch.cuda.memory_allocated: every op output is followed until its storage dies, and
    tensors that existed before (parameters, gradients, optimizer states) are added with
    `hold`. 0-dim and integer tensors (step counters, token ids) are left out.

    Following tensors through Python holds extra references, which makes autograd accumulate
    some gradients out of place; transient peaks inside backward can therefore exceed a real
    run's: compare moments before any accumulation (after the forward, the loss, the optimizer).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # storage pointer -> (a weak reference to the storage, its bytes)
        self._storages: dict[int, tuple[Any, int]] = {}
        self.timeline: list[tuple[str, int]] = []

    def hold(self, tensor: torch.Tensor) -> None:
        """Follow `tensor`'s storage until it dies (once per storage)."""
        if tensor.dim() == 0 or not tensor.is_floating_point():
            return
        storage = tensor.untyped_storage()
        known = self._storages.get(storage.data_ptr())
        if storage.nbytes() and (known is None or known[0].expired()):
            self._storages[storage.data_ptr()] = (_WEAK_STORAGE(storage), storage.nbytes())

    def live_bytes(self) -> int:
        """Bytes of the followed storages still alive."""
        return sum(size for ref, size in self._storages.values() if not ref.expired())

    def after(self, op: str) -> int:
        """Live bytes right after the first call of `op` (e.g. "aten._log_softmax.default")."""
        return next(live for name, live in self.timeline if name == op)

    @property
    def peak(self) -> int:
        """The most bytes alive after any op."""
        return max(live for _, live in self.timeline)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.hold(value)
        self.timeline.append((str(func), self.live_bytes()))
        return out
