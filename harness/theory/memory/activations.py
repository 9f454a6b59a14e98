"""Activation memory of training after Megatron-LM: Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models" (quoted with its full breakdown in source 003).

Written term by term so the same code covers grouped-query attention, gated MLPs, any
feed-forward width and fused (flash) attention, with recomputation, tensor and sequence
parallelism, and stays exactly 34sbh + 5as^2b for the paper's GPT block. Used for the
Megatron-LM precisions ("fp32", "bf16-mixed", "fp16-mixed", "bf16"); eager PyTorch under
torch.autocast has its own model (`harness.theory.memory.autocast`).

Notation: s sequence length, b micro-batch size, h hidden size, a attention heads, f
feed-forward width, V vocabulary, L layers, t tensor-parallel size, p pipeline-parallel size.
The model leaves out transient activation gradients during backward.
"""

from __future__ import annotations

from harness.checks import require_bool, require_choice, require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.flops import RECOMPUTE_KINDS
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.states import FP32_BYTES
from harness.theory.memory.widths import layer_kinds, layer_widths
from harness.theory.parallel import check_pipeline_parallel, check_tensor_parallel
from harness.theory.units import ceil_div

# Korthikanti et al. assume 16-bit activations and 1-byte dropout masks (source 003). FlashAttention
# keeps one fp32 log-sum-exp per query row and head for its backward pass.
MASK_BYTES = 1


def check_activation_args(cfg: TransformerConfig, batch_size: int, seq_len: int,
                          recompute: str, tp: int, sp: bool, flash_attention: bool,
                          dropout: bool, bytes_per_element: int) -> TransformerConfig:
    """`cfg` when the arguments of a per-layer activation estimate are valid (this model and the
    autocast one share them); a ValueError names the first that is not."""
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_choice("recompute", recompute, RECOMPUTE_KINDS)
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
                           bytes_per_element: int = 2, layer: int = 0) -> MemoryBreakdown:
    """Activations transformer layer `layer` keeps for backward, per GPU, term by term.

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
    only the layer's input (e*sbh). A sliding window changes none of this: flash attention keeps
    O(s) either way, and unfused attention computes the full masked s x s scores.

    Beyond the paper's block (`harness.theory.memory.widths`): Q, K, V and the projection input
    take their real widths (heads * head_dim; MLA's expanded heads) and MLA saves its latents
    twice (norm input and up-projection input); query/key norms save Q and K before the norm
    ("qk_norm_inputs"); sandwich norms save two more norm inputs, a parallel block reads one
    input for attention and MLP (saved once; with one shared norm, its output too). An expert
    layer saves the router's fp32 probabilities (4*sb*E), the k copies of each token its
    experts read ("expert_input", e*k*sbh) and, for the activation and down-projection terms,
    f = top_k * expert width + the shared experts' widths.

    Tensor parallelism (t) splits every tensor inside the attention heads and the MLP; norm inputs,
    QKV and up-projection inputs and the dropout masks stay whole unless sequence parallelism (sp)
    splits them along the sequence: sbh(10 + 24/t + 5as/(ht)) without sp, sbh/t (34 + 5as/h) with
    it (Korthikanti et al., table 2). The checkpointed input of full recomputation is split by sp.
    """
    cfg = check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                                dropout, bytes_per_element)
    e, t = bytes_per_element, tp
    whole = t if sp else 1  # divisor of the tensors that tensor parallelism alone leaves whole
    a, h = cfg.num_heads, cfg.hidden_size
    w = layer_widths(cfg, layer)
    sb = seq_len * batch_size
    sbh = sb * h
    key_width = w.key if flash_attention else w.key_all_heads
    value_width = w.value if flash_attention else w.value_all_heads
    scores = a * seq_len * seq_len * batch_size  # elements of one [b, a, s, s] tensor
    keep_layer = recompute != "full"
    keep_core_attention = recompute == "none"
    unfused_scores = keep_core_attention and not flash_attention
    shared_input = cfg.parallel_residual  # attention and MLP norms read the same tensor
    shared_norm = cfg.norm_placement == "single"  # ... and share one norm's output
    parts = {
        "attention_norm_input": e * sbh // whole,
        "qkv_input": e * sbh // whole,
        "query": e * sb * w.query // t,
        "key": e * sb * key_width // t,
        "value": e * sb * value_width // t,
        "latents": 2 * e * sb * w.latents // whole,
        "qk_norm_inputs": e * sb * w.qk_norm_inputs // t,
        "softmax_output": e * scores // t if unfused_scores else 0,
        "softmax_dropout_mask": MASK_BYTES * scores // t if unfused_scores and dropout else 0,
        "softmax_dropout_output": e * scores // t if unfused_scores and dropout else 0,
        "softmax_stats": (FP32_BYTES * a * sb // t
                          if keep_core_attention and flash_attention else 0),
        "projection_input": e * sb * w.attention_output // t,
        "attention_dropout_mask": MASK_BYTES * sbh // whole if dropout else 0,
        "extra_norm_inputs": e * sbh * max(w.extra_norm_inputs, 0) // whole,
        "mlp_norm_input": 0 if shared_input else e * sbh // whole,
        "mlp_input": 0 if shared_norm else e * sbh // whole,
        "router_probs": FP32_BYTES * sb * w.router // whole,
        "expert_input": e * sbh * w.expert_copies // whole,
        "activation_input": e * sb * w.ffn * (2 if cfg.gated_mlp else 1) // t,
        "down_projection_input": e * sb * w.ffn // t,
        "mlp_dropout_mask": MASK_BYTES * sbh // whole if dropout else 0,
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
    - "layer_activations": `layer_activation_bytes` of the first stage's L/p layers, times p:
      under the 1F1B schedule the first stage keeps p micro-batches in flight, so it stores
      L/p * p = L layers' worth (Korthikanti et al.; assumes at least p micro-batches per step
      and the non-interleaved schedule).
    - "recompute_working_set": with recomputation, the one layer whose activations are rebuilt
      during its backward (the difference between no recomputation and the chosen kind; the
      largest such layer when dense and expert layers differ).
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
    cfg = check_activation_args(cfg, batch_size, seq_len, recompute, tp, sp, flash_attention,
                                dropout, bytes_per_element)
    layers_per_stage = check_pipeline_parallel(cfg, pp)
    micro_batches_in_flight = pp
    stage_layers = 0
    working_set = 0
    for layer, count in layer_kinds(cfg, range(layers_per_stage)).items():
        kept = layer_activation_bytes(cfg, batch_size, seq_len, recompute=recompute, tp=tp,
                                      sp=sp, flash_attention=flash_attention, dropout=dropout,
                                      bytes_per_element=bytes_per_element, layer=layer).total
        rebuilt = layer_activation_bytes(cfg, batch_size, seq_len, recompute="none", tp=tp,
                                         sp=sp, flash_attention=flash_attention,
                                         dropout=dropout, bytes_per_element=bytes_per_element,
                                         layer=layer).total
        stage_layers += count * kept
        working_set = max(working_set, rebuilt - kept)
    e = bytes_per_element
    whole = tp if sp else 1
    sbh = seq_len * batch_size * cfg.hidden_size
    logit_elements = seq_len * batch_size * ceil_div(cfg.vocab_size, tp)
    last_stage_here = pp == 1
    parts = {
        "layer_activations": micro_batches_in_flight * stage_layers,
        "recompute_working_set": working_set,
        "embedding_dropout_mask": (MASK_BYTES * sbh // whole * micro_batches_in_flight
                                   if dropout else 0),
        "embedding_norm_input": (e * sbh // whole * micro_batches_in_flight
                                 if cfg.embedding_norm else 0),
        "final_norm_input": e * sbh // whole if last_stage_here else 0,
        "output_layer_input": e * sbh // whole if last_stage_here else 0,
        "logits": e * logit_elements if last_stage_here else 0,
        "logits_fp32": (FP32_BYTES * logit_elements
                        if last_stage_here and e != FP32_BYTES else 0),
        "logits_grad_fp32": FP32_BYTES * logit_elements if last_stage_here else 0,
    }
    return MemoryBreakdown(parts)
