"""A training step measured, whoever wrote it: time, achieved TFLOP/s, tokens/s, MFU/HFU and
memory, with the theory beside each.

`measure_step` takes any function that runs one step (gradient accumulation, clipping,
schedulers included) and returns its loss; `harness.measure.train_step` builds such a step from
a model, a loss and an optimizer. FLOPs are counted on one untimed step by
`harness.measure.flop_count` (hardware-like: recomputation and the fused-attention backward
included, causal masking ignored); with a `TransformerConfig`, `harness.theory.flops.train_flops`
gives MFU and HFU and `harness.theory.memory.training.training_memory` the memory estimate.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from harness.checks import require_bool, require_choice, require_positive_int
from harness.gate.formatting import format_bytes
from harness.gate.results import Metric
from harness.measure.clocks import Clock, check_device
from harness.measure.flop_count import UncountedFlopsWarning, count_flops
from harness.measure.kernels import device_time_metric, profile_or_reason, with_wall_time
from harness.measure.memory import MemoryStart, device_memory_usage, peak_memory, reset_peak_memory
from harness.measure.sampling import TimingPolicy, measure_time_detailed
from harness.theory.config import TransformerConfig

if TYPE_CHECKING:
    from harness.theory.flops import Flops
    from harness.theory.hardware import GPUSpec
    from harness.theory.memory.breakdown import MemoryBreakdown

RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "selective", "full")

# The FLOP count of a step is exact and deterministic for a given model and input shape: any
# change beyond float rounding means the computation itself changed, so the tolerance is tiny.
FLOPS_PER_STEP_TOLERANCE = 1e-6

# The metrics derived from the step's wall-time samples: host-bound when the step is.
TIMED_METRICS: frozenset[str] = frozenset({"step_time", "tokens_per_s", "tflops", "mfu", "hfu"})

# Estimate parts named in the memory note: the largest few say where the memory goes.
NOTE_PARTS = 5


class MeasurementError(ValueError):
    """The measured code ran, but what it did makes the numbers meaningless (a diverged loss);
    the message names the step and what to check."""


def require_no_argument_callable(name: str, fn: object) -> Callable[[], object]:
    """`fn` when it can be called with no arguments; a ValueError naming the parameters it
    needs (and how to bind them) otherwise."""
    __tracebackhide__ = True  # pytest: the error is the caller's, not this frame's
    if not callable(fn):
        raise ValueError(f"{name} must be a callable taking no arguments, got {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: assume callable as is
        return fn
    try:
        signature.bind()
    except TypeError:
        needed = [p.name for p in signature.parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                     inspect.Parameter.VAR_KEYWORD)]
        raise ValueError(f"{name} must be a callable taking no arguments, but "
                         f"{getattr(fn, '__qualname__', fn)!r} needs {', '.join(needed)}; bind "
                         f"them first, e.g. lambda: f(x) or functools.partial(f, x)") from None
    return fn


def _check_loss(loss: object, step: int, what: str) -> None:
    """A MeasurementError when the step's loss is NaN or infinite (one device sync)."""
    if isinstance(loss, torch.Tensor):
        finite = bool(torch.isfinite(loss.detach()).all())
        shown = f"{float(loss.detach())}" if loss.numel() == 1 else "not finite"
    elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
        finite, shown = math.isfinite(loss), f"{loss}"
    else:
        return  # no loss returned: nothing to check
    if not finite:
        raise MeasurementError(
            f"the training loss is {shown} at step {step} ({what}): a diverged step is not a "
            f"measurement of training; check the learning rate, the loss function and the "
            f"inputs (fp16 autocast needs a GradScaler)")


class _Steps:
    """The step as the timer calls it: it counts the calls and keeps the last loss, so that a
    diverged loss is caught after timing without a device sync per step."""

    def __init__(self, step: Callable[[], object], done: int) -> None:
        self._step = step
        self.count = done
        self.loss: object = None

    def __call__(self) -> None:
        self.loss = self._step()
        self.count += 1


def _analytic(config: TransformerConfig, batch_size: int, seq_len: int, micro_batches: int,
              recompute: str, causal: bool) -> tuple[Flops, int]:
    """Model and hardware FLOPs of one step (every micro-batch), and what FlopCounterMode would
    count for it (the fallback when it cannot count an op)."""
    from harness.theory.flops import Flops, flop_counter_flops, train_flops

    one = train_flops(config, batch_size, seq_len, recompute=recompute, causal=causal)
    counter = flop_counter_flops(config, batch_size, seq_len, recompute=recompute,
                                 fused_attention=True)
    return (Flops(model=one.model * micro_batches, hardware=one.hardware * micro_batches),
            counter * micro_batches)


def measure_step(step: Callable[[], object], *, clock: Clock, policy: TimingPolicy,
                 device: str, batch_size: int | None = None, seq_len: int | None = None,
                 micro_batches: int = 1, config: TransformerConfig | None = None,
                 recompute: str = "none", gpu: GPUSpec | None = None,
                 precision: str = "bf16-mixed", optimizer_name: str = "adamw",
                 peak_dtype: str = "bf16", causal: bool = False, dropout: bool = False,
                 profile_steps: int = 0, memory_start: MemoryStart | None = None,
                 held_states: Callable[[], dict[str, int]] | None = None) -> dict[str, Metric]:
    """Time `step` (one whole training step, returning its loss or None) and derive throughput,
    utilisation and memory from it.

    It runs once untimed (one-time costs), once under the FLOP counter, then through the
    warmup and samples of `policy`; a NaN or infinite loss at the first, the counted or the
    last step raises `MeasurementError` naming the step. Metrics: `step_time` (s); `tflops`
    and `flops_per_step` (counted FLOPs; an op the counter cannot count is named in an
    `UncountedFlopsWarning`, and with `config` the analytic count stands in for it). With
    `batch_size` and `seq_len` (per micro-batch; `micro_batches` per step): `tokens_per_s`.
    With `config` and `gpu`: `mfu` and `hfu` (analytic model / hardware FLOPs over the step
    time and `gpu.peak_flops(peak_dtype)`). On CUDA: `peak_allocated_bytes`,
    `peak_reserved_bytes` (over warmup and samples), `device_memory_bytes` (NVML), each less
    what `memory_start` says was held before the test began, and with `config` (one
    micro-batch) `memory_vs_estimate` (peak allocated / `training_memory(...).total`), whose
    note puts the estimate's parts beside the model states `held_states()` measures. With
    `profile_steps` on CUDA, `device_time` and host-bound flags (`harness.measure.kernels`).
    """
    require_no_argument_callable("step", step)
    device_type = check_device(device)
    require_positive_int("micro_batches", micro_batches)
    require_choice("recompute", recompute, RECOMPUTE_CHOICES)
    require_bool("causal", causal)
    if (batch_size is None) != (seq_len is None):
        raise ValueError(f"batch_size and seq_len go together (tokens per micro-batch), got "
                         f"batch_size={batch_size!r}, seq_len={seq_len!r}")
    shape = None if batch_size is None or seq_len is None else (
        require_positive_int("batch_size", batch_size), require_positive_int("seq_len", seq_len))
    if config is not None and not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig or None, got "
                         f"{type(config).__name__}")
    if config is not None and shape is None:
        raise ValueError("a config's FLOPs and memory need the step's shape: pass batch_size "
                         "and seq_len (tokens per micro-batch) as well")
    if gpu is not None and config is None:
        raise ValueError("gpu is only used for MFU/HFU, which need the analytic FLOPs of a "
                         "config; pass config=TransformerConfig(...) as well")

    # Everything analytic first: a bad precision, dtype or shape fails before any step runs.
    analytic = counter_analytic = peak = estimate = None
    if config is not None and shape is not None:
        analytic, counter_analytic = _analytic(config, *shape, micro_batches, recompute, causal)
        if gpu is not None:
            peak = gpu.peak_flops(peak_dtype)
        if micro_batches == 1:  # accumulation keeps gradients beside activations: not modelled
            from harness.theory.memory.training import training_memory

            try:
                estimate = training_memory(config, *shape, precision=precision,
                                           optimizer=optimizer_name, recompute=recompute,
                                           dropout=dropout)
            except ValueError as exc:
                raise ValueError(f"memory estimate with precision={precision!r}, "
                                 f"optimizer_name={optimizer_name!r}: {exc}") from None

    # First step, untimed and checked: it pays the one-time costs (optimizer state, lazy
    # modules, compilation, cuBLAS handles) that would otherwise land in the counted step.
    _check_loss(step(), 1, "the first, untimed step")
    loss, count = count_flops(step)
    _check_loss(loss, 2, "the step whose FLOPs were counted")
    counted = count.total
    flops_note = "FlopCounterMode count of one step"
    if not count.complete:
        fallback = ("the analytic count for the config stands in"
                    if counter_analytic is not None else "the count misses their FLOPs")
        warnings.warn(UncountedFlopsWarning(
            f"FlopCounterMode could not count {count.describe_uncounted()}; {fallback}"),
            stacklevel=2)
        if counter_analytic is not None:
            counted = counter_analytic
            flops_note = (f"analytic count (flop_counter_flops): FlopCounterMode could not "
                          f"count {', '.join(sorted(count.uncounted))}")
        else:
            flops_note += f", without the uncounted {', '.join(sorted(count.uncounted))}"

    if device_type == "cuda":
        reset_peak_memory(device)
    steps = _Steps(step, done=2)
    timed = measure_time_detailed(steps, clock=clock, policy=policy, device=device)
    _check_loss(steps.loss, steps.count, "the last timed step")
    seconds = timed.samples

    metrics: dict[str, Metric] = {}
    step_note = timed.describe()
    if counted == 0:
        step_note += "; FlopCounterMode counted no FLOPs, so there is no tflops metric"
    metrics["step_time"] = Metric(name="step_time", unit="s", better="lower", kind="time",
                                  samples=tuple(seconds), note=step_note)
    if shape is not None:
        tokens = shape[0] * shape[1] * micro_batches
        metrics["tokens_per_s"] = Metric(
            name="tokens_per_s", unit="tokens/s", better="higher", kind="throughput",
            samples=tuple(tokens / s for s in seconds),
            note=f"{micro_batches} micro-batch(es) of batch {shape[0]} x sequence {shape[1]} "
                 f"tokens per step")
    if counted > 0:
        metrics["tflops"] = Metric(
            name="tflops", unit="TFLOP/s", better="higher", kind="throughput",
            samples=tuple(counted / s / 1e12 for s in seconds),
            note=f"{flops_note} (hardware-like: recomputation included, causal masking "
                 f"ignored) over the step time")
        metrics["flops_per_step"] = Metric(
            name="flops_per_step", unit="FLOP", better="lower", kind="other",
            samples=(float(counted),), tolerance=FLOPS_PER_STEP_TOLERANCE,
            theory=None if analytic is None else float(analytic.hardware),
            note=f"{flops_note}; theory: analytic hardware FLOPs (recompute={recompute!r}, "
                 f"causal={causal}); a change means the model changed")
    if analytic is not None and peak is not None and gpu is not None:
        from harness.theory.flops import hfu, mfu

        where = f"peak {peak / 1e12:.1f} TFLOP/s ({peak_dtype}) of {gpu.name}"
        metrics["mfu"] = Metric(
            name="mfu", unit="ratio", better="higher", kind="throughput",
            samples=tuple(mfu(analytic.model, s, 1, peak) for s in seconds),
            note=f"analytic model FLOPs (active parameters) / step time / {where}")
        metrics["hfu"] = Metric(
            name="hfu", unit="ratio", better="higher", kind="throughput",
            samples=tuple(hfu(analytic.hardware, s, 1, peak) for s in seconds),
            note=f"analytic hardware FLOPs (recompute={recompute!r}) / step time / {where}")
    if device_type == "cuda":
        settings = (f"{precision}, {optimizer_name}, recompute={recompute!r}, "
                    f"dropout={dropout}")
        metrics.update(memory_metrics(device, estimate, settings, memory_start,
                                      None if held_states is None else held_states()))
        if profile_steps:  # after the memory readings: the profiled steps must not move them
            metrics = _with_profile(metrics, step, profile_steps)
    return metrics


def _with_profile(metrics: dict[str, Metric], step: Callable[[], object],
                  profile_steps: int) -> dict[str, Metric]:
    """`device_time` from a profiled pass, and the timed metrics marked host-bound when the GPU
    idled; the reason in step_time's note when no profile could be taken."""
    profiled, failure = profile_or_reason(step, steps=profile_steps)
    if profiled is None:
        metrics["step_time"] = metrics["step_time"].with_changes(
            note=f"{metrics['step_time'].note}; {failure}")
        return metrics
    profiled = with_wall_time(profiled, metrics["step_time"].median)
    for name in TIMED_METRICS & metrics.keys():  # all follow the step's wall time
        metrics[name] = metrics[name].with_changes(host_bound=profiled.profile.host_bound)
    metrics["device_time"] = device_time_metric("device_time", profiled)
    return metrics


def _parts(breakdown: dict[str, int], count: int) -> str:
    largest = sorted(((v, k) for k, v in breakdown.items() if v > 0), reverse=True)[:count]
    return ", ".join(f"{name} {format_bytes(value)}" for value, name in largest)


def memory_metrics(device: str, estimate: MemoryBreakdown | None, estimate_settings: str,
                   start: MemoryStart | None, states: dict[str, int] | None
                   ) -> dict[str, Metric]:
    """Peak allocated/reserved (torch) and device memory (NVML), each less what was held before
    the test began (`start`), and the peak over the estimate with both breakdowns in its note."""
    allocated, reserved = peak_memory(device)
    held_allocated = 0 if start is None else start.allocated_bytes
    held_reserved = 0 if start is None else start.reserved_bytes
    allocated = max(allocated - held_allocated, 0)
    reserved = max(reserved - held_reserved, 0)
    index = torch.device(device).index
    usage = device_memory_usage(torch.cuda.current_device() if index is None else index)
    held = "" if start is None else f", {start.describe()}"
    metrics = {
        "peak_allocated_bytes": Metric(
            name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
            samples=(float(allocated),),
            note=f"torch.cuda.max_memory_allocated over warmup and timed steps{held}"),
        "peak_reserved_bytes": Metric(
            name="peak_reserved_bytes", unit="B", better="lower", kind="memory",
            samples=(float(reserved),),
            note=f"torch.cuda.max_memory_reserved over warmup and timed steps, less "
                 f"{format_bytes(held_reserved)} reserved before the test began"),
        "device_memory_bytes": Metric(
            name="device_memory_bytes", unit="B", better="lower", kind="memory",
            samples=(float(max(usage.used_bytes - held_reserved, 0)),),
            note=f"{usage.describe()}, after the timed steps, less "
                 f"{format_bytes(held_reserved)} reserved before the test began"),
    }
    if estimate is not None:
        total = estimate.total
        measured = ""
        if states is not None:
            rest = allocated - sum(states.values())
            measured = (f"; measured: {_parts(states, len(states))}, the rest of the peak "
                        f"(activations, logits, working memory) {format_bytes(max(rest, 0))}")
        phase = "" if estimate.phase is None else f" at its peak phase {estimate.phase!r}"
        modelled = estimate.implementation or "the block training_memory describes"
        metrics["memory_vs_estimate"] = Metric(
            name="memory_vs_estimate", unit="ratio", better="lower", kind="memory",
            samples=(allocated / total,), theory=1.0,
            note=f"peak allocated {format_bytes(allocated)} / training_memory estimate "
                 f"{format_bytes(total)} ({estimate_settings}; it models {modelled}); "
                 f"estimate{phase}: "
                 f"{_parts(dict(estimate.parts), NOTE_PARTS)}{measured}")
    return metrics
