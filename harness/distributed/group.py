"""Perf tests on several GPUs through torch.distributed: the launch, lockstep timing, agreement
between ranks, and the collectives and data-parallel traffic measured.

How a run is launched. The user's launcher runs pytest itself, one process per GPU:

    torchrun --nproc-per-node 2 -m pytest -m distributed perf_tests/

torchrun (or any launcher that sets its variables: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; `srun torchrun ...` under SLURM) starts the
processes; the plugin sees the variables (`launch_from_environment`), joins the process group
(NCCL on CUDA, gloo on CPU; `start`), pins each process to the GPU of its LOCAL_RANK, and then
every rank runs the same tests in the same order. Without these variables nothing here is used
and a run is exactly a single-process run.

Who does what. Every rank measures; rank 0 alone prints, judges against the baseline, saves
results and writes baselines. A distributed run is stored under a fingerprint that counts its
ranks ("nvidia-h200-x2", "cpu-x2").

Staying in step. Ranks that disagree about anything run different collectives next and hang, so:
- timing goes through `LockstepClock`: every sample starts after a barrier and is the slowest
  rank's time (all_reduce MAX), so the adaptive sampling of `harness.measure.timing` takes the same
  decisions on every rank;
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
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.gate.formatting import format_size
from harness.gate.results import Metric
from harness.gate.session import Decision
from harness.measure.timing import Clock
from harness.theory.comm import COLLECTIVES, bus_bandwidth, bus_bandwidth_factor

# The variables torchrun sets for every worker (torch.distributed.run docs, "Environment
# Variables"); `init_process_group`'s env:// method reads RANK, WORLD_SIZE, MASTER_ADDR and
# MASTER_PORT, the harness LOCAL_RANK and LOCAL_WORLD_SIZE.
LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                     "MASTER_ADDR", "MASTER_PORT")

# A collective needs a peer: `@pytest.mark.distributed` without nprocs asks for two ranks.
DEFAULT_REQUIRED_RANKS = 2

# Seconds a collective waits for the other ranks before the run fails. The longest legitimate
# gap between two collectives of a test is a model build or one FLOP-counted training step
# (seconds); three minutes kills a hang well inside a CI job's limit.
DEFAULT_TIMEOUT_SECONDS = 180.0

BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name)
    if raw is None:
        raise ValueError(f"{name} is not set, but WORLD_SIZE is: a launcher such as torchrun "
                         f"sets {', '.join(LAUNCH_VARIABLES)} together; launch with "
                         f"`torchrun --nproc-per-node N -m pytest ...`")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={raw!r} in the environment is not a non-negative integer")
    return value


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: its global and local rank, and how many there are."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE={self.world_size}: a launch has at least one rank")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is not a rank of WORLD_SIZE={self.world_size} "
                             f"(valid: 0..{self.world_size - 1})")
        if self.local_world_size < 1 or self.world_size % self.local_world_size:
            raise ValueError(f"LOCAL_WORLD_SIZE={self.local_world_size} does not divide "
                             f"WORLD_SIZE={self.world_size} into whole nodes")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"LOCAL_RANK={self.local_rank} is not a rank of "
                             f"LOCAL_WORLD_SIZE={self.local_world_size} "
                             f"(valid: 0..{self.local_world_size - 1})")

    @property
    def nodes(self) -> int:
        """Number of hosts: WORLD_SIZE / LOCAL_WORLD_SIZE."""
        return self.world_size // self.local_world_size

    def relaunch_command(self, ranks: int | None = None) -> str:
        """The command that runs pytest under torchrun with this launch's shape (or `ranks`
        processes on one host), for messages that tell the user what to type."""
        if ranks is not None:
            return f"torchrun --nproc-per-node {ranks} -m pytest"
        nodes = f" --nnodes {self.nodes}" if self.nodes > 1 else ""
        return f"torchrun{nodes} --nproc-per-node {self.local_world_size} -m pytest"


def launch_from_environment(environ: Mapping[str, str]) -> Launch | None:
    """The launch this process belongs to, read from torchrun's variables; None when WORLD_SIZE
    is unset (a plain pytest run). A ValueError names a variable that is missing or malformed."""
    if "WORLD_SIZE" not in environ:
        return None
    world_size = _int_variable(environ, "WORLD_SIZE")
    rank = _int_variable(environ, "RANK")
    local_rank = _int_variable(environ, "LOCAL_RANK")
    # LOCAL_WORLD_SIZE is torchrun's; launchers without it are taken to run one node.
    local_world_size = (_int_variable(environ, "LOCAL_WORLD_SIZE")
                        if "LOCAL_WORLD_SIZE" in environ else world_size)
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank,
                  local_world_size=local_world_size)


def required_ranks(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Ranks a `distributed` marker asks for: `distributed`, `distributed(4)` or
    `distributed(nprocs=4)`; a ValueError saying what is valid otherwise."""
    unknown = set(kwargs) - {"nprocs"}
    if unknown or len(args) > 1 or (args and kwargs):
        raise ValueError(f"the distributed marker takes one argument, the number of ranks the "
                         f"test needs: distributed(nprocs=2); got args={tuple(args)!r}, "
                         f"kwargs={dict(kwargs)!r}")
    value = args[0] if args else kwargs.get("nprocs", DEFAULT_REQUIRED_RANKS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"distributed(nprocs=...) must be a positive integer number of ranks, "
                         f"got {value!r}")
    return value


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
            version = torch.cuda.nccl.version()
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
    if not isinstance(timeout_seconds, (int, float)) or isinstance(timeout_seconds, bool) \
            or not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be a positive number of seconds, "
                         f"got {timeout_seconds!r}")
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
    waits for it. Identical readings make `harness.measure.timing`'s warmup, calibration and stopping
    rules decide identically on all ranks, so ranks whose `fn` runs collectives stay in step.
    `now()` is the agreed time spent in `time` so far, the time source warmup and budget run on;
    it includes the wait of an inner clock that holds the GPU back before its calls
    (`lead_seconds(iterations)`, `harness.measure.timing.QueuedCudaEventClock`), the same on every rank:
    counting only the timed calls, a warmup of 0.5 s ran 500 samples of 1 ms, each behind a lead
    of 30-50 ms, and a test of two small collectives took 32-37 s on 2 H200s.
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


# ---------------------------------------------------------------------------------------------
# Collectives


def _gather_into(output: torch.Tensor, chunk: torch.Tensor) -> None:
    # all_gather_single is the name from torch 2.13 on; all_gather_into_tensor before.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, chunk)


def _scatter_into(output: torch.Tensor, whole: torch.Tensor) -> None:
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, whole)


def collective_call(op: str, nbytes: int, *, world_size: int, device: str | torch.device,
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Callable[[], None]:
    """A no-argument function that runs one collective of nccl-tests size `nbytes` (the whole
    buffer: the all-reduced tensor, the gathered output, the reduce-scatter's input) on the
    default process group, with buffers allocated once on `device` and filled at random.

    The all-reduce works in place, so repeated calls grow the values until they overflow to
    inf/nan; that is harmless: reductions run at the same speed on any bit pattern (unlike
    matmul power draw, the reason never to time zeros).
    """
    if op not in COLLECTIVES:
        raise ValueError(f"op must be one of {', '.join(COLLECTIVES)}; got {op!r}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    element = torch.empty((), dtype=dtype).element_size()
    unit = element * world_size
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0 or nbytes % unit:
        raise ValueError(f"nbytes must be a positive multiple of {unit} bytes (world_size "
                         f"{world_size} x {element}-byte {dtype} elements, so every rank holds "
                         f"whole elements), got {nbytes!r}")
    count = nbytes // element
    generator = torch.Generator(device=device).manual_seed(seed)

    def buffer(elements: int) -> torch.Tensor:
        return torch.randn(elements, dtype=dtype, device=device, generator=generator)

    if op == "all_reduce":
        tensor = buffer(count)
        return lambda: dist.all_reduce(tensor)
    if op == "all_gather":
        chunk, gathered = buffer(count // world_size), buffer(count)
        return lambda: _gather_into(gathered, chunk)
    whole, part = buffer(count), buffer(count // world_size)
    return lambda: _scatter_into(part, whole)


def collective_metrics(name: str, op: str, nbytes: int, world_size: int,
                       seconds: Sequence[float], *, link_bandwidth_bytes_per_s: float | None,
                       clock_name: str, clock_note: str = "",
                       tolerance: float | None = None) -> dict[str, Metric]:
    """Metrics of one collective measured as `seconds` per call: `name` (the time, s) and
    `<name>_busbw` (nccl-tests bus bandwidth, GB/s, with the link bandwidth as its theory: a
    ring can never beat it). `clock_note`, if any, follows the clock's name in the time's note."""
    if not seconds:
        raise ValueError("seconds must hold at least one sample")
    factor = bus_bandwidth_factor(op, world_size)
    link = link_bandwidth_bytes_per_s
    where = (f"one-way link bandwidth {link / 1e9:.0f} GB/s (GPUSpec)" if link is not None
             else "no link bandwidth in the GPU table")
    return {
        name: Metric(name=name, unit="s", better="lower", kind="time",
                     samples=tuple(seconds), tolerance=tolerance,
                     note=f"{op} of {format_size(nbytes)} over {world_size} ranks, per call; "
                          f"{clock_name} clock" + (f"; {clock_note}" if clock_note else "")),
        f"{name}_busbw": Metric(
            name=f"{name}_busbw", unit="GB/s", better="higher", kind="throughput",
            samples=tuple(bus_bandwidth(op, nbytes, s, world_size) / 1e9 for s in seconds),
            tolerance=tolerance, theory=None if link is None else link / 1e9,
            note=f"nccl-tests bus bandwidth: {nbytes} B / time x {factor:g} "
                 f"({'2(n-1)/n' if op == 'all_reduce' else '(n-1)/n'}); theory: {where}"),
    }


# ---------------------------------------------------------------------------------------------
# Data parallelism


class AllReduceByteCounter:
    """Counts the gradient bytes DDP all-reduces: its `hook` reduces exactly as DDP does by
    default (one all-reduce of each gradient bucket, averaged) and adds up the buckets.

    Register it with `ddp_model.register_comm_hook(None, counter.hook)` before the first
    forward.
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.buckets = 0

    def hook(self, state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """The communication hook: count the bucket, then all-reduce it as DDP would."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        buffer = bucket.buffer()
        self.bytes += buffer.numel() * buffer.element_size()
        self.buckets += 1
        return allreduce_hook(state, bucket)

    def reset(self) -> None:
        """Start counting from zero."""
        self.bytes = 0
        self.buckets = 0


# DDP.register_comm_hook compares a hook's annotations with dist.GradBucket and
# Future[Tensor] as objects; under `from __future__ import annotations` they are strings.
AllReduceByteCounter.hook.__annotations__ = {
    "state": Any, "bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}


def accumulate_gradients(model: torch.nn.parallel.DistributedDataParallel,
                         micro_step: Callable[[], None], grad_accum_steps: int) -> None:
    """The forward and backward passes of one optimizer step with gradient accumulation, as DDP
    training runs them: the first grad_accum_steps - 1 under `no_sync` (gradients accumulate
    locally), the last one with the all-reduce. `micro_step` runs one forward and backward."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError(f"model must be a DistributedDataParallel module, got "
                         f"{type(model).__name__}")
    if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) \
            or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be a positive integer, got {grad_accum_steps!r}")
    for _ in range(grad_accum_steps - 1):
        with model.no_sync():
            micro_step()
    micro_step()


def fsdp2() -> tuple[Callable[..., Any], type] | None:
    """torch's FSDP2 `(fully_shard, MixedPrecisionPolicy)`: from torch.distributed.fsdp since
    torch 2.6, torch.distributed._composable.fsdp in 2.4 and 2.5; None where it is missing."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import (  # type: ignore[no-redef]
                MixedPrecisionPolicy,
                fully_shard,
            )
        except ImportError:
            return None
    return fully_shard, MixedPrecisionPolicy


def shard_with_fsdp2(model: torch.nn.Module, layers: Sequence[torch.nn.Module], *,
                     param_dtype: torch.dtype | None = torch.bfloat16,
                     reduce_dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Shard `model` with FSDP2 as torchtitan does: each of `layers` (the transformer blocks)
    is its own unit, then the root holds the rest (embedding, final norm, output layer);
    parameters all-gathered in `param_dtype`, gradients reduce-scattered in `reduce_dtype`.
    A ValueError when this torch has no FSDP2."""
    found = fsdp2()
    if found is None:
        raise ValueError(f"torch {torch.__version__} has no FSDP2 (fully_shard arrived in "
                         f"torch.distributed._composable.fsdp in 2.4)")
    fully_shard, mixed_precision_policy = found
    policy = mixed_precision_policy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
