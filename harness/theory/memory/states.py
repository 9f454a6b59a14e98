"""Model states: bytes per parameter by training precision and optimizer, and their ZeRO
sharding over data-parallel ranks.

Per-parameter byte counts follow sources 001 and 003; `bytes_per_param` says which source each
precision's figure comes from and where the sources disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_choice, require_positive_int
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.units import ceil_div

# Precisions whose activations follow Megatron-LM (Korthikanti et al.).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
# torch.autocast over fp32 parameters, eager PyTorch activations (`autocast_step_phases`).
AUTOCAST_PRECISIONS: tuple[str, ...] = ("bf16-autocast", "fp16-autocast")
TRAINING_PRECISIONS: tuple[str, ...] = PRECISIONS + AUTOCAST_PRECISIONS
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion")
ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)
# The parts of a breakdown that are model states (`model_state_parts`); every other part of a
# training estimate is activations or working memory of the step.
MODEL_STATE_PARTS: tuple[str, ...] = ("weights", "master_weights", "gradients",
                                      "optimizer_states")

# Bytes of one element: fp32, and the 16-bit types (bf16, fp16) that torch.autocast computes
# matmuls in (their inputs, outputs and the weight copies are 2-byte tensors).
FP32_BYTES = 4
HALF_BYTES = 2

# Optimizer states per parameter, counted in states of the optimizer's state dtype:
# AdamW keeps two (first and second moment; sources 001 and 003), SGD with momentum and Lion
# one (source 001), plain SGD none (source 003: "plain SGD has no momentum"). Adafactor: source
# 001 puts it at 4 bytes/param "plus some extra", i.e. one fp32 state; that is its first moment
# (beta1) - the factored second moment is only rows + columns per matrix - so with beta1=None
# (the Hugging Face default) real usage is far lower than this estimate.
_STATES_PER_PARAM: dict[str, int] = {
    "adamw": 2, "sgd": 0, "sgd-momentum": 1, "adafactor": 1, "lion": 1,
}
# bitsandbytes' 8-bit AdamW: one byte per moment, 2 bytes/param whatever the training precision
# (source 001). Its per-block quantisation scales (one fp32 per 2048 values) are ignored.
_ADAMW_8BIT_BYTES = 2


def activation_element_bytes(precision: str) -> int:
    """Bytes of one activation element under the Megatron-LM model: 4 in fp32 training, 2 (16-bit
    activations, Korthikanti et al.) otherwise. Tensors that cross GPUs have the same size."""
    require_choice("precision", precision, TRAINING_PRECISIONS)
    return FP32_BYTES if precision == "fp32" else HALF_BYTES


@dataclass(frozen=True)
class BytesPerParam:
    """Bytes each parameter costs in model states, by kind.

    `weight_copies` is not a state: it is the 16-bit copy torch.autocast makes of each matmul
    weight, alive from the forward pass until that weight's backward, so it is not in `total`.
    """

    weights: int
    master_weights: int
    gradients: int
    optimizer_states: int
    weight_copies: int = 0

    @property
    def total(self) -> int:
        """All model-state bytes of one parameter (the autocast weight copy excluded)."""
        return self.weights + self.master_weights + self.gradients + self.optimizer_states


def bytes_per_param(precision: str, optimizer: str) -> BytesPerParam:
    """Model-state bytes per parameter for a training precision and optimizer.

    - "fp32": 4 bytes weights, 4 gradients, fp32 optimizer states (source 001).
    - "bf16-mixed" / "fp16-mixed": 2-byte working weights plus 4-byte fp32 master weights
      (source 001: "6 bytes for mixed precision"); gradients 2 + 4 = 6 bytes, a half-precision
      gradient plus its fp32 copy for the update, as source 003 counts it: (2+4) + (2+4) + (4+4)
      = 20 bytes/param with AdamW. Source 001 counts only the fp32 gradient (18 bytes/param), as
      Megatron-LM and torch autocast keep it; DeepSpeed keeps only the half one (16, the ZeRO
      paper). 20 is the upper of the three.
    - "bf16" (pure, no master weights): everything in bf16, optimizer states included - source
      001's AnyPrecisionAdamW example, 2 + 2 + 4 = 8 bytes/param with AdamW.
    - "bf16-autocast" / "fp16-autocast" (torch.autocast over fp32 parameters): the fp32
      weights are the master copy (4 bytes, no separate master), gradients take the parameters'
      dtype (4), fp32 optimizer states: 4 + 4 + 8 = 16 bytes/param with AdamW. Each matmul
      weight also gets a 2-byte copy (`weight_copies`): autocast casts it once per autocast
      region and the matmul saves it for backward.
    """
    require_choice("precision", precision, TRAINING_PRECISIONS)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    state_bytes = 2 if precision == "bf16" else 4
    optimizer_bytes = (_ADAMW_8BIT_BYTES if optimizer == "adamw-8bit"
                       else _STATES_PER_PARAM[optimizer] * state_bytes)
    if precision == "fp32":
        return BytesPerParam(weights=4, master_weights=0, gradients=4,
                             optimizer_states=optimizer_bytes)
    if precision == "bf16":
        return BytesPerParam(weights=2, master_weights=0, gradients=2,
                             optimizer_states=optimizer_bytes)
    if precision in AUTOCAST_PRECISIONS:
        return BytesPerParam(weights=4, master_weights=0, gradients=4,
                             optimizer_states=optimizer_bytes, weight_copies=HALF_BYTES)
    return BytesPerParam(weights=2, master_weights=4, gradients=2 + 4,
                         optimizer_states=optimizer_bytes)


def model_state_parts(params: int, precision: str, optimizer: str, zero_stage: int,
                      dp: int) -> dict[str, int]:
    """Model states of `params` parameters on one GPU, sharded over dp by ZeRO stage."""
    per_param = bytes_per_param(precision, optimizer)

    def held(bytes_each: int, sharded: bool) -> int:
        elements = ceil_div(params, dp) if sharded else params  # shards are padded to equal size
        return elements * bytes_each

    return {
        "weights": held(per_param.weights, zero_stage >= 3),
        "master_weights": held(per_param.master_weights, zero_stage >= 1),
        "gradients": held(per_param.gradients, zero_stage >= 2),
        "optimizer_states": held(per_param.optimizer_states, zero_stage >= 1),
    }


def model_state_bytes(num_params: int, precision: str = "bf16-mixed", optimizer: str = "adamw",
                      zero_stage: int = 0, dp: int = 1, tp: int = 1,
                      pp: int = 1) -> MemoryBreakdown:
    """Weights, master weights, gradients and optimizer states per GPU.

    tp * pp split the parameters evenly (use `training_memory` for a model's exact per-stage
    share); ZeRO over dp data-parallel ranks then shards optimizer states and master weights
    (stage 1), also gradients (stage 2), also weights (stage 3).
    """
    require_positive_int("num_params", num_params)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    for name, value in (("dp", dp), ("tp", tp), ("pp", pp)):
        require_positive_int(name, value)
    params = ceil_div(num_params, tp * pp)
    return MemoryBreakdown(model_state_parts(params, precision, optimizer, zero_stage, dp))
