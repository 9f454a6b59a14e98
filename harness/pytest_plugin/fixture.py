"""The object of the `perf` fixture: a test says what to measure, `Perf` knows how.

The fixtures (`perf`, and `perf_device`, `perf_clock`, `perf_gpu_monitor` that supply what it
measures with) are `harness.pytest_plugin.fixtures`'s, which imports this module, and torch with
it, only when a test uses one; a conftest.py overrides the clock and monitor
(`harness.testing.FakeClock` for tests without a GPU). Every
measurement runs between two GPU snapshots (`gpu_state.measure_between_snapshots`). When the
GPU throttled for a reason that distorts the numbers (`gpu_state.DISTORTING_THROTTLE_REASONS`)
the measurement is taken once more; when it throttles again its metrics are kept but marked
unreliable, so they are never called a regression. Every metric is recorded in the session under
`<nodeid>::<name>` and attached to the test's JUnit report as the property `perf:<name>` =
"<median> <unit>"; on a GPU the state after each measurement is the property
`perf:<measurement>:gpu`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
import torch

from harness.checks import require_bool, require_finite, require_positive
from harness.distributed.group import DistributedRun, LockstepClock
from harness.gate.ab import NO_PROFILE_VARIABLE
from harness.gate.formatting import format_size
from harness.gate.results import (
    BETTER_VALUES,
    METRIC_KINDS,
    Better,
    Measurement,
    Metric,
    MetricKind,
)
from harness.gate.session import PerfSession
from harness.gate.tolerance import require_tolerance
from harness.measure.clocks import Clock, CudaEventClock, QueuedCudaEventClock
from harness.measure.collectives import collective_call, collective_metrics
from harness.measure.dataloader import measure_dataloader
from harness.measure.gpu_state import (
    GpuStateMonitor,
    describe_snapshot,
    measure_between_snapshots,
)
from harness.measure.kernels import (
    DEFAULT_PROFILE_STEPS,
    device_time_metric,
    profile_or_reason,
    trace_into,
    with_wall_time,
)
from harness.measure.memory import MemoryLedger, MemoryStart, run_memory_ledger
from harness.measure.sampling import L2Flush, TimingPolicy, measure_time
from harness.measure.step import MeasurementError, measure_step, require_no_argument_callable
from harness.measure.train_step import check_train_step, measure_train_step
from harness.pytest_plugin.perf_warnings import PerfLeakWarning
from harness.theory.config import TransformerConfig

# Metrics of `measure_train_step` that count what the caching allocator holds rather than what
# tensors use (`Perf.train_step`'s cached_memory_tolerance).
CACHED_MEMORY_METRICS: frozenset[str] = frozenset({"peak_reserved_bytes", "device_memory_bytes"})


def _prefixed(metrics: dict[str, Metric], prefix: str) -> dict[str, Metric]:
    if not isinstance(prefix, str):
        raise ValueError(f"name_prefix must be a string, got {prefix!r}")
    return {prefix + name: m.with_changes(name=prefix + name) for name, m in metrics.items()}


class Perf:
    """What a measured test uses: `time`, `train_step`, `step`, `dataloader`, `metric`, and in
    a distributed run `collective`.

    `device` is the session's device ("cuda" or "cpu"); `gpu` the GPUSpec of the local GPU on
    CUDA runs (None on CPU, or for a GPU the spec table does not know); `distributed` the
    process group of a run launched by torchrun (None otherwise), whose clock is then a
    `harness.distributed.group.LockstepClock`: every rank gets the slowest rank's times.

    Memory belongs to the test: on CUDA, given `add_finalizer` (the fixture request's), what
    the device holds when `Perf` is made (the `perf` fixture's setup) is read once everything
    collectable is freed and subtracted from every memory metric of the test; at teardown,
    memory the test still holds is a leak, warned about and named to the tests after it
    (`harness.measure.memory.MemoryLedger`). Memory of fixtures set up before `perf` counts
    as held before the test: request `perf` first, or build models in the test.
    """

    def __init__(self, *, session: PerfSession, nodeid: str, clock: Clock,
                 monitor: GpuStateMonitor, policy: TimingPolicy,
                 user_properties: list[tuple[str, object]],
                 distributed: DistributedRun | None = None,
                 add_finalizer: Callable[[Callable[[], object]], None] | None = None) -> None:
        self._session = session
        self._nodeid = nodeid
        self._clock = clock
        self._monitor = monitor
        self._policy = policy
        self._user_properties = user_properties
        self.device: str = session.options.device
        self.gpu = session.gpu
        self.distributed = distributed
        self._memory_start: MemoryStart | None = None
        ledger = (run_memory_ledger(session, session.options.device)
                  if add_finalizer is not None else None)
        if ledger is not None and add_finalizer is not None:
            self._memory_start = ledger.begin(nodeid)
            held = self._memory_start.allocated_bytes
            user_properties.append(("perf:memory_held_at_start", f"{held} B"))
            add_finalizer(lambda: _warn_of_leak(ledger, nodeid))

    def time(self, fn: Callable[[], object], *, name: str = "time", flops: float | None = None,
             bytes: float | None = None, tolerance: float | None = None,
             flush_l2: bool | None = None, profile: bool = True) -> Measurement:
        """Seconds per call of `fn` as metric `name`; with `flops` (per call) also
        `<name>_tflops`, with `bytes` (moved per call) also `<name>_gbps` (1 GB = 1e9 bytes).
        On CUDA, unless `profile=False`, a profiled pass after the samples adds
        `<name>_device_time` (GPU busy seconds per call, with the kernel table) and marks `name`
        host-bound when the GPU idled (`harness.measure.kernels`).

        `flush_l2` overrides the session's policy for kernels whose inputs fit in L2.
        """
        __tracebackhide__ = True  # pytest: a bad argument is the test's line, not this frame
        require_no_argument_callable("fn", fn)
        flops_per_call = None if flops is None else require_positive("flops", flops)
        bytes_per_call = None if bytes is None else require_positive("bytes", bytes)
        if flush_l2 is not None:
            require_bool("flush_l2 (None: the session's policy)", flush_l2)
        profiled = require_bool("profile", profile) and self._profiles()
        names = [name]
        if flops_per_call is not None:
            names.append(f"{name}_tflops")
        if bytes_per_call is not None:
            names.append(f"{name}_gbps")
        if profiled:
            names.append(f"{name}_device_time")
        # Metric checks the name too, but only after the measurement: fail before spending it.
        Metric(name=name, unit="s", better="lower", samples=(1.0,), tolerance=tolerance)
        self._session.check_names_free(self._nodeid, names)
        policy = self._policy
        if flush_l2 is not None:
            policy = dataclasses.replace(policy, flush_l2=flush_l2)

        def produce() -> dict[str, Metric]:
            seconds = measure_time(fn, clock=self._clock, policy=policy, device=self.device)
            metrics = {name: Metric(name=name, unit="s", better="lower", kind="time",
                                    samples=tuple(seconds), tolerance=tolerance,
                                    note=f"{self._clock.name} clock")}
            if flops_per_call is not None:
                metrics[f"{name}_tflops"] = Metric(
                    name=f"{name}_tflops", unit="TFLOP/s", better="higher", kind="throughput",
                    samples=tuple(flops_per_call / s / 1e12 for s in seconds),
                    tolerance=tolerance, note=f"{flops_per_call:.6g} FLOP per call / time")
            if bytes_per_call is not None:
                metrics[f"{name}_gbps"] = Metric(
                    name=f"{name}_gbps", unit="GB/s", better="higher", kind="throughput",
                    samples=tuple(bytes_per_call / s / 1e9 for s in seconds),
                    tolerance=tolerance, note=f"{bytes_per_call:.6g} bytes per call / time")
            if profiled:
                flush = L2Flush(self.device) if policy.flush_l2 else None
                steps, failure = profile_or_reason(fn, before_each=flush)
                if steps is not None:
                    steps = with_wall_time(steps, metrics[name].median)
                if steps is None:
                    metrics[name] = metrics[name].with_changes(
                        note=f"{metrics[name].note}; {failure}")
                else:
                    metrics = {key: metric.with_changes(host_bound=steps.profile.host_bound)
                               for key, metric in metrics.items()}
                    metrics[f"{name}_device_time"] = device_time_metric(
                        f"{name}_device_time", steps, tolerance=tolerance)
            return metrics

        return self._measure(name, produce)

    def train_step(self, model: torch.nn.Module, inputs: tuple[Any, Any],
                   loss_fn: Callable[[Any, Any], torch.Tensor],
                   optimizer: torch.optim.Optimizer, *, config: TransformerConfig | None = None,
                   recompute: str = "none",
                   autocast_dtype: torch.dtype | None = torch.bfloat16,
                   precision: str = "bf16-mixed", optimizer_name: str = "adamw",
                   peak_dtype: str = "bf16", causal: bool = False,
                   name_prefix: str = "", tolerance: float | None = None,
                   cached_memory_tolerance: float | None = None,
                   profile: bool = True) -> Measurement:
        """One training step measured by `measure.train_step.measure_train_step` (step_time,
        tflops, tokens_per_s, mfu/hfu, memory; see there); `name_prefix` is put verbatim in
        front of every metric name, e.g. "gpt2_" for "gpt2_step_time". `tolerance` applies to
        the timing metrics (time, throughput), never to memory. Allocated memory stays
        deterministic; what the caching allocator holds (peak_reserved_bytes, and with it
        device_memory_bytes) is not when several streams allocate (FSDP2's all-gathers):
        `cached_memory_tolerance` applies to those two. On CUDA, unless `profile=False`, a
        profiled pass adds `device_time` with the step's kernel table."""
        __tracebackhide__ = True  # pytest: a bad argument is the test's line, not this frame
        check_train_step(model, inputs, loss_fn, optimizer, self.device)

        def measure(profile_steps: int) -> dict[str, Metric]:
            return measure_train_step(
                model, inputs, loss_fn, optimizer, clock=self._clock, policy=self._policy,
                device=self.device, config=config, recompute=recompute,
                autocast_dtype=autocast_dtype,
                # MFU/HFU need the analytic FLOPs of a config; without one the spec is unused.
                gpu=self.gpu if config is not None else None,
                precision=precision, optimizer_name=optimizer_name, peak_dtype=peak_dtype,
                causal=causal, profile_steps=profile_steps, memory_start=self._memory_start)

        return self._measure_step(f"{name_prefix}train_step", measure, name_prefix=name_prefix,
                                  tolerance=tolerance,
                                  cached_memory_tolerance=cached_memory_tolerance,
                                  profile=profile)

    def step(self, fn: Callable[[], object], *, batch_size: int | None = None,
             seq_len: int | None = None, micro_batches: int = 1,
             config: TransformerConfig | None = None, recompute: str = "none",
             precision: str = "bf16-mixed", optimizer_name: str = "adamw",
             peak_dtype: str = "bf16", causal: bool = False, dropout: bool = False,
             name_prefix: str = "", tolerance: float | None = None,
             cached_memory_tolerance: float | None = None, profile: bool = True) -> Measurement:
        """A training step the test wrote itself, measured like `train_step`: `fn()` runs one
        whole step (gradient accumulation over `micro_batches` micro-batches of `batch_size` x
        `seq_len` tokens, clipping, scheduler, ...) and returns its loss (checked for NaN) or
        None. Metrics as `harness.measure.step.measure_step`: step_time, tflops,
        flops_per_step; tokens_per_s with the shape; mfu/hfu with a config; memory on CUDA (the
        estimate with one micro-batch). Other arguments as in `train_step`."""
        __tracebackhide__ = True  # pytest: a bad argument is the test's line, not this frame
        require_no_argument_callable("fn", fn)

        def measure(profile_steps: int) -> dict[str, Metric]:
            return measure_step(
                fn, clock=self._clock, policy=self._policy, device=self.device,
                batch_size=batch_size, seq_len=seq_len, micro_batches=micro_batches,
                config=config, recompute=recompute,
                gpu=self.gpu if config is not None else None, precision=precision,
                optimizer_name=optimizer_name, peak_dtype=peak_dtype, causal=causal,
                dropout=dropout, profile_steps=profile_steps, memory_start=self._memory_start)

        return self._measure_step(f"{name_prefix}step", measure, name_prefix=name_prefix,
                                  tolerance=tolerance,
                                  cached_memory_tolerance=cached_memory_tolerance,
                                  profile=profile)

    def _measure_step(self, label: str, measure: Callable[[int], dict[str, Metric]], *,
                      name_prefix: str, tolerance: float | None,
                      cached_memory_tolerance: float | None, profile: bool) -> Measurement:
        """`train_step` and `step`: their tolerances and prefix put on the metrics of
        `measure(profile_steps)`, a diverged loss turned into a plain test failure."""
        __tracebackhide__ = True
        profile_steps = DEFAULT_PROFILE_STEPS if require_bool("profile", profile) \
            and self._profiles() else 0
        if tolerance is not None:
            require_tolerance("tolerance", tolerance)
        if cached_memory_tolerance is not None:
            require_tolerance("cached_memory_tolerance", cached_memory_tolerance)

        def produce() -> dict[str, Metric]:
            metrics = measure(profile_steps)
            metrics = {name: m.with_changes(tolerance=cached_memory_tolerance)
                       if name in CACHED_MEMORY_METRICS and cached_memory_tolerance is not None
                       else m for name, m in metrics.items()}
            return _prefixed(_timing_tolerance(metrics, tolerance), name_prefix)

        try:
            return self._measure(label, produce)
        except MeasurementError as exc:
            failure = f"{label}: {exc}"
        pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback

    def dataloader(self, loader: Iterable[Any], *, steps: int, name_prefix: str = "",
                   tolerance: float | None = None) -> Measurement:
        """Batches of `loader` measured by `measure.dataloader.measure_dataloader` (wait_time,
        batches_per_s, and on CUDA h2d_time and h2d_bandwidth); `name_prefix` and `tolerance`
        as in `train_step`."""
        label = f"{name_prefix}dataloader"
        if tolerance is not None:
            require_tolerance("tolerance", tolerance)

        def produce() -> dict[str, Metric]:
            metrics = measure_dataloader(loader, device=self.device, steps=steps)
            return _prefixed(_timing_tolerance(metrics, tolerance), name_prefix)

        return self._measure(label, produce)

    def collective(self, op: str, nbytes: int, *, name: str | None = None,
                   dtype: torch.dtype = torch.float32,
                   tolerance: float | None = None) -> Measurement:
        """One collective of the process group timed per call: "all_reduce", "all_gather" or
        "reduce_scatter" of nccl-tests size `nbytes` (the whole buffer). Metrics `name`
        (default "<op>_<size>", seconds) and `<name>_busbw` (GB/s, theory: the GPU's one-way
        link bandwidth). Needs a run launched by torchrun."""
        run = self.distributed
        if run is None:
            raise ValueError("perf.collective needs a process group: run pytest under torchrun, "
                             "e.g. `torchrun --nproc-per-node 2 -m pytest -m distributed`")
        call = collective_call(op, nbytes, world_size=run.world_size, device=run.torch_device,
                               dtype=dtype)
        label = name if name is not None else f"{op}_{format_size(nbytes)}"
        # Metric checks the name too, but only after the measurement: fail before spending it.
        Metric(name=label, unit="s", better="lower", samples=(1.0,), tolerance=tolerance)
        self._session.check_names_free(self._nodeid, [label, f"{label}_busbw"])
        link = None if self.gpu is None else self.gpu.interconnect_bandwidth_bytes_per_s

        def produce() -> dict[str, Metric]:
            clock, queued = self._collective_clock(run)
            seconds = measure_time(call, clock=clock, policy=self._policy, device=self.device)
            return collective_metrics(label, op, nbytes, run.world_size, seconds,
                                      link_bandwidth_bytes_per_s=link,
                                      clock_name=str(getattr(clock, "name", "")),
                                      clock_note="" if queued is None else queued.host_bound_note(),
                                      tolerance=tolerance)

        return self._measure(label, produce)

    def _profiles(self) -> bool:
        """Whether measurements get a profiled pass: on CUDA, outside a distributed run (the
        ranks' lockstep would have to cover the pass too), unless this is an A/B child run
        told it needs none."""
        return (self.device == "cuda" and self.distributed is None
                and os.environ.get(NO_PROFILE_VARIABLE) != "1")

    def _collective_clock(self, run: DistributedRun
                          ) -> tuple[Clock, QueuedCudaEventClock | None]:
        """The clock collectives are timed with: on CUDA events, the same lockstep clock with
        the calls queued behind a GPU-side wait (`QueuedCudaEventClock`), so that a slow host's
        launches do not pass for NCCL's latency; any other clock (a test's fake) unchanged."""
        clock = self._clock
        if isinstance(clock, LockstepClock) and type(clock.inner) is CudaEventClock:
            queued = QueuedCudaEventClock(str(run.torch_device))
            return LockstepClock(queued, run), queued
        return clock, None

    def metric(self, name: str, value_or_samples: float | Sequence[float], *, unit: str,
               better: Better = "higher", kind: MetricKind = "other",
               tolerance: float | None = None, theory: float | None = None) -> Metric:
        """Record anything else the test computed itself: one value or a list of samples."""
        values = (value_or_samples if isinstance(value_or_samples, Sequence)
                  and not isinstance(value_or_samples, str) else [value_or_samples])
        try:
            samples = tuple(require_finite("value_or_samples", value) for value in values)
        except ValueError:
            samples = ()
        if not samples:
            raise ValueError(f"value_or_samples must be a number or a non-empty list of "
                             f"numbers, got {value_or_samples!r}")
        if not isinstance(unit, str):
            raise ValueError(f"unit must be a string such as 's' or 'GB/s', got {unit!r}")
        if better not in BETTER_VALUES:
            raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
        if kind not in METRIC_KINDS:
            raise ValueError(f"kind must be one of {', '.join(METRIC_KINDS)}; got {kind!r}")
        metric = Metric(name=name, unit=unit, better=better, samples=samples, kind=kind,
                        tolerance=tolerance, theory=theory)
        self._record(metric)
        return metric

    def _measure(self, label: str, produce: Callable[[], dict[str, Metric]]) -> Measurement:
        """Run `produce` between GPU snapshots, retry it when throttled, record its metrics."""
        agree = self.distributed.agree_on_problem if self.distributed is not None else None
        # --perf-trace: the measurement's profiled pass also writes its trace.
        with trace_into(self._session.trace_path(self._nodeid, label)):
            metrics, gpu_state = measure_between_snapshots(produce, self._monitor, agree=agree)
        after = gpu_state["after"]
        self._session.check_names_free(self._nodeid, list(metrics))
        for metric in metrics.values():
            self._record(metric)
        self._session.record_gpu_state(self._nodeid, label, gpu_state)
        if after:
            self._user_properties.append((f"perf:{label}:gpu", describe_snapshot(after)))
        return Measurement(metrics=metrics, gpu_state=gpu_state)

    def _record(self, metric: Metric) -> None:
        self._session.record(self._nodeid, metric)
        self._user_properties.append((f"perf:{metric.name}", f"{metric.median:.6g} {metric.unit}"))


def _timing_tolerance(metrics: dict[str, Metric], tolerance: float | None) -> dict[str, Metric]:
    """`tolerance` on the time, throughput and dataloader metrics that have none of their own."""
    if tolerance is None:
        return metrics
    return {name: m.with_changes(tolerance=tolerance)
            if m.tolerance is None and m.kind in ("time", "throughput", "dataloader") else m
            for name, m in metrics.items()}


def _warn_of_leak(ledger: MemoryLedger, nodeid: str) -> None:
    """At a test's teardown: a warning naming the test when it still holds device memory."""
    leak = ledger.end(nodeid)
    if leak is not None:
        warnings.warn(PerfLeakWarning(leak.describe()), stacklevel=1)

