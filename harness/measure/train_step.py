"""One training step of a model, a loss and an optimizer, measured by `harness.measure.step`.

The step is the usual one: zero_grad, forward and loss under autocast, backward, optimizer
step. It takes the models people train as they come: a Hugging Face model (a dict of keyword
inputs, an output object whose `.logits` the loss receives), a timm model, a
`torch.compile`'d module. Bad input is caught before any step runs, with the fix in the message.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from harness.checks import require_choice
from harness.gate.results import Metric
from harness.measure.clocks import Clock, check_device
from harness.measure.kernels import phase_range
from harness.measure.memory import MemoryStart, state_bytes_held
from harness.measure.sampling import TimingPolicy
from harness.measure.step import RECOMPUTE_CHOICES, measure_step
from harness.theory.config import TransformerConfig

if TYPE_CHECKING:
    from harness.theory.hardware import GPUSpec

def _check_module_device(model: torch.nn.Module, device: str) -> None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is not None and first.device.type != check_device(device):
        raise ValueError(f"model has parameters on {first.device}, but device={device!r}; "
                         f"move the model with model.to({device!r}) first")


def _tensors_of(value: object, position: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(position, value)]
    if isinstance(value, Mapping):
        return [(f"{position}[{key!r}]", v) for key, v in value.items()
                if isinstance(v, torch.Tensor)]
    return []


def _check_inputs(inputs: object, device: str) -> tuple[Any, Any]:
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise ValueError(f"inputs must be a pair (model input, target), got "
                         f"{type(inputs).__name__} of length "
                         f"{len(inputs) if hasattr(inputs, '__len__') else 'unknown'}")
    wanted = check_device(device)
    for position, value in zip(("inputs[0]", "inputs[1]"), inputs, strict=True):
        for where, tensor in _tensors_of(value, position):
            if tensor.device.type != wanted:
                raise ValueError(f"{where} is on {tensor.device}, but device={device!r}; move "
                                 f"it with .to({device!r}) first")
    return inputs[0], inputs[1]


def _tokens_shape(x: object) -> tuple[int, int]:
    if isinstance(x, Mapping) and "input_ids" in x:
        x = x["input_ids"]
    if (not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype.is_floating_point
            or x.dtype.is_complex or x.dtype == torch.bool):
        got = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor)
               else f"a {type(x).__name__}")
        raise ValueError(f"with a config, inputs[0] must be integer token ids of shape "
                         f"(batch, seq), or a dict with them as 'input_ids'; got {got}")
    batch, seq = x.shape
    return int(batch), int(seq)


def check_train_step(model: object, inputs: object, loss_fn: object, optimizer: object,
                     device: str) -> tuple[Any, Any]:
    """(model input, target) when the four can make a training step on `device`; otherwise a
    ValueError naming what is wrong and the fix, before anything runs."""
    __tracebackhide__ = True  # pytest: the error is the caller's, not this frame's
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got "
                         f"{type(optimizer).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(output, target), got {loss_fn!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"model ({type(model).__name__}) has no parameters that require gradients, so a "
            f"training step has nothing to train; pass the model whose parameters the "
            f"optimizer updates (to time a forward pass alone, use perf.time)")
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not updated & {id(p) for p in trainable}:
        raise ValueError(
            f"the optimizer updates none of the parameters of model ({type(model).__name__}); "
            f"build it from them, e.g. torch.optim.AdamW(model.parameters())")
    _check_module_device(model, device)
    return _check_inputs(inputs, device)


def model_output(model: torch.nn.Module, x: object) -> Any:
    """`model(x)`, or `model(**x)` for a dict of keyword inputs (Hugging Face's input_ids,
    attention_mask, ...); an output object with a `.logits` tensor (a Hugging Face
    ModelOutput) is replaced by that tensor, which is what a loss function takes."""
    output = model(**x) if isinstance(x, Mapping) else model(x)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else output


def measure_train_step(model: torch.nn.Module, inputs: tuple[Any, Any],
                       loss_fn: Callable[[Any, Any], torch.Tensor],
                       optimizer: torch.optim.Optimizer, *, clock: Clock, policy: TimingPolicy,
                       device: str, config: TransformerConfig | None = None,
                       recompute: str = "none",
                       autocast_dtype: torch.dtype | None = torch.bfloat16,
                       gpu: GPUSpec | None = None, precision: str = "bf16-mixed",
                       optimizer_name: str = "adamw", peak_dtype: str = "bf16",
                       causal: bool = False, profile_steps: int = 0,
                       memory_start: MemoryStart | None = None) -> dict[str, Metric]:
    """Time one training step and derive throughput, utilisation and memory from it.

    A step is `optimizer.zero_grad(set_to_none=True)`, the forward and the loss
    `loss_fn(model_output(model, inputs[0]), inputs[1])` under `torch.autocast(device,
    autocast_dtype)` (no autocast when `autocast_dtype` is None), `loss.backward()` and
    `optimizer.step()`. The optimizer takes real steps: the model trains during the
    measurement, and is otherwise left as it was.

    Metrics are those of `harness.measure.step.measure_step` (step_time, tflops,
    flops_per_step; tokens_per_s, mfu, hfu with a config, whose token shape comes from
    inputs[0]; memory on CUDA, less `memory_start`). `causal` selects the attention FLOP
    convention of the analytic figures (default: Megatron/PaLM, non-causal).
    """
    x, target = check_train_step(model, inputs, loss_fn, optimizer, device)
    device_type = check_device(device)
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise ValueError(f"autocast_dtype must be a torch.dtype (e.g. torch.bfloat16) or None, "
                         f"got {autocast_dtype!r}")
    require_choice("recompute", recompute, RECOMPUTE_CHOICES)
    # config and gpu are checked by measure_step, before any step runs.
    batch_size, seq_len = _tokens_shape(x) if config is not None else (None, None)

    def autocast() -> contextlib.AbstractContextManager[object]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=autocast_dtype)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with phase_range("forward"), autocast():  # phases: named in the profiled pass only
            loss = loss_fn(model_output(model, x), target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else loss!r}")
        with phase_range("backward"):
            torch.autograd.backward(loss)  # the typed spelling of loss.backward()
        with phase_range("optimizer"):
            optimizer.step()
        return loss

    return measure_step(
        step, clock=clock, policy=policy, device=device, batch_size=batch_size,
        seq_len=seq_len, config=config, recompute=recompute, gpu=gpu, precision=precision,
        optimizer_name=optimizer_name, peak_dtype=peak_dtype, causal=causal,
        dropout=_uses_dropout(model), profile_steps=profile_steps, memory_start=memory_start,
        held_states=lambda: state_bytes_held(model, optimizer))


# Dropout modules whose masks the memory estimate must count.
DROPOUT_MODULES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
    torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def _uses_dropout(model: torch.nn.Module) -> bool:
    """Whether a training step keeps dropout masks: the model trains and has a dropout p > 0."""
    return model.training and any(
        isinstance(m, DROPOUT_MODULES) and float(getattr(m, "p", 0)) > 0 for m in model.modules())
