"""GPU memory of training and inference: model states, activations, logits, KV cache.

Everything is in bytes. Model states follow the per-parameter byte counts of sources 001 and
003. Activations come in two models, chosen by the training precision:

- Megatron-LM ("fp32", "bf16-mixed", "fp16-mixed", "bf16"): Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models" (quoted with its full breakdown in source
  003), written term by term so the same code covers grouped-query attention, gated MLPs, any
  feed-forward width and fused (flash) attention, and stays exactly 34sbh + 5as^2b for the
  paper's GPT block. The estimate is states plus all activations.
- Eager PyTorch under torch.autocast over fp32 parameters ("bf16-autocast", "fp16-autocast"):
  what `harness.model` (and Hugging Face / torchtitan-style eager models) saves for backward -
  fp32 residual stream and norm inputs, one 16-bit copy of the normed input per projection,
  K and V expanded to every head, unfused gated MLPs - plus the 16-bit weight copies autocast
  makes. The estimate is the peak over the moments of a step (`autocast_step_phases`).

Notation: s sequence length, b micro-batch size, h hidden size, a attention heads, f
feed-forward width, V vocabulary, L layers, t tensor-parallel size, p pipeline-parallel size.

What the estimates leave out: allocator fragmentation and rounding, GEMM workspaces (cuBLAS keeps
a few tens of MiB per handle), and the CUDA context and communication buffers that torch's
allocator never sees (see `CUDA_CONTEXT_BYTES_RANGE`, `DISTRIBUTED_BUFFER_BYTES_RANGE`). The
Megatron-LM model also leaves out transient activation gradients during backward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from harness.checks import (
    ceil_div,
    require_bool,
    require_choice,
    require_positive_int,
)
from harness.theory.config import TransformerConfig, require_config
from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    params_per_rank,
)
from harness.theory.params import attention_params, mlp_params, norm_params

GIB = 2**30

# Precisions whose activations follow Megatron-LM (Korthikanti et al.).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")
# torch.autocast over fp32 parameters, eager PyTorch activations (`autocast_step_phases`).
AUTOCAST_PRECISIONS: tuple[str, ...] = ("bf16-autocast", "fp16-autocast")
TRAINING_PRECISIONS: tuple[str, ...] = PRECISIONS + AUTOCAST_PRECISIONS
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion")
RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "selective", "full")
ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)

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

# Korthikanti et al. assume 16-bit activations and 1-byte dropout masks (source 003). FlashAttention
# keeps one fp32 log-sum-exp per query row and head for its backward pass.
_MASK_BYTES = 1
_FP32_BYTES = 4
# torch.autocast computes matmuls in bf16/fp16: their inputs, outputs and the weight copies are
# 2-byte tensors.
_HALF_BYTES = 2

# Moments of an eager autocast training step at which memory can peak, in step order (see
# `autocast_step_phases`); training_memory reports the largest.
AUTOCAST_PHASES: tuple[str, ...] = ("forward_end", "loss_backward", "layer_backward",
                                    "backward_end")

# Fixed overheads the torch allocator does not see. Source 001 measured the CUDA context of an
# 80GB A100 at 0.47 GiB (torch 2.1, lazy module loading) to 1.78 GiB (torch 1.10, eager loading)
# and summarises it as "0.5-2GB" depending on GPU and torch version.
CUDA_CONTEXT_BYTES_RANGE: tuple[int, int] = (int(0.47 * GIB), 2 * GIB)
# Source 001: torch.distributed takes "about 1-2GB" at initialisation, more with more GPUs; its
# 2-GPU NCCL example grows from 0.55 to 2.00 GiB of device memory at the first barrier.
DISTRIBUTED_BUFFER_BYTES_RANGE: tuple[int, int] = (1 * GIB, 2 * GIB)


def _require_positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


@dataclass(frozen=True)
class MemoryBreakdown:
    """Named, ordered parts of a memory estimate in bytes; `total` is their sum.

    `phase` names the moment of a training step the parts describe, where the estimate is the
    peak over several (autocast precisions, `AUTOCAST_PHASES`); None otherwise.
    """

    parts: Mapping[str, int]
    phase: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.parts, Mapping):
            raise ValueError(f"parts must be a mapping of name to bytes, got {self.parts!r}")
        for name, value in self.parts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"part names must be non-empty strings, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"part {name!r} must be a non-negative integer number of "
                                 f"bytes, got {value!r}")
        if self.phase is not None and (not isinstance(self.phase, str) or not self.phase):
            raise ValueError(f"phase must be a non-empty string or None, got {self.phase!r}")
        object.__setattr__(self, "parts", dict(self.parts))

    @property
    def total(self) -> int:
        """Sum of all parts, in bytes."""
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON: {"total_bytes": ..., "parts": {name: bytes, ...}}, plus
        "phase" when the breakdown has one."""
        result: dict[str, object] = {"total_bytes": self.total, "parts": dict(self.parts)}
        if self.phase is not None:
            result["phase"] = self.phase
        return result


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
                             optimizer_states=optimizer_bytes, weight_copies=_HALF_BYTES)
    return BytesPerParam(weights=2, master_weights=4, gradients=2 + 4,
                         optimizer_states=optimizer_bytes)


def _model_state_parts(params: int, precision: str, optimizer: str, zero_stage: int,
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
    return MemoryBreakdown(_model_state_parts(params, precision, optimizer, zero_stage, dp))


def _check_activation_args(cfg: TransformerConfig, batch_size: int, seq_len: int,
                           recompute: str, tp: int, sp: bool, flash_attention: bool,
                           dropout: bool, bytes_per_element: int) -> TransformerConfig:
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_choice("recompute", recompute, RECOMPUTE_CHOICES)
    check_tensor_parallel(cfg, tp)
    for name, value in (("sp", sp), ("flash_attention", flash_attention), ("dropout", dropout)):
        require_bool(name, value)
    require_positive_int("bytes_per_element", bytes_per_element)
    if sp and seq_len % tp:
        raise ValueError(f"sequence parallelism splits the sequence over tp ranks: seq_len="
                         f"{seq_len} must be divisible by tp={tp}")
    return cfg


def layer_activation_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                           recompute: str = "none", tp: int = 1, sp: bool = False,
                           flash_attention: bool = True, dropout: bool = True,
                           bytes_per_element: int = 2) -> MemoryBreakdown:
    """Activations one transformer layer keeps for backward, per GPU, term by term.

    Each term is a tensor saved for the backward pass (Korthikanti et al. 2022, table in source
    003), in `bytes_per_element` (2 for 16-bit activations) or 1 byte for dropout masks:

    attention block                          MLP block
      norm input            e*sbh              norm input             e*sbh
      QKV input             e*sbh              up-projection input    e*sbh
      Q                     e*sbh              activation input       e*sbf (2x for gated MLPs)
      K, V                  e*sb*kv each       down-projection input  e*sbf
      softmax output        e*as^2b            dropout mask           sbh
      softmax dropout mask  as^2b
      dropout output        e*as^2b
      projection input      e*sbh
      dropout mask          sbh

    With MHA, f = 4h, dropout and e = 2 this is 34sbh + 5as^2b; like the paper it neglects the
    norms' per-token statistics (mean, rstd: a few bytes per token). kv is the key/value width
    (kv_heads * head_dim) with flash attention; without it, the unfused attention expands K and V
    to all heads (`repeat_interleave` in Megatron-LM's DotProductAttention) and saves those, so
    kv = h. Without dropout there are no masks, and the softmax output is the tensor the value
    product reads, so it is stored once (2as^2b). Gated MLPs (SwiGLU, GeGLU) save both the gate
    and the up projection, as a fused activation kernel does; an unfused eager implementation
    also saves the activation's output (one more e*sbf).

    flash_attention=True never materialises the s x s scores: the as^2b terms vanish and a fp32
    log-sum-exp per row and head (4abs bytes) is kept instead. recompute="selective" recomputes
    the core attention (the as^2b terms, or the log-sum-exp) in backward; recompute="full" keeps
    only the layer's input (e*sbh).

    Tensor parallelism (t) splits every tensor inside the attention heads and the MLP; norm inputs,
    QKV and up-projection inputs and the dropout masks stay whole unless sequence parallelism (sp)
    splits them along the sequence: sbh(10 + 24/t + 5as/(ht)) without sp, sbh/t (34 + 5as/h) with
    it (Korthikanti et al., table 2). The checkpointed input of full recomputation is split by sp.
    """
    cfg = _check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                                 dropout, bytes_per_element)
    e, t = bytes_per_element, tp
    whole = t if sp else 1  # divisor of the tensors that tensor parallelism alone leaves whole
    a, h, f = cfg.num_heads, cfg.hidden_size, cfg.ffn_size
    sb = seq_len * batch_size
    sbh = sb * h
    kv_width = cfg.kv_hidden_size if flash_attention else h
    scores = a * seq_len * seq_len * batch_size  # elements of one [b, a, s, s] tensor
    keep_layer = recompute != "full"
    keep_core_attention = recompute == "none"
    unfused_scores = keep_core_attention and not flash_attention
    parts = {
        "attention_norm_input": e * sbh // whole,
        "qkv_input": e * sbh // whole,
        "query": e * sbh // t,
        "key": e * sb * kv_width // t,
        "value": e * sb * kv_width // t,
        "softmax_output": e * scores // t if unfused_scores else 0,
        "softmax_dropout_mask": _MASK_BYTES * scores // t if unfused_scores and dropout else 0,
        "softmax_dropout_output": e * scores // t if unfused_scores and dropout else 0,
        "softmax_stats": (_FP32_BYTES * a * sb // t
                          if keep_core_attention and flash_attention else 0),
        "projection_input": e * sbh // t,
        "attention_dropout_mask": _MASK_BYTES * sbh // whole if dropout else 0,
        "mlp_norm_input": e * sbh // whole,
        "mlp_input": e * sbh // whole,
        "activation_input": e * sb * f * (2 if cfg.gated_mlp else 1) // t,
        "down_projection_input": e * sb * f // t,
        "mlp_dropout_mask": _MASK_BYTES * sbh // whole if dropout else 0,
    }
    if not keep_layer:
        parts = {name: 0 for name in parts}
    parts["checkpoint_input"] = 0 if keep_layer else e * sbh // whole
    return MemoryBreakdown(parts)


def activation_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                     recompute: str = "none", tp: int = 1, sp: bool = False,
                     flash_attention: bool = True, pp: int = 1, dropout: bool = True,
                     bytes_per_element: int = 2) -> MemoryBreakdown:
    """Activation memory of a training step on the busiest GPU: the first pipeline stage.

    Parts:
    - "layer_activations": `layer_activation_bytes` times L layers. With pp stages each holds L/p
      layers, but under the 1F1B schedule the first stage keeps p micro-batches in flight, so it
      stores L/p * p = L layers' worth (Korthikanti et al.; assumes at least p micro-batches per
      step and the non-interleaved schedule).
    - "recompute_working_set": with recomputation, the one layer whose activations are rebuilt
      during its backward (the difference between no recomputation and the chosen kind).
    - "embedding_dropout_mask" (sbh bytes per micro-batch in flight) and "embedding_norm_input"
      (BLOOM's norm after the embedding); the embedding's output itself is the first layer's
      norm input, counted there.
    - Only without pipeline parallelism (the last stage holds these, Korthikanti et al.):
      "final_norm_input" and "output_layer_input" (e*sbh each), "logits" (e*sbV/t: the output
      layer's result, vocabulary split over tp), "logits_fp32" (4sbV/t: the fp32 copy the
      cross-entropy works on; none when activations are already fp32) and "logits_grad_fp32"
      (4sbV/t: the softmax gradient of the loss in backward). A fused vocab-parallel cross
      entropy (Megatron-LM) overwrites its fp32 copy in place and needs about 6 of these 10
      bytes per logit; eager PyTorch can hold one more fp32 copy at the backward peak.
    Tensors that tensor parallelism leaves whole are split by sequence parallelism (sp).
    """
    require_positive_int("pp", pp)
    layer = layer_activation_bytes(cfg, batch_size, seq_len, recompute=recompute, tp=tp, sp=sp,
                                   flash_attention=flash_attention, dropout=dropout,
                                   bytes_per_element=bytes_per_element)
    layers_per_stage = check_pipeline_parallel(cfg, pp)
    micro_batches_in_flight = pp
    stored_layers = layers_per_stage * micro_batches_in_flight
    no_recompute = layer_activation_bytes(cfg, batch_size, seq_len, recompute="none", tp=tp,
                                          sp=sp, flash_attention=flash_attention,
                                          dropout=dropout, bytes_per_element=bytes_per_element)
    e = bytes_per_element
    whole = tp if sp else 1
    sbh = seq_len * batch_size * cfg.hidden_size
    logit_elements = seq_len * batch_size * ceil_div(cfg.vocab_size, tp)
    last_stage_here = pp == 1
    parts = {
        "layer_activations": stored_layers * layer.total,
        "recompute_working_set": no_recompute.total - layer.total,
        "embedding_dropout_mask": (_MASK_BYTES * sbh // whole * micro_batches_in_flight
                                   if dropout else 0),
        "embedding_norm_input": (e * sbh // whole * micro_batches_in_flight
                                 if cfg.embedding_norm else 0),
        "final_norm_input": e * sbh // whole if last_stage_here else 0,
        "output_layer_input": e * sbh // whole if last_stage_here else 0,
        "logits": e * logit_elements if last_stage_here else 0,
        "logits_fp32": (_FP32_BYTES * logit_elements
                        if last_stage_here and e != _FP32_BYTES else 0),
        "logits_grad_fp32": _FP32_BYTES * logit_elements if last_stage_here else 0,
    }
    return MemoryBreakdown(parts)


def _norm_statistics_bytes(cfg: TransformerConfig) -> int:
    """Bytes per token a norm saves besides its input: fp32 mean and rstd for LayerNorm, fp32
    rstd for RMSNorm (torch's fused CUDA kernel)."""
    return (2 if cfg.norm == "layernorm" else 1) * _FP32_BYTES


def autocast_layer_activation_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                                    recompute: str = "none", tp: int = 1, sp: bool = False,
                                    flash_attention: bool = True,
                                    dropout: bool = True) -> MemoryBreakdown:
    """Activations one layer of an eager PyTorch model keeps for backward under torch.autocast
    (bf16 or fp16) over fp32 parameters, per GPU, term by term.

    This is `harness.model`'s block as autograd sees it on CUDA with a recent torch (and a
    Hugging Face or torchtitan-style eager block): separate Q, K, V and gate/up projections,
    SDPA attention, norms in fp32. RMSNorm is torch's fused CUDA kernel, which saves input and
    rstd; where rms_norm is a composite (CPU, older torch) it also saves its fp32 normalised
    output, 4sbh more per norm. In bytes, e = 2:

    attention block                                   MLP block
      norm input (fp32 residual)     4sbh               norm input (fp32)        4sbh
      norm statistics (fp32)         8sb LN, 4sb RMS    norm statistics          as attention
      Q, K, V inputs                 3 * e*sbh          gate/up inputs           2 * e*sbh
      Q, K, V (all heads)            3 * e*sbh          gated: gate, up,
      rotary cos/sin copies          4 * e*s*head_dim     act(gate), product     4 * e*sbf
      ALiBi bias copy (flash)        e*as^2             GELU: input, output      2 * e*sbf
      log-sum-exp (flash)            4asb               ReLU: output             e*sbf
      attention output               e*sbh              dropout mask             sbh
      dropout mask                   sbh

    Autocast casts the fp32 normed input to 16 bits separately for each projection, and each
    matmul saves its own copy (3 on the attention side, 2 for a gated MLP). K and V are expanded
    to all query heads by `repeat_interleave` before SDPA, so grouped-query attention saves no
    less than multi-head attention here. An unfused gated MLP saves the activation's output
    besides its input; ReLU saves only its output, which is also the down projection's input.
    The attention output SDPA saves is the output projection's input too (the same storage).
    RoPE keeps the 16-bit casts of the cos/sin tables that each rotation multiplies by; ALiBi
    passes its bias as a 16-bit attn_mask, which the fused kernels save (CUDA's
    memory-efficient kernel pads its rows to a multiple of 16, ignored here).

    flash_attention=False is SDPA's math kernel, which computes in fp32 whatever the input
    dtype: it saves fp32 Q, K, V (4sbh each) and the fp32 softmax output (4as^2b; with dropout
    also a 1-byte mask and the fp32 dropped-out probabilities), and the output projection saves
    a 16-bit copy of the context. Dropout masks are the 1-byte masks of CUDA's fused dropout;
    SDPA's own dropout keeps only a random-number state with flash attention.

    recompute="selective" recomputes the core attention in backward (drops the log-sum-exp or
    the s x s terms); recompute="full" keeps only the layer's fp32 input ("checkpoint_input",
    4sbh), as torch.utils.checkpoint does. Tensor parallelism (t) and sequence parallelism (sp)
    split the terms as in `layer_activation_bytes`; the rotary copies are never split.
    """
    cfg = _check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                                 dropout, _HALF_BYTES)
    e, t = _HALF_BYTES, tp
    whole = t if sp else 1  # divisor of the tensors that tensor parallelism alone leaves whole
    a, h, f = cfg.num_heads, cfg.hidden_size, cfg.ffn_size
    sb = seq_len * batch_size
    sbh = sb * h
    scores = a * seq_len * seq_len * batch_size  # elements of one [b, a, s, s] tensor
    keep_layer = recompute != "full"
    keep_core_attention = recompute == "none"
    unfused_scores = keep_core_attention and not flash_attention
    attention_element = e if flash_attention else _FP32_BYTES  # the math kernel upcasts
    norm_input = _FP32_BYTES * sbh // whole
    norm_statistics = _norm_statistics_bytes(cfg) * sb // whole
    mlp_inputs = 2 if cfg.gated_mlp else 1
    if cfg.gated_mlp:
        activation_inputs = 2  # gate and up
    elif cfg.mlp == "relu":
        activation_inputs = 0  # ReLU saves its output, the down projection's input
    else:
        activation_inputs = 1
    parts = {
        "attention_norm_input": norm_input,
        "attention_norm_statistics": norm_statistics,
        "qkv_input": 3 * e * sbh // whole,
        "query": attention_element * sbh // t,
        "key": attention_element * sbh // t,
        "value": attention_element * sbh // t,
        # cos and sin, cast for the rotation of Q and again for K: (s, head_dim) each
        "rotary_tables": 4 * e * seq_len * cfg.head_dim if cfg.position == "rope" else 0,
        "attention_bias": (e * a * seq_len * seq_len // t
                           if cfg.position == "alibi" and flash_attention else 0),
        "softmax_output": _FP32_BYTES * scores // t if unfused_scores else 0,
        "softmax_dropout_mask": _MASK_BYTES * scores // t if unfused_scores and dropout else 0,
        "softmax_dropout_output": (_FP32_BYTES * scores // t
                                   if unfused_scores and dropout else 0),
        "softmax_stats": (_FP32_BYTES * a * sb // t
                          if keep_core_attention and flash_attention else 0),
        "projection_input": e * sbh // t,
        "attention_dropout_mask": _MASK_BYTES * sbh // whole if dropout else 0,
        "mlp_norm_input": norm_input,
        "mlp_norm_statistics": norm_statistics,
        "mlp_input": mlp_inputs * e * sbh // whole,
        "activation_input": activation_inputs * e * sb * f // t,
        "activation_output": e * sb * f // t if cfg.gated_mlp else 0,
        "down_projection_input": e * sb * f // t,
        "mlp_dropout_mask": _MASK_BYTES * sbh // whole if dropout else 0,
    }
    if not keep_layer:
        parts = {name: 0 for name in parts}
    parts["checkpoint_input"] = 0 if keep_layer else norm_input
    return MemoryBreakdown(parts)


def _matmul_params_per_rank(cfg: TransformerConfig, tp: int,
                            pp: int) -> tuple[int, int, int]:
    """(weight matrices of one layer, biases of one layer's linear layers, weight matrix of the
    output layer) held by one rank of the first pipeline stage: the parameters autocast copies
    to 16 bits. Norms and embedding lookups use the fp32 parameters; a tied output layer's
    table is copied for its matmul."""
    h, kv, f = cfg.hidden_size, cfg.kv_hidden_size, cfg.ffn_size
    input_matrices = 2 if cfg.gated_mlp else 1
    weights = (2 * h * h + 2 * h * kv) // tp + (input_matrices + 1) * h * f // tp
    replicated_biases = 2 * h if cfg.bias else 0  # as in params_per_rank
    split = attention_params(cfg) + mlp_params(cfg) - replicated_biases
    biases = split // tp + replicated_biases - weights
    output = ceil_div(cfg.vocab_size, tp) * h if pp == 1 else 0
    return weights, biases, output


def _layer_backward_working_set(cfg: TransformerConfig, batch_size: int, seq_len: int, tp: int,
                                sp: bool, flash_attention: bool) -> int:
    """Tensors alive during one layer's backward beyond what the layer saved and the gradients
    accumulated so far, at its widest op - an estimate from the order autograd runs the block.

    Always the fp32 gradient of the residual stream (4sbh). Then the widest of these ops:
    - a projection back into the residual stream (attention output or MLP down projection):
      the 16-bit copy of the incoming gradient (e*sbh), the gradient of its input and its
      16-bit weight gradient, before the saved input and weight copy are released;
    - flash attention's backward: gradients of the output and of Q, K, V in 16 bits (4e*sbh)
      and its fp32 accumulator for the query gradient (4sbh); the math kernel's: the output's
      gradient and two fp32 s x s gradients (probabilities and scores);
    - the MLP activation's backward: a gated MLP's product holds its gradient and both factors'
      gradients while the product itself is already freed (2e*sbf); GELU e*sbf; ReLU, whose
      output stays saved, 2e*sbf.
    """
    e, t = _HALF_BYTES, tp
    whole = t if sp else 1
    h, f = cfg.hidden_size, cfg.ffn_size
    sb = seq_len * batch_size
    sbh, sbf = sb * h, sb * f
    scores = cfg.num_heads * seq_len * seq_len * batch_size
    output_projection = e * sbh // whole + e * (sbh + h * h) // t
    down_projection = e * sbh // whole + e * (sbf + f * h) // t
    if flash_attention:
        core_attention = (4 * e * sbh + _FP32_BYTES * sbh) // t
    else:
        core_attention = (e * sbh + 2 * _FP32_BYTES * scores) // t
    activation = (e if cfg.mlp == "gelu" else 2 * e) * sbf // t
    widest = max(output_projection, down_projection, core_attention, activation)
    return _FP32_BYTES * sbh // whole + widest


def autocast_step_phases(cfg: TransformerConfig, batch_size: int, seq_len: int,
                         precision: str = "bf16-autocast", optimizer: str = "adamw",
                         recompute: str = "none", tp: int = 1, pp: int = 1, sp: bool = False,
                         flash_attention: bool = True, zero_stage: int = 0, dp: int = 1,
                         dropout: bool = True) -> dict[str, MemoryBreakdown]:
    """Memory at each moment of an eager autocast training step where it can peak, by phase.

    The step is zero_grad(set_to_none=True), forward and loss under torch.autocast, backward,
    optimizer step, with fp32 parameters (`bytes_per_param`) on the first pipeline stage.
    Every phase has the same parts; those not alive then are 0.

    - "forward_end": the loss's log-softmax, still inside autocast. No gradients (zero_grad
      freed them); every weight copy (autocast's cache holds them until the region ends, even
      for checkpointed layers); all saved activations; "logits" (e*sbV/t, the output layer's
      result) and "logits_fp32" (8sbV/t: the fp32 copy cross-entropy works on and its saved
      log-probabilities).
    - "loss_backward": the log-softmax backward, the first op of backward. The weight copies
      still saved for backward (with full recomputation only the output layer's); the 16-bit
      logits and their fp32 copy are freed; "logits_fp32" (4sbV/t, the log-probabilities) and
      "logits_grad_fp32" (8sbV/t: the loss's gradient w.r.t. them and the log-softmax's result).
    - "layer_backward": the backward of the stage's last layer. Gradients of the output layer
      and final norm; the layers' weight copies (full recomputation: the rebuilt layer's); all
      layers' activations, plus "recompute_working_set" (the rebuilt layer, less its input,
      which it shares) and "backward_working_set" (`_layer_backward_working_set`).
    - "backward_end": every gradient (ZeRO-sharded from stage 2); a tied embedding's gradient
      is briefly held twice while it is added to the output layer's ("backward_working_set").
      The optimizer step itself needs no more: fused AdamW updates in place (the foreach
      implementation would add one fp32 temporary per parameter).

    Activations ("layer_activations", etc.) are those of `autocast_layer_activation_bytes`, L/p
    layers times p micro-batches in flight as in `activation_bytes`, plus the fp32 inputs of the
    embedding norm and final norm (with their statistics), the output layer's 16-bit input, the
    1-byte embedding dropout mask and, with full recomputation, the fp32 position tables the
    checkpoints keep ("position_tables": RoPE cos/sin, or the ALiBi bias). Assumes one autocast
    region per step, so each weight is copied once (per micro-batch with pipelining, it would be
    copied once per micro-batch in flight).
    """
    cfg = require_config(cfg)
    require_choice("precision", precision, AUTOCAST_PRECISIONS)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    require_positive_int("dp", dp)
    kept = autocast_layer_activation_bytes(cfg, batch_size, seq_len, recompute=recompute, tp=tp,
                                           sp=sp, flash_attention=flash_attention,
                                           dropout=dropout)
    rebuilt = autocast_layer_activation_bytes(cfg, batch_size, seq_len, recompute="none", tp=tp,
                                              sp=sp, flash_attention=flash_attention,
                                              dropout=dropout)
    layers = check_pipeline_parallel(cfg, pp)
    in_flight = pp  # 1F1B: the first stage holds p micro-batches (see activation_bytes)
    last_stage_here = pp == 1
    per_param = bytes_per_param(precision, optimizer)
    states = _model_state_parts(params_per_rank(cfg, tp, pp), precision, optimizer, zero_stage,
                                dp)
    layer_weights, layer_biases, output_weights = _matmul_params_per_rank(cfg, tp, pp)
    e, h = _HALF_BYTES, cfg.hidden_size
    whole = tp if sp else 1
    sbh = seq_len * batch_size * h
    norm_input = (_FP32_BYTES * sbh + _norm_statistics_bytes(cfg) * seq_len * batch_size) // whole
    logit_elements = seq_len * batch_size * ceil_div(cfg.vocab_size, tp) if last_stage_here else 0
    if cfg.position == "rope":
        position_tables = 2 * _FP32_BYTES * seq_len * cfg.head_dim  # cos and sin
    elif cfg.position == "alibi":
        position_tables = _FP32_BYTES * cfg.num_heads * seq_len * seq_len // tp
    else:
        position_tables = 0
    saved = {
        "layer_activations": layers * in_flight * kept.total,
        "recompute_working_set": 0,
        "backward_working_set": 0,
        "embedding_dropout_mask": _MASK_BYTES * sbh // whole * in_flight if dropout else 0,
        "embedding_norm_input": norm_input * in_flight if cfg.embedding_norm else 0,
        "position_tables": position_tables * in_flight if recompute == "full" else 0,
        "final_norm_input": norm_input if last_stage_here else 0,
        "output_layer_input": e * sbh // whole if last_stage_here else 0,
        "logits": 0,
        "logits_fp32": 0,
        "logits_grad_fp32": 0,
    }
    copies = per_param.weight_copies
    # Autocast's cache holds every copy during the forward pass; backward keeps only the
    # copies of weight matrices (a matmul's backward needs no bias), and with full
    # recomputation none of the checkpointed layers'.
    cached_copies = copies * (layers * (layer_weights + layer_biases) + output_weights)
    saved_layer_copies = 0 if recompute == "full" else copies * layers * layer_weights
    no_gradients = {**states, "gradients": 0}
    output_gradients = (per_param.gradients * (output_weights + norm_params(cfg))
                        if last_stage_here else 0)
    tied_embedding_gradient = (per_param.gradients * output_weights
                               if cfg.tied_embeddings and last_stage_here else 0)
    phases = {
        "forward_end": {
            **no_gradients, "weight_copies": cached_copies,
            **saved, "logits": e * logit_elements, "logits_fp32": 2 * _FP32_BYTES * logit_elements,
        },
        "loss_backward": {
            **no_gradients, "weight_copies": copies * output_weights + saved_layer_copies,
            **saved, "logits_fp32": _FP32_BYTES * logit_elements,
            "logits_grad_fp32": 2 * _FP32_BYTES * logit_elements,
        },
        "layer_backward": {
            **states, "gradients": output_gradients,
            "weight_copies": (saved_layer_copies if recompute != "full"
                              else copies * layer_weights),
            **saved, "final_norm_input": 0, "output_layer_input": 0,
            "recompute_working_set": rebuilt.total - kept.total,
            "backward_working_set": _layer_backward_working_set(
                cfg, batch_size, seq_len, tp, sp, flash_attention),
        },
        "backward_end": {
            **states, "weight_copies": 0,
            **{name: 0 for name in saved}, "backward_working_set": tied_embedding_gradient,
        },
    }
    return {phase: MemoryBreakdown(parts, phase=phase) for phase, parts in phases.items()}


def kv_cache_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                   bytes_per_element: int = 2) -> int:
    """KV cache of `seq_len` tokens for `batch_size` sequences:
    2 (K and V) * layers * kv_heads * head_dim * seq_len * batch_size * bytes_per_element."""
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_positive_int("bytes_per_element", bytes_per_element)
    return (2 * cfg.num_layers * cfg.kv_heads * cfg.head_dim * seq_len * batch_size
            * bytes_per_element)


def training_memory(cfg: TransformerConfig, batch_size: int, seq_len: int,
                    precision: str = "bf16-mixed", optimizer: str = "adamw",
                    recompute: str = "none", tp: int = 1, pp: int = 1, sp: bool = False,
                    flash_attention: bool = True, zero_stage: int = 0, dp: int = 1,
                    dropout: bool = True) -> MemoryBreakdown:
    """Memory of a training step on the busiest GPU (first pipeline stage), in bytes.

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
    if precision in AUTOCAST_PRECISIONS:
        phases = autocast_step_phases(cfg, batch_size, seq_len, precision=precision,
                                      optimizer=optimizer, recompute=recompute, tp=tp, pp=pp,
                                      sp=sp, flash_attention=flash_attention,
                                      zero_stage=zero_stage, dp=dp, dropout=dropout)
        return max(phases.values(), key=lambda phase: phase.total)  # the first on a tie
    activations = activation_bytes(cfg, batch_size, seq_len, recompute=recompute, tp=tp, sp=sp,
                                   flash_attention=flash_attention, pp=pp, dropout=dropout,
                                   bytes_per_element=4 if precision == "fp32" else 2)
    states = _model_state_parts(params_per_rank(cfg, tp, pp), precision, optimizer, zero_stage,
                                dp)
    return MemoryBreakdown({**states, **activations.parts})


def inference_memory(cfg: TransformerConfig, batch_size: int, seq_len: int,
                     bytes_per_param: float = 2, bytes_per_activation: int = 2) -> MemoryBreakdown:
    """Memory of serving `batch_size` sequences of `seq_len` tokens on one GPU, in bytes.

    Parts: "weights" (num_params * bytes_per_param: 2 for fp16/bf16, 1 for int8, 0.5 for int4;
    source 003), "kv_cache" (`kv_cache_bytes` in bytes_per_activation), "activations" (the
    tensors alive at the widest point of one layer while prefilling all seq_len tokens with
    fused attention: residual, normed input and either Q, K, V and the attention output, or the
    MLP's intermediate tensors - 3f for gated MLPs, 2f otherwise) and "logits" (the last
    token's logits in fp32 for sampling).
    """
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    _require_positive_number("bytes_per_param", bytes_per_param)
    require_positive_int("bytes_per_activation", bytes_per_activation)
    h, kv, f = cfg.hidden_size, cfg.kv_hidden_size, cfg.ffn_size
    attention_width = 2 * h + (h + 2 * kv) + h
    mlp_width = 2 * h + (3 if cfg.gated_mlp else 2) * f
    tokens = batch_size * seq_len
    return MemoryBreakdown({
        "weights": math.ceil(cfg.num_params() * bytes_per_param),
        "kv_cache": kv_cache_bytes(cfg, batch_size, seq_len, bytes_per_activation),
        "activations": tokens * max(attention_width, mlp_width) * bytes_per_activation,
        "logits": batch_size * cfg.vocab_size * _FP32_BYTES,
    })


def fits(breakdown: MemoryBreakdown, gpu_memory_bytes: int,
         reserve_bytes: int = CUDA_CONTEXT_BYTES_RANGE[1]) -> bool:
    """Whether `breakdown` plus `reserve_bytes` fits in `gpu_memory_bytes`.

    The default reserve is the upper end of the CUDA context range; add
    `DISTRIBUTED_BUFFER_BYTES_RANGE[1]` for multi-GPU runs.
    """
    if not isinstance(breakdown, MemoryBreakdown):
        raise ValueError(f"breakdown must be a MemoryBreakdown (from training_memory or "
                         f"inference_memory), got {type(breakdown).__name__}")
    require_positive_int("gpu_memory_bytes", gpu_memory_bytes)
    if isinstance(reserve_bytes, bool) or not isinstance(reserve_bytes, int) or reserve_bytes < 0:
        raise ValueError(f"reserve_bytes must be a non-negative integer, got {reserve_bytes!r}")
    return breakdown.total + reserve_bytes <= gpu_memory_bytes
