"""Device memory as torch sees it (caching allocator peaks) and as the driver sees it (NVML),
and the memory that belongs to one test.

The two differ by what torch does not manage: the CUDA context, loaded kernel images, NCCL and
other libraries' buffers, typically 0.5-2 GB per process. Both matter for "does it still fit".

Memory belongs to the test: `MemoryLedger` reads what is held when each test begins (subtracted
from its peaks) and ends (more than it began with is a leak, named to the tests after it), so a
test's memory verdict never depends on which tests ran, or failed, before it.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pynvml
import torch

from harness.checks import require_non_negative_int
from harness.gate.formatting import format_bytes
from harness.measure.clocks import check_device, cuda_initialized, require_cuda_device
from harness.measure.garbage import drop_last_failure
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


def state_bytes_held(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
                      ) -> dict[str, int]:
    """Bytes of the model states as they are now: "parameters", "gradients" (those that exist)
    and "optimizer_states" (every tensor in `optimizer.state`), each storage counted once."""
    seen: set[tuple[str, int]] = set()

    def size(tensors: Sequence[torch.Tensor]) -> int:
        total = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        return total

    parameters = list(model.parameters())
    state_tensors = [] if optimizer is None else [
        value for state in optimizer.state.values() for value in state.values()
        if isinstance(value, torch.Tensor)]
    return {
        "parameters": size(parameters),
        "gradients": size([p.grad for p in parameters if p.grad is not None]),
        "optimizer_states": size(state_tensors),
    }


# A test that ends holding this much more allocated memory than it began with leaked: the
# caching allocator rounds every block up to 512 bytes and keeps a few small buffers alive (RNG
# state, cuBLAS handles' scratch), far below 1 MiB; a model or an activation left alive is
# megabytes to gigabytes.
LEAK_THRESHOLD_BYTES = 2**20


@dataclass(frozen=True)
class Leak:
    """A test that ended holding `bytes` more allocated device memory than it began with."""

    nodeid: str
    bytes: int

    def describe(self) -> str:
        """A warning's text: who leaked how much, and what follows."""
        return (f"{self.nodeid} ended holding {format_bytes(self.bytes)} more allocated device "
                f"memory than it began with: a leak (a model or tensor kept alive past the "
                f"test, in a global, a cache or a fixture wider than the test). Later tests "
                f"subtract it from their peaks and name this test.")


@dataclass(frozen=True)
class MemoryStart:
    """What the device held when a test began, subtracted from the test's own peaks; `leaks`
    are earlier tests whose leftover memory is (at least in part) still held."""

    allocated_bytes: int
    reserved_bytes: int
    leaks: tuple[Leak, ...] = ()

    def describe(self) -> str:
        """One clause for a metric note: what was subtracted, and who left it."""
        text = (f"less {format_bytes(self.allocated_bytes)} allocated before the test began "
                f"(not this test's)")
        if self.leaks:
            named = ", ".join(f"{leak.nodeid} ({format_bytes(leak.bytes)})"
                              for leak in self.leaks)
            text += f"; leaked by earlier tests: {named}"
        return text


class MemoryLedger:
    """Memory held at each test's beginning and end, read by `read` ((allocated, reserved)
    bytes once everything collectable is freed): the beginning is the test's starting point,
    a test that ends holding more than `LEAK_THRESHOLD_BYTES` beyond it leaked."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read
        self._floor: int | None = None  # held before the first test: the process's own
        self._starts: dict[str, int] = {}
        self._leaks: list[Leak] = []

    def begin(self, nodeid: str) -> MemoryStart:
        """Read the test's starting point, with the earlier leaks still held."""
        allocated, reserved = self._read()
        if self._floor is None:
            self._floor = allocated
        excess = allocated - self._floor
        # Leaked memory that has been freed since (a failed test's frames let go) is no longer
        # held: forget the oldest leaks until the rest fit in what is held beyond the floor.
        while self._leaks and sum(leak.bytes for leak in self._leaks) > excess:
            self._leaks.pop(0)
        self._starts[nodeid] = allocated
        return MemoryStart(allocated_bytes=allocated, reserved_bytes=reserved,
                           leaks=tuple(self._leaks))

    def end(self, nodeid: str) -> Leak | None:
        """Read what the test left behind: a `Leak` when it holds more than it began with."""
        if nodeid not in self._starts:
            raise ValueError(f"test {nodeid!r} ended without having begun in this ledger")
        allocated, _ = self._read()
        grown = allocated - self._starts.pop(nodeid)
        if grown <= LEAK_THRESHOLD_BYTES:
            return None
        leak = Leak(nodeid=nodeid, bytes=grown)
        self._leaks.append(leak)
        return leak


# One ledger per run (keyed by whatever owns the run, e.g. its perf session).
_RUN_LEDGERS: weakref.WeakKeyDictionary[object, MemoryLedger] = weakref.WeakKeyDictionary()


def run_memory_ledger(run: object, device: str) -> MemoryLedger | None:
    """The memory ledger of a run on a CUDA device, made on first use and reading
    `held_memory`; None on any other device (torch tracks no CPU peaks)."""
    if check_device(device) != "cuda":
        return None
    if run not in _RUN_LEDGERS:
        _RUN_LEDGERS[run] = MemoryLedger(lambda: held_memory(device))
    return _RUN_LEDGERS[run]


def held_memory(device: str) -> tuple[int, int]:
    """(allocated, reserved) bytes on a CUDA device once everything collectable is freed: the
    last failed test's traceback (which pytest keeps in sys.last_* and which keeps its frames,
    and so its tensors, alive) is dropped, garbage collected, cached blocks and cuBLAS's
    workspaces released, so that each test allocates its own workspace whatever ran before."""
    torch_device = _check_cuda_device(device)
    drop_last_failure()
    gc.collect()
    if not cuda_initialized():
        return 0, 0
    torch.cuda.synchronize(torch_device)
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    torch.cuda.empty_cache()
    return (torch.cuda.memory_allocated(torch_device), torch.cuda.memory_reserved(torch_device))
