"""Memory of a whole training step on the busiest GPU: model states plus activations, by the
Megatron-LM model or, for autocast precisions, the peak over the moments of an eager step; and
the same step under each kind of parallelism (`memory_by_layout`)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_choice, require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.memory.activations import activation_bytes
from harness.theory.memory.autocast import IMPLEMENTATIONS, autocast_step_phases
from harness.theory.memory.breakdown import MemoryBreakdown, device_reserve_bytes
from harness.theory.memory.states import (
    AUTOCAST_PRECISIONS,
    MODEL_STATE_PARTS,
    OPTIMIZERS,
    TRAINING_PRECISIONS,
    ZERO_STAGES,
    activation_element_bytes,
    model_state_parts,
)
from harness.theory.parallel import params_per_rank

# What the estimate models at the Megatron-LM precisions (`PRECISIONS`).
MEGATRON_LAYERS = "Megatron-LM's layers (Korthikanti et al. 2022)"


def training_memory(cfg: TransformerConfig, batch_size: int, seq_len: int,
                    precision: str = "bf16-mixed", optimizer: str = "adamw",
                    recompute: str = "none", tp: int = 1, pp: int = 1, sp: bool = False,
                    flash_attention: bool = True, zero_stage: int = 0, dp: int = 1,
                    dropout: bool = True, implementation: str = "harness") -> MemoryBreakdown:
    """Memory of a training step on the busiest GPU (first pipeline stage), in bytes.

    `implementation` chooses whose transformer block the activations are those of, and the
    breakdown's `implementation` says it in words: "harness" (the default) is harness.model's
    block under the autocast precisions and Megatron-LM's layers under the others;
    "huggingface" is transformers' Llama-family blocks (Llama, Mistral, Qwen2/3, Mixtral with
    SDPA) trained under torch.autocast, so it needs an autocast precision
    (`harness.theory.memory.huggingface` says what differs).

    Model states ("weights", "master_weights", "gradients", "optimizer_states") are those of the
    parameters this GPU holds (`params_per_rank`), sharded over dp by ZeRO stage.

    - Megatron-LM precisions (`PRECISIONS`): all model states plus `activation_bytes` with
      batch_size as the micro-batch size, 4-byte activations for precision="fp32" and 2-byte
      ones otherwise.
    - Autocast precisions (`AUTOCAST_PRECISIONS`, eager PyTorch under torch.autocast over fp32
      parameters): the largest of `autocast_step_phases`, whose name is the breakdown's
      `phase`. Once tokens per micro-batch (sb) are many against h, that is the start of
      backward ("loss_backward"), where all saved activations, the 16-bit weight copies and
      three fp32 logits-sized buffers coexist while no gradient exists yet; with few tokens it
      is the end of backward, every gradient present.

    Excludes the CUDA context and communication buffers (`CUDA_CONTEXT_BYTES_RANGE`,
    `DISTRIBUTED_BUFFER_BYTES_RANGE`): compare the total with torch.cuda.max_memory_allocated,
    and use `fits` against the device's capacity.
    """
    cfg = require_config(cfg)
    require_choice("precision", precision, TRAINING_PRECISIONS)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    require_positive_int("dp", dp)
    require_choice("implementation", implementation, IMPLEMENTATIONS)
    if precision in AUTOCAST_PRECISIONS:
        phases = autocast_step_phases(cfg, batch_size, seq_len, precision=precision,
                                      optimizer=optimizer, recompute=recompute, tp=tp, pp=pp,
                                      sp=sp, flash_attention=flash_attention,
                                      zero_stage=zero_stage, dp=dp, dropout=dropout,
                                      implementation=implementation)
        return max(phases.values(), key=lambda phase: phase.total)  # the first on a tie
    if implementation != "harness":
        raise ValueError(f"implementation={implementation!r} models training under "
                         f"torch.autocast over fp32 parameters; precision={precision!r} is "
                         f"Megatron-LM's mixed precision: use precision='bf16-autocast' (or "
                         f"'fp16-autocast') with it")
    activations = activation_bytes(cfg, batch_size, seq_len, recompute=recompute, tp=tp, sp=sp,
                                   flash_attention=flash_attention, pp=pp, dropout=dropout,
                                   bytes_per_element=activation_element_bytes(precision))
    states = model_state_parts(params_per_rank(cfg, tp, pp), precision, optimizer, zero_stage,
                               dp)
    return MemoryBreakdown({**states, **activations.parts}, implementation=MEGATRON_LAYERS)


# Parts of a training estimate by what a measurement can set beside them: the model states
# torch reports (parameters, gradients, optimizer states) and the rest of the peak.
# "activations" takes every part no other group names.
_PART_GROUPS: dict[str, tuple[str, ...]] = {
    "parameters": ("weights", "master_weights"),
    "gradients": ("gradients",),
    "optimizer_states": ("optimizer_states",),
    "weight_copies": ("weight_copies",),
    "activations": (),
    "logits_and_loss": ("logits", "logits_fp32", "logits_grad_fp32"),
    "working_memory": ("backward_working_set", "recompute_working_set"),
}


def training_memory_groups(memory: MemoryBreakdown) -> dict[str, int]:
    """A training estimate's parts summed into the groups a measured breakdown has: parameters,
    gradients, optimizer states (what `harness.measure.memory.state_bytes_held` reports), the
    16-bit weight copies, activations, logits and loss, and working memory (transient tensors
    of backward; cuBLAS's workspace is not in any estimate). The groups add up to the total."""
    if not isinstance(memory, MemoryBreakdown):
        raise ValueError(f"memory must be a MemoryBreakdown from training_memory, got "
                         f"{type(memory).__name__}")
    named = {name for names in _PART_GROUPS.values() for name in names}
    return {group: sum(bytes_ for name, bytes_ in memory.parts.items()
                       if (name in names if names else name not in named))
            for group, names in _PART_GROUPS.items()}


@dataclass(frozen=True)
class LayoutMemory:
    """Per-GPU training memory under one parallel layout: model states, the rest (activations and
    working memory of the step), their total, and whether it fits beside `device_reserve_bytes`."""

    layout: str
    dp: int
    tp: int
    pp: int
    zero_stage: int
    model_state_bytes: int
    activation_bytes: int
    total_bytes: int
    fits: bool


@dataclass(frozen=True)
class ImpossibleLayout:
    """A parallel layout the model cannot take, and why (the ValueError's message)."""

    layout: str
    dp: int
    tp: int
    pp: int
    zero_stage: int
    not_possible: str


def memory_by_layout(cfg: TransformerConfig, *, batch_size: int, seq_len: int, num_gpus: int,
                     tp: int, pp: int, sp: bool, zero_stage: int, recompute: str,
                     precision: str, optimizer: str, gpu_memory_bytes: int
                     ) -> tuple[LayoutMemory | ImpossibleLayout, ...]:
    """Per-GPU training memory of the same micro-batch on one GPU and with all num_gpus GPUs
    spent on one kind of parallelism (DP with the chosen ZeRO stage, TP, PP), then the chosen
    layout: what each kind divides. DP alone divides nothing unless ZeRO shards the model
    states; TP divides weights and most activations; PP divides the weights, not the first
    stage's activations (1F1B keeps pp micro-batches in flight). A layout the model cannot
    take has its reason instead of numbers. "fits" adds `device_reserve_bytes` (the CUDA context
    and, with more than one GPU, NCCL's buffers)."""
    layouts = [("1 GPU", 1, 1, 1, 0)]
    if num_gpus > 1:
        layouts += [(f"DP={num_gpus}, ZeRO {zero_stage}", num_gpus, 1, 1, zero_stage),
                    (f"TP={num_gpus}", 1, num_gpus, 1, 0),
                    (f"PP={num_gpus}", 1, 1, num_gpus, 0)]
    chosen = (f"chosen: DP={num_gpus // (tp * pp)}, TP={tp}, PP={pp}, ZeRO {zero_stage}",
              num_gpus // (tp * pp), tp, pp, zero_stage)
    shapes = [layout[1:] for layout in layouts]
    if chosen[1:] in shapes:
        index = shapes.index(chosen[1:])
        layouts[index] = (f"{layouts[index][0]} (chosen)", *layouts[index][1:])
    else:
        layouts.append(chosen)
    rows: list[LayoutMemory | ImpossibleLayout] = []
    for label, dp, t, p, zero in layouts:
        try:
            memory = training_memory(cfg, batch_size, seq_len, precision, optimizer, recompute,
                                     t, p, sp and t > 1, flash_attention=True, zero_stage=zero,
                                     dp=dp)
        except ValueError as exc:
            rows.append(ImpossibleLayout(layout=label, dp=dp, tp=t, pp=p, zero_stage=zero,
                                         not_possible=str(exc)))
            continue
        states = sum(memory.parts.get(name, 0) for name in MODEL_STATE_PARTS)
        rows.append(LayoutMemory(
            layout=label, dp=dp, tp=t, pp=p, zero_stage=zero, model_state_bytes=states,
            activation_bytes=memory.total - states, total_bytes=memory.total,
            fits=memory.total + device_reserve_bytes(dp * t * p) <= gpu_memory_bytes))
    return tuple(rows)
