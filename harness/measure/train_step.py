"""One training step measured: time, achieved TFLOP/s, MFU/HFU and memory, theory beside each.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one untimed step: those are
hardware-like FLOPs (recomputation from activation checkpointing and the fused-attention
backward included, causal masking ignored). With a `TransformerConfig` the analytic model and
hardware FLOPs of `harness.theory.flops.train_flops` give MFU and HFU, and
`harness.theory.memory.training.training_memory` the memory estimate the measured peak is
compared with.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.gate.results import Metric
from harness.measure.clocks import Clock, check_device
from harness.measure.kernels import device_time_metric, profile_or_reason, with_wall_time
from harness.measure.memory import device_memory_usage, peak_memory, reset_peak_memory
from harness.measure.sampling import TimingPolicy, measure_time_detailed
from harness.theory.config import TransformerConfig

if TYPE_CHECKING:
    from harness.theory.hardware import GPUSpec
    from harness.theory.memory.breakdown import MemoryBreakdown

RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "selective", "full")

# The FLOP count of a step is exact and deterministic for a given model and input shape: any
# change beyond float rounding means the computation itself changed, so the tolerance is tiny.
FLOPS_PER_STEP_TOLERANCE = 1e-6


def _check_module_device(model: torch.nn.Module, device: str) -> None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None and first.device.type != check_device(device):
        raise ValueError(f"model has parameters on {first.device}, but device={device!r}; "
                         f"move the model with model.to({device!r}) first")


def _check_inputs(inputs: object, device: str) -> tuple[Any, Any]:
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise ValueError(f"inputs must be a pair (model input, target), got "
                         f"{type(inputs).__name__} of length "
                         f"{len(inputs) if hasattr(inputs, '__len__') else 'unknown'}")
    wanted = check_device(device)
    for position, value in zip(("inputs[0]", "inputs[1]"), inputs, strict=True):
        if isinstance(value, torch.Tensor) and value.device.type != wanted:
            raise ValueError(f"{position} is on {value.device}, but device={device!r}; move "
                             f"it with .to({device!r}) first")
    return inputs[0], inputs[1]


def _tokens_shape(x: object) -> tuple[int, int]:
    if (not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype.is_floating_point
            or x.dtype.is_complex or x.dtype == torch.bool):
        got = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else f"a {type(x).__name__}")
        raise ValueError(f"with a config, inputs[0] must be integer token ids of shape "
                         f"(batch, seq); got {got}")
    batch, seq = x.shape
    return int(batch), int(seq)


# The metrics derived from the step's wall-time samples: host-bound when the step is.
TIMED_METRICS: frozenset[str] = frozenset({"step_time", "tokens_per_s", "tflops", "mfu", "hfu"})


def measure_train_step(model: torch.nn.Module, inputs: tuple[Any, Any],
                       loss_fn: Callable[[Any, Any], torch.Tensor],
                       optimizer: torch.optim.Optimizer, *, clock: Clock, policy: TimingPolicy,
                       device: str, config: TransformerConfig | None = None,
                       recompute: str = "none",
                       autocast_dtype: torch.dtype | None = torch.bfloat16,
                       gpu: GPUSpec | None = None, precision: str = "bf16-mixed",
                       optimizer_name: str = "adamw", peak_dtype: str = "bf16",
                       causal: bool = False, profile_steps: int = 0) -> dict[str, Metric]:
    """Time one training step and derive throughput, utilisation and memory from it.

    A step is `optimizer.zero_grad(set_to_none=True)`, the forward and the loss
    `loss_fn(model(inputs[0]), inputs[1])` under `torch.autocast(device, autocast_dtype)` (no
    autocast when `autocast_dtype` is None), `loss.backward()` and `optimizer.step()`. The
    optimizer takes real steps: the model trains during the measurement (one first step, one
    counted step, the warmup and every sample), and is otherwise left as it was.

    Metrics: `step_time` (s); `tflops` (FlopCounterMode FLOPs / step time) and `flops_per_step`
    (the count, theory = analytic hardware FLOPs when `config` is given). With `config`:
    `tokens_per_s` (batch * seq / step time, shape from inputs[0]); with `config` and `gpu`:
    `mfu` and `hfu` (analytic model / hardware FLOPs over step time and
    `gpu.peak_flops(peak_dtype)`). On CUDA: `peak_allocated_bytes`, `peak_reserved_bytes` (over
    warmup and samples), `device_memory_bytes` (NVML, CUDA context included) and with `config`
    `memory_vs_estimate` (peak allocated / `training_memory(...).total`, theory 1.0). On CPU
    the memory metrics are omitted: torch tracks no CPU peak. `causal` selects the attention
    FLOP convention of the analytic figures (default: Megatron/PaLM, non-causal). On CUDA with
    `profile_steps`, a profiled pass of that many more steps gives `device_time` (GPU busy
    seconds per step, with the kernel table) and marks `step_time` host-bound when the GPU idled
    (`harness.measure.kernels`).

    FlopCounterMode counts only ops it has a formula for: on CUDA the fused SDPA kernels are
    counted (their backward as 2.5x the forward core), but SDPA's CPU kernel is not, so on CPU
    the counted FLOPs miss the attention core and fall below the analytic figure.
    """
    device_type = check_device(device)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got "
                         f"{type(optimizer).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(output, target), got {loss_fn!r}")
    if recompute not in RECOMPUTE_CHOICES:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_CHOICES)}; "
                         f"got {recompute!r}")
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise ValueError(f"autocast_dtype must be a torch.dtype (e.g. torch.bfloat16) or None, "
                         f"got {autocast_dtype!r}")
    if config is not None and not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig or None, got "
                         f"{type(config).__name__}")
    if gpu is not None and config is None:
        raise ValueError("gpu is only used for MFU/HFU, which need the analytic FLOPs of a "
                         "config; pass config=TransformerConfig(...) as well")
    _check_module_device(model, device)
    x, target = _check_inputs(inputs, device)

    # Everything analytic first: a bad precision, dtype or shape fails before any step runs.
    analytic = peak = estimate = shape = None
    dropout = _uses_dropout(model)
    if config is not None:
        from harness.theory.flops import train_flops

        shape = _tokens_shape(x)

        analytic = train_flops(config, *shape, recompute=recompute, causal=causal)
        if gpu is not None:
            peak = gpu.peak_flops(peak_dtype)
        # Estimated on CPU too, where it is not reported, so that bad settings fail everywhere.
        from harness.theory.memory.training import training_memory

        try:
            estimate = training_memory(config, *shape, precision=precision,
                                       optimizer=optimizer_name, recompute=recompute,
                                       dropout=dropout)
        except ValueError as exc:
            raise ValueError(f"memory estimate with precision={precision!r}, "
                             f"optimizer_name={optimizer_name!r}: {exc}") from None

    def autocast() -> contextlib.AbstractContextManager[object]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=autocast_dtype)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), target)
        torch.autograd.backward(loss)  # the typed spelling of loss.backward()
        optimizer.step()

    # First step, untimed and checked: it pays the one-time costs (optimizer state, lazy
    # modules, cuBLAS handles) that would otherwise land in the counted step.
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = loss_fn(model(x), target)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got "
                         f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else loss!r}")
    torch.autograd.backward(loss)  # the typed spelling of loss.backward()
    optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    counted_flops = int(counter.get_total_flops())

    if device_type == "cuda":
        reset_peak_memory(device)
    timed = measure_time_detailed(step, clock=clock, policy=policy, device=device)
    seconds = timed.samples

    metrics: dict[str, Metric] = {}
    step_note = timed.describe()
    if counted_flops == 0:
        step_note += "; FlopCounterMode counted no FLOPs, so there is no tflops metric"
    metrics["step_time"] = Metric(name="step_time", unit="s", better="lower", kind="time",
                                  samples=tuple(seconds), note=step_note)
    if shape is not None:
        batch, seq = shape
        metrics["tokens_per_s"] = Metric(
            name="tokens_per_s", unit="tokens/s", better="higher", kind="throughput",
            samples=tuple(batch * seq / s for s in seconds),
            note=f"batch {batch} x sequence {seq} tokens per step")
    if counted_flops > 0:
        metrics["tflops"] = Metric(
            name="tflops", unit="TFLOP/s", better="higher", kind="throughput",
            samples=tuple(counted_flops / s / 1e12 for s in seconds),
            note="FLOPs counted by FlopCounterMode (hardware-like: recomputation included, "
                 "causal masking ignored) over the step time")
        metrics["flops_per_step"] = Metric(
            name="flops_per_step", unit="FLOP", better="lower", kind="other",
            samples=(float(counted_flops),), tolerance=FLOPS_PER_STEP_TOLERANCE,
            theory=None if analytic is None else float(analytic.hardware),
            note="FlopCounterMode count of one step; theory: analytic hardware FLOPs "
                 f"(recompute={recompute!r}, causal={causal}); a change means the model changed")
    if analytic is not None and peak is not None and gpu is not None:
        from harness.theory.flops import hfu, mfu

        where = f"peak {peak / 1e12:.1f} TFLOP/s ({peak_dtype}) of {gpu.name}"
        metrics["mfu"] = Metric(
            name="mfu", unit="ratio", better="higher", kind="throughput",
            samples=tuple(mfu(analytic.model, s, 1, peak) for s in seconds),
            note=f"analytic model FLOPs / step time / {where}")
        metrics["hfu"] = Metric(
            name="hfu", unit="ratio", better="higher", kind="throughput",
            samples=tuple(hfu(analytic.hardware, s, 1, peak) for s in seconds),
            note=f"analytic hardware FLOPs (recompute={recompute!r}) / step time / {where}")
    if device_type == "cuda":
        metrics.update(_memory_metrics(device, estimate, f"{precision}, {optimizer_name}, "
                                       f"recompute={recompute!r}, dropout={dropout}"))
        if profile_steps:  # after the memory readings: the profiled steps must not move them
            profiled, failure = profile_or_reason(step, steps=profile_steps)
            if profiled is not None:
                profiled = with_wall_time(profiled, metrics["step_time"].median)
            if profiled is None:
                metrics["step_time"] = metrics["step_time"].with_changes(
                    note=f"{metrics['step_time'].note}; {failure}")
            else:
                for name in TIMED_METRICS & metrics.keys():  # all follow the step's wall time
                    metrics[name] = metrics[name].with_changes(
                        host_bound=profiled.profile.host_bound)
                metrics["device_time"] = device_time_metric("device_time", profiled)
    return metrics


# Dropout modules whose masks the memory estimate must count.
DROPOUT_MODULES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
    torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def _uses_dropout(model: torch.nn.Module) -> bool:
    """Whether a training step keeps dropout masks: the model trains and has a dropout p > 0."""
    return model.training and any(
        isinstance(m, DROPOUT_MODULES) and float(getattr(m, "p", 0)) > 0 for m in model.modules())


def _memory_metrics(device: str, estimate: MemoryBreakdown | None,
                    estimate_settings: str) -> dict[str, Metric]:
    """Peak allocated/reserved (torch), device memory (NVML), and the peak over the estimate."""
    allocated, reserved = peak_memory(device)
    index = torch.device(device).index
    usage = device_memory_usage(torch.cuda.current_device() if index is None else index)
    metrics = {
        "peak_allocated_bytes": Metric(
            name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
            samples=(float(allocated),),
            note="torch.cuda.max_memory_allocated over warmup and timed steps"),
        "peak_reserved_bytes": Metric(
            name="peak_reserved_bytes", unit="B", better="lower", kind="memory",
            samples=(float(reserved),),
            note="torch.cuda.max_memory_reserved over warmup and timed steps"),
        "device_memory_bytes": Metric(
            name="device_memory_bytes", unit="B", better="lower", kind="memory",
            samples=(float(usage.used_bytes),), note=usage.describe() + ", after the timed steps"),
    }
    if estimate is not None:
        total = estimate.total
        metrics["memory_vs_estimate"] = Metric(
            name="memory_vs_estimate", unit="ratio", better="lower", kind="memory",
            samples=(allocated / total,), theory=1.0,
            note=f"peak allocated {allocated} B / training_memory estimate {total} B "
                 f"({estimate_settings}, flash attention)")
    return metrics
