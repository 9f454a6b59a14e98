"""The process group of a torchrun launch: joining it, lockstep timing, and agreement between
ranks.

The plugin reads the launch (`harness.distributed.launch`), joins the process group (NCCL on
CUDA, gloo on CPU; `start`) and pins each process to the GPU of its LOCAL_RANK; then every rank
runs the same tests in the same order.

Who does what. Every rank measures; rank 0 alone prints, judges against the baseline, saves
results and writes baselines. A distributed run is stored under a fingerprint that counts its
ranks ("nvidia-h200-x2", "cpu-x2").

Staying in step. Ranks that disagree about anything run different collectives next and hang, so:
- timing goes through `LockstepClock`: every sample starts after a barrier and is the slowest
  rank's time (all_reduce MAX), so the adaptive sampling of `harness.measure.sampling` takes the
  same decisions on every rank;
- after each test the ranks exchange how their test body ended (`RankOutcome`) and all follow
  rank 0's verdict, or all fail when any rank's body raised (`agreed_decision`);
- the collected tests are compared across ranks before any runs (`DistributedRun.check_same_tests`);
- every collective has the process group's timeout (the plugin's --perf-dist-timeout), so a rank
  that is gone makes the others fail with a message instead of hanging CI: on NCCL torch's
  watchdog ends the waiting process naming the collective (TORCH_NCCL_ASYNC_ERROR_HANDLING,
  3 by default), on gloo the waiting call raises; torchrun then stops every rank.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.checks import require_positive
from harness.distributed.launch import DEFAULT_TIMEOUT_SECONDS, Launch
from harness.gate.session import Decision
from harness.measure.clocks import Clock

BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class InitMemory:
    """Device memory of this process around joining the process group (NVML, so it includes
    what torch's caching allocator never sees), and torch's reserved memory at both ends."""

    before_init_bytes: int
    after_init_bytes: int
    after_barrier_bytes: int
    reserved_before_bytes: int
    reserved_after_bytes: int
    # False when NVML could not attribute memory to this process: the figures are then the
    # whole device's used memory (see harness.measure.memory.device_memory_usage).
    per_process: bool

    @property
    def init_bytes(self) -> int:
        """Device memory `init_process_group` took."""
        return self.after_init_bytes - self.before_init_bytes

    @property
    def barrier_bytes(self) -> int:
        """Device memory the first barrier took on top of that."""
        return self.after_barrier_bytes - self.after_init_bytes

    @property
    def total_bytes(self) -> int:
        """Device memory torch.distributed took by the end of its first barrier."""
        return self.after_barrier_bytes - self.before_init_bytes


@dataclass(frozen=True)
class RankOutcome:
    """How one rank's test body ended: the error it raised (one line), or the decision its
    perf session reached."""

    rank: int
    error: str | None = None
    decision: Decision | None = None


def describe_error(exc: BaseException) -> str:
    """One line for a rank's failure: 'AssertionError: first line of the message'."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def agreed_decision(outcomes: Sequence[RankOutcome]) -> Decision:
    """The decision every rank that did not raise follows: failed when any rank's test body
    raised (naming the ranks and their errors), otherwise rank 0's."""
    if not outcomes:
        raise ValueError("outcomes must hold one RankOutcome per rank, got none")
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        errors = "; ".join(f"rank {o.rank}: {o.error}" for o in failed)
        return Decision("failed", f"the test body failed on {len(failed)} of {len(outcomes)} "
                                  f"rank(s) ({errors}); every rank fails it, so that all of "
                                  f"them stay in step")
    reporter = min(outcomes, key=lambda o: o.rank)
    if reporter.decision is None:
        raise ValueError(f"rank {reporter.rank} reported neither an error nor a decision")
    return reporter.decision


class DistributedRun:
    """The process group this pytest process belongs to, and the few collectives the harness
    itself runs on it (barriers, agreement, the lockstep clock's maximum)."""

    def __init__(self, launch: Launch, device: str, backend: str, device_index: int | None,
                 init_memory: InitMemory | None, init_memory_note: str) -> None:
        self.launch = launch
        self.device = device
        self.backend = backend
        self.device_index = device_index
        self.init_memory = init_memory
        # Why init_memory is None (CPU run, NVML unusable), for messages.
        self.init_memory_note = init_memory_note

    @property
    def rank(self) -> int:
        """This process's global rank."""
        return self.launch.rank

    @property
    def world_size(self) -> int:
        """Number of ranks in the process group."""
        return self.launch.world_size

    @property
    def reports(self) -> bool:
        """Whether this rank prints, judges and writes: rank 0 only."""
        return self.launch.rank == 0

    def relaunch_command(self) -> str:
        """The torchrun command of this launch's shape, for messages that say what to run."""
        return self.launch.relaunch_command()

    @property
    def torch_device(self) -> torch.device:
        """This rank's device with its index ("cuda:1"), or the CPU."""
        if self.device_index is None:
            return torch.device("cpu")
        return torch.device("cuda", self.device_index)

    def barrier(self) -> None:
        """All ranks reach this point, and on CUDA their queued device work is finished."""
        dist.barrier()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def max_over_ranks(self, value: float) -> float:
        """The largest of every rank's `value` (one all_reduce MAX)."""
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.torch_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (all_gather_object: picklable objects only)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def agree_on_problem(self, problem: str | None) -> str | None:
        """The first rank's problem with a measurement (e.g. a throttled GPU), on every rank,
        or None when no rank had one; so that all ranks retry, or keep, together."""
        problems = self.gather(problem)
        for rank, found in enumerate(problems):
            if found is not None:
                return found if self.world_size == 1 else f"rank {rank}: {found}"
        return None

    def agree_on_outcome(self, outcome: RankOutcome) -> Decision:
        """Exchange how each rank's test body ended; the decision of `agreed_decision`."""
        return agreed_decision(self.gather(outcome))

    def check_same_tests(self, nodeids: Sequence[str]) -> None:
        """A ValueError when the ranks are about to run different tests (a random order plugin
        with different seeds, files that differ between hosts): they would hang in their first
        mismatched collective."""
        digest = hashlib.sha256("\n".join(nodeids).encode()).hexdigest()
        views = self.gather((len(nodeids), digest))
        if len(set(views)) > 1:
            detail = ", ".join(f"rank {rank}: {count} test(s) [{key[:8]}]"
                               for rank, (count, key) in enumerate(views))
            raise ValueError(f"the ranks collected different tests or orders ({detail}); every "
                             f"rank must run the same tests in the same order. Use the same "
                             f"files and arguments on every host, and a fixed order (e.g. "
                             f"-p no:randomly)")

    def describe(self) -> dict[str, Any]:
        """What a run's environment records about the process group: size, backend, and for
        NCCL its version and the NCCL_* variables set (NCCL_NVLS_ENABLE, NCCL_ALGO, ...), which
        change what collectives can reach."""
        described: dict[str, Any] = {"world_size": self.world_size, "nodes": self.launch.nodes,
                                     "backend": self.backend, "nccl": None}
        if self.backend == "nccl":
            version = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]  # unannotated
            described["nccl"] = (".".join(map(str, version)) if isinstance(version, tuple)
                                 else str(version))
            described["nccl_env"] = {key: value for key, value in sorted(os.environ.items())
                                     if key.startswith("NCCL_")}
        return described

    def shutdown(self) -> None:
        """Leave the process group (at the end of the pytest run)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def _device_index(launch: Launch) -> int:
    """The CUDA device of this rank: LOCAL_RANK, or the only visible one when the launcher gave
    each process its own GPU through CUDA_VISIBLE_DEVICES (SLURM's --gpus-per-task=1)."""
    count = torch.cuda.device_count()
    if launch.local_rank < count:
        return launch.local_rank
    if count == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0
    raise ValueError(f"LOCAL_RANK={launch.local_rank} has no GPU of its own: this process sees "
                     f"{count} CUDA device(s) for {launch.local_world_size} processes on this "
                     f"node; start at most {count} (--nproc-per-node {count})")


def start(launch: Launch, device: str, *,
          timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> DistributedRun:
    """Join the process group of `launch` and pin this process to its GPU.

    On CUDA the device memory is read (NVML) after the CUDA context exists, after
    `init_process_group` (NCCL, bound to the device: its communicator is created there) and
    after the first barrier: `DistributedRun.init_memory`.
    """
    if device not in BACKENDS:
        raise ValueError(f"device must be one of {', '.join(BACKENDS)}, got {device!r}")
    require_positive("timeout_seconds", timeout_seconds)
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; a distributed run needs it")
    if dist.is_initialized():
        raise ValueError("a process group is already initialised in this process; the harness "
                         "joins the launcher's group itself, at the start of the pytest run")
    backend = BACKENDS[device]
    timeout = datetime.timedelta(seconds=timeout_seconds)
    if device == "cpu":
        dist.init_process_group(backend, timeout=timeout)
        dist.barrier()
        return DistributedRun(launch, device, backend, None, None,
                              "CPU run: no device memory to read")
    from harness.measure.memory import device_memory_usage

    index = _device_index(launch)
    torch.cuda.set_device(index)
    torch.empty(1, device=torch.device("cuda", index))  # the CUDA context exists from here
    torch.cuda.synchronize(index)
    problems: list[str] = []

    def read() -> Any:
        try:
            return device_memory_usage(index)
        except ValueError as exc:  # no usable NVML: the run works, its memory is not reported
            problems.append(str(exc))
            return None

    before = read()
    reserved_before = torch.cuda.memory_reserved(index)
    dist.init_process_group(backend, timeout=timeout, device_id=torch.device("cuda", index))
    after_init = read()
    dist.barrier()
    torch.cuda.synchronize(index)
    after_barrier = read()
    if before is None or after_init is None or after_barrier is None:
        return DistributedRun(launch, device, backend, index, None,
                              f"device memory not read: {problems[0]}")
    init_memory = InitMemory(
        before_init_bytes=before.used_bytes, after_init_bytes=after_init.used_bytes,
        after_barrier_bytes=after_barrier.used_bytes, reserved_before_bytes=reserved_before,
        reserved_after_bytes=torch.cuda.memory_reserved(index),
        per_process=before.per_process and after_init.per_process and after_barrier.per_process)
    note = ("device memory of this process (NVML)" if init_memory.per_process
            else "NVML could not attribute memory to this process: whole-device figures")
    return DistributedRun(launch, device, backend, index, init_memory, note)


class LockstepClock:
    """A clock whose readings are the same on every rank: each reading starts after a barrier
    and is the slowest rank's time (all_reduce MAX) for the same calls.

    The slowest rank is the one that matters: in synchronous data-parallel training every rank
    waits for it. Identical readings make `harness.measure.sampling`'s warmup, calibration and
    stopping rules decide identically on all ranks, so ranks whose `fn` runs collectives stay in
    step. `now()` is the agreed time spent in `time` so far, the time source warmup and budget
    run on; it includes the wait of an inner clock that holds the GPU back before its calls
    (`lead_seconds(iterations)`, `harness.measure.clocks.QueuedCudaEventClock`), the same on
    every rank: counting only the timed calls, a warmup of 0.5 s ran 500 samples of 1 ms, each
    behind a lead of 30-50 ms, and a test of two small collectives took 32-37 s on 2 H200s.
    """

    def __init__(self, inner: Clock, run: DistributedRun) -> None:
        if isinstance(inner, LockstepClock):
            raise ValueError("inner is already a LockstepClock; wrap the device's clock once")
        if not callable(getattr(inner, "time", None)):
            raise ValueError(f"inner must be a clock with a time(fn, iterations) method, "
                             f"got {inner!r}")
        self.inner = inner
        self.run = run
        self.name = f"{getattr(inner, 'name', type(inner).__name__)}, slowest of " \
                    f"{run.world_size} ranks"
        self.elapsed = 0.0

    def time(self, fn: Callable[[], object], iterations: int) -> float:
        """Seconds the slowest rank took for `iterations` calls of `fn`, started together."""
        self.run.barrier()
        agreed = self.run.max_over_ranks(self.inner.time(fn, iterations))
        lead_seconds = getattr(self.inner, "lead_seconds", None)
        self.elapsed += agreed + (lead_seconds(iterations) if callable(lead_seconds) else 0.0)
        return agreed

    def now(self) -> float:
        """Agreed seconds spent timing so far: the same on every rank."""
        return self.elapsed
