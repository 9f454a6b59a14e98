"""Training memory of eager PyTorch under torch.autocast over fp32 parameters ("bf16-autocast",
"fp16-autocast"): what an eager block saves for backward, and the moments of a step at which
memory can peak.

Two implementations of the block (`IMPLEMENTATIONS`): "harness", `harness.model`'s block (fp32
residual stream and norm inputs, one 16-bit copy of the normed input per projection, K and V
expanded to every head, unfused gated MLPs), and "huggingface", transformers' Llama-family
blocks (`harness.theory.memory.huggingface`); both plus the 16-bit weight copies autocast makes
(`harness.theory.memory.copies`). The estimate is the peak over the moments of a step
(`autocast_step_phases`). Notation as in `harness.theory.memory.activations`.
"""

from __future__ import annotations

from harness.checks import require_choice, require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.memory.activations import MASK_BYTES, check_activation_args
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.copies import matmul_params_per_rank
from harness.theory.memory.huggingface import (
    HUGGINGFACE_BLOCKS,
    check_huggingface_block,
    huggingface_backward_working_set,
    huggingface_layer_activation_bytes,
    huggingface_position_table_bytes,
)
from harness.theory.memory.states import (
    AUTOCAST_PRECISIONS,
    FP32_BYTES,
    HALF_BYTES,
    OPTIMIZERS,
    ZERO_STAGES,
    bytes_per_param,
    model_state_parts,
)
from harness.theory.memory.widths import layer_kinds, layer_widths
from harness.theory.parallel import check_pipeline_parallel, params_per_rank
from harness.theory.params import norm_params
from harness.theory.units import ceil_div

# Moments of an eager autocast training step at which memory can peak, in step order (see
# `autocast_step_phases`); training_memory reports the largest.
AUTOCAST_PHASES: tuple[str, ...] = ("forward_end", "loss_backward", "layer_backward",
                                    "backward_end")
# Implementations of an eager block the autocast estimate models, and what each is.
IMPLEMENTATION_BLOCKS: dict[str, str] = {
    "harness": ("eager PyTorch blocks as harness.model builds them: fused RMSNorm, one 16-bit "
                "copy of the normed input per projection, K and V expanded to every head"),
    "huggingface": HUGGINGFACE_BLOCKS,
}
IMPLEMENTATIONS: tuple[str, ...] = tuple(IMPLEMENTATION_BLOCKS)


def norm_statistics_bytes(cfg: TransformerConfig) -> int:
    """Bytes per token a norm saves besides its input: fp32 mean and rstd for LayerNorm, fp32
    rstd for RMSNorm (torch's fused CUDA kernel)."""
    return (2 if cfg.norm == "layernorm" else 1) * FP32_BYTES


def autocast_layer_activation_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                                    recompute: str = "none", tp: int = 1, sp: bool = False,
                                    flash_attention: bool = True,
                                    dropout: bool = True, layer: int = 0) -> MemoryBreakdown:
    """Activations layer `layer` of an eager PyTorch model keeps for backward under torch.autocast
    (bf16 or fp16) over fp32 parameters, per GPU, term by term.

    This is `harness.model`'s block as autograd sees it on CUDA with a recent torch (Hugging
    Face's blocks differ: `huggingface_layer_activation_bytes`): separate Q, K, V and gate/up
    projections, SDPA attention, norms in fp32. RMSNorm is torch's fused CUDA kernel, which
    saves input and rstd; where rms_norm is a composite (CPU, older torch) it also saves its
    fp32 normalised output, 4sbh more per norm. In bytes, e = 2:

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

    Architectures beyond `harness.model`'s block take the widths of
    `harness.theory.memory.widths` as `layer_activation_bytes` does (real head widths, MLA
    latents, query/key norm inputs, sandwich norms, a parallel block's shared input, expert
    layers); those terms are estimates of the same kind, not checked against autograd.
    """
    cfg = check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                                dropout, HALF_BYTES)
    e, t = HALF_BYTES, tp
    whole = t if sp else 1  # divisor of the tensors that tensor parallelism alone leaves whole
    a, h = cfg.num_heads, cfg.hidden_size
    w = layer_widths(cfg, layer)
    sb = seq_len * batch_size
    sbh = sb * h
    scores = a * seq_len * seq_len * batch_size  # elements of one [b, a, s, s] tensor
    keep_layer = recompute != "full"
    keep_core_attention = recompute == "none"
    unfused_scores = keep_core_attention and not flash_attention
    attention_element = e if flash_attention else FP32_BYTES  # the math kernel upcasts
    norm_input = FP32_BYTES * sbh // whole
    norm_statistics = norm_statistics_bytes(cfg) * sb // whole
    mlp_inputs = 2 if cfg.gated_mlp else 1
    if cfg.gated_mlp:
        activation_inputs = 2  # gate and up
    elif cfg.mlp == "relu":
        activation_inputs = 0  # ReLU saves its output, the down projection's input
    else:
        activation_inputs = 1
    projections_from_input = 2 if cfg.mla is not None else 3  # q (or q_a), k, v (or kv_a)
    shared_input = cfg.parallel_residual  # attention and MLP norms read the same tensor
    shared_norm = cfg.norm_placement == "single"
    parts = {
        "attention_norm_input": norm_input,
        "attention_norm_statistics": norm_statistics,
        "qkv_input": projections_from_input * e * sbh // whole,
        "query": attention_element * sb * w.query // t,
        "key": attention_element * sb * w.key_all_heads // t,
        "value": attention_element * sb * w.value_all_heads // t,
        "latents": 2 * e * sb * w.latents // whole,
        "qk_norm_inputs": e * sb * w.qk_norm_inputs // t,
        # cos and sin, cast for the rotation of Q and again for K: (s, rotary width) each
        "rotary_tables": 4 * e * seq_len * rotary_width(cfg) if cfg.position == "rope" else 0,
        "attention_bias": (e * a * seq_len * seq_len // t
                           if cfg.position == "alibi" and flash_attention else 0),
        "softmax_output": FP32_BYTES * scores // t if unfused_scores else 0,
        "softmax_dropout_mask": MASK_BYTES * scores // t if unfused_scores and dropout else 0,
        "softmax_dropout_output": (FP32_BYTES * scores // t
                                   if unfused_scores and dropout else 0),
        "softmax_stats": (FP32_BYTES * a * sb // t
                          if keep_core_attention and flash_attention else 0),
        "projection_input": e * sb * w.attention_output // t,
        "attention_dropout_mask": MASK_BYTES * sbh // whole if dropout else 0,
        "extra_norm_inputs": max(w.extra_norm_inputs, 0) * (norm_input + norm_statistics),
        "mlp_norm_input": 0 if shared_input else norm_input,
        "mlp_norm_statistics": 0 if shared_norm else norm_statistics,
        "mlp_input": mlp_inputs * e * sbh // whole,
        "router_probs": FP32_BYTES * sb * w.router // whole,
        "expert_input": e * sbh * w.expert_copies // whole,
        "activation_input": activation_inputs * e * sb * w.ffn // t,
        "activation_output": e * sb * w.ffn // t if cfg.gated_mlp else 0,
        "down_projection_input": e * sb * w.ffn // t,
        "mlp_dropout_mask": MASK_BYTES * sbh // whole if dropout else 0,
    }
    if not keep_layer:
        parts = {name: 0 for name in parts}
    parts["checkpoint_input"] = 0 if keep_layer else norm_input
    return MemoryBreakdown(parts)


def rotary_width(cfg: TransformerConfig) -> int:
    """Channels RoPE rotates per head: head_dim (MLA: its rotary part)."""
    return cfg.mla.qk_rope_head_dim if cfg.mla is not None else cfg.head_dim


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
    e, t = HALF_BYTES, tp
    whole = t if sp else 1
    h = cfg.hidden_size
    sb = seq_len * batch_size
    sbh = sb * h
    scores = cfg.num_heads * seq_len * seq_len * batch_size
    widest = 0
    for layer in layer_kinds(cfg, range(cfg.num_layers)):
        w = layer_widths(cfg, layer)
        output = w.attention_output
        output_projection = e * sbh // whole + e * (sb * output + output * h) // t
        down_projection = e * sbh // whole + e * (sb * w.ffn + w.ffn * h) // t
        if flash_attention:
            attention = e * sb * (output + w.query + w.key_all_heads + w.value_all_heads)
            core_attention = (attention + FP32_BYTES * sb * w.query) // t
        else:
            core_attention = (e * sb * output + 2 * FP32_BYTES * scores) // t
        activation = (e if cfg.mlp == "gelu" else 2 * e) * sb * w.ffn // t
        widest = max(widest, output_projection, down_projection, core_attention, activation)
    return FP32_BYTES * sbh // whole + widest


def _stage_activations(cfg: TransformerConfig, batch_size: int, seq_len: int, layers: int,
                       recompute: str, tp: int, sp: bool, flash_attention: bool, dropout: bool,
                       implementation: str) -> tuple[int, int]:
    """(activations the stage's layers keep, the largest rebuilt layer less what it keeps)."""
    kept_total = rebuilt_extra = 0
    for layer, count in layer_kinds(cfg, range(layers)).items():
        sizes = []
        for kind in (recompute, "none"):
            if implementation == "huggingface":
                layer_bytes = huggingface_layer_activation_bytes(
                    cfg, batch_size, seq_len, recompute=kind, flash_attention=flash_attention,
                    dropout=dropout, layer=layer)
            else:
                layer_bytes = autocast_layer_activation_bytes(
                    cfg, batch_size, seq_len, recompute=kind, tp=tp, sp=sp,
                    flash_attention=flash_attention, dropout=dropout, layer=layer)
            sizes.append(layer_bytes.total)
        kept, rebuilt = sizes
        kept_total += count * kept
        rebuilt_extra = max(rebuilt_extra, rebuilt - kept)
    return kept_total, rebuilt_extra


def autocast_step_phases(cfg: TransformerConfig, batch_size: int, seq_len: int,
                         precision: str = "bf16-autocast", optimizer: str = "adamw",
                         recompute: str = "none", tp: int = 1, pp: int = 1, sp: bool = False,
                         flash_attention: bool = True, zero_stage: int = 0, dp: int = 1,
                         dropout: bool = True, implementation: str = "harness"
                         ) -> dict[str, MemoryBreakdown]:
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
    copied once per micro-batch in flight). The loss is cross-entropy on an fp32 copy of the
    16-bit logits, as `harness.model.lm_loss` and transformers' ForCausalLMLoss compute it.

    implementation="huggingface" models transformers' Llama-family blocks instead
    (`harness.theory.memory.huggingface`): their layers' activations, the fp32 RoPE tables all
    layers share ("position_tables", kept with or without recomputation), the final RMSNorm's
    fp32 output ("final_norm_output"), no embedding dropout, no 16-bit copies of grouped-GEMM
    experts, and their own backward working set.
    """
    cfg = require_config(cfg)
    require_choice("precision", precision, AUTOCAST_PRECISIONS)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    require_positive_int("dp", dp)
    require_choice("implementation", implementation, IMPLEMENTATIONS)
    check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                          dropout, HALF_BYTES)
    huggingface = implementation == "huggingface"
    if huggingface:
        check_huggingface_block(cfg, seq_len, tp, pp, sp, recompute)
    layers = check_pipeline_parallel(cfg, pp)
    stage_activations, recompute_working_set = _stage_activations(
        cfg, batch_size, seq_len, layers, recompute, tp, sp, flash_attention, dropout,
        implementation)
    in_flight = pp  # 1F1B: the first stage holds p micro-batches (see activation_bytes)
    last_stage_here = pp == 1
    per_param = bytes_per_param(precision, optimizer)
    states = model_state_parts(params_per_rank(cfg, tp, pp), precision, optimizer, zero_stage,
                               dp)
    stage_weights, stage_biases, output_weights, largest_layer = matmul_params_per_rank(
        cfg, tp, pp, copied_experts=not huggingface)
    e, h = HALF_BYTES, cfg.hidden_size
    whole = tp if sp else 1
    sbh = seq_len * batch_size * h
    norm_input = (FP32_BYTES * sbh + norm_statistics_bytes(cfg) * seq_len * batch_size) // whole
    logit_elements = seq_len * batch_size * ceil_div(cfg.vocab_size, tp) if last_stage_here else 0
    if huggingface:
        position_tables = huggingface_position_table_bytes(cfg, seq_len)
    elif recompute != "full":
        position_tables = 0
    elif cfg.position == "rope":
        position_tables = 2 * FP32_BYTES * seq_len * rotary_width(cfg) * in_flight  # cos, sin
    elif cfg.position == "alibi":
        position_tables = FP32_BYTES * cfg.num_heads * seq_len * seq_len // tp * in_flight
    else:
        position_tables = 0
    saved = {
        "layer_activations": in_flight * stage_activations,
        "recompute_working_set": 0,
        "backward_working_set": 0,
        "embedding_dropout_mask": (MASK_BYTES * sbh // whole * in_flight
                                   if dropout and not huggingface else 0),
        "embedding_norm_input": norm_input * in_flight if cfg.embedding_norm else 0,
        "position_tables": position_tables,
        "final_norm_input": norm_input if last_stage_here else 0,
        **({"final_norm_output": FP32_BYTES * sbh} if huggingface else {}),
        "output_layer_input": e * sbh // whole if last_stage_here else 0,
        "logits": 0,
        "logits_fp32": 0,
        "logits_grad_fp32": 0,
    }
    if huggingface:
        working_set = huggingface_backward_working_set(cfg, batch_size, seq_len,
                                                       flash_attention)
    else:
        working_set = _layer_backward_working_set(cfg, batch_size, seq_len, tp, sp,
                                                  flash_attention)
    copies = per_param.weight_copies
    # Autocast's cache holds every copy during the forward pass; backward keeps only the
    # copies of weight matrices (a matmul's backward needs no bias), and with full
    # recomputation none of the checkpointed layers'.
    cached_copies = copies * (stage_weights + stage_biases + output_weights)
    saved_layer_copies = 0 if recompute == "full" else copies * stage_weights
    no_gradients = {**states, "gradients": 0}
    output_gradients = (per_param.gradients * (output_weights + norm_params(cfg))
                        if last_stage_here else 0)
    tied_embedding_gradient = (per_param.gradients * output_weights
                               if cfg.tied_embeddings and last_stage_here else 0)
    phases = {
        "forward_end": {
            **no_gradients, "weight_copies": cached_copies,
            **saved, "logits": e * logit_elements, "logits_fp32": 2 * FP32_BYTES * logit_elements,
        },
        "loss_backward": {
            **no_gradients, "weight_copies": copies * output_weights + saved_layer_copies,
            **saved, "logits_fp32": FP32_BYTES * logit_elements,
            "logits_grad_fp32": 2 * FP32_BYTES * logit_elements,
        },
        "layer_backward": {
            **states, "gradients": output_gradients,
            "weight_copies": (saved_layer_copies if recompute != "full"
                              else copies * largest_layer),
            **saved, "final_norm_input": 0, "output_layer_input": 0,
            **({"final_norm_output": 0} if huggingface else {}),
            "recompute_working_set": recompute_working_set,
            "backward_working_set": working_set,
        },
        "backward_end": {
            **states, "weight_copies": 0,
            **{name: 0 for name in saved}, "backward_working_set": tied_embedding_gradient,
        },
    }
    modelled = IMPLEMENTATION_BLOCKS[implementation]
    return {phase: MemoryBreakdown(parts, phase=phase, implementation=modelled)
            for phase, parts in phases.items()}
