"""Activations of Hugging Face transformers' Llama-family decoder blocks (LlamaForCausalLM,
MistralForCausalLM, Qwen2/Qwen3ForCausalLM, MixtralForCausalLM; transformers 5.x with
attn_implementation="sdpa") trained under torch.autocast over fp32 parameters.

Derived from the modeling code (`models/llama/modeling_llama.py` and its copies,
`integrations/sdpa_attention.py`, `integrations/moe.py`) and checked against what autograd saves
(tests/test_hf_memory.py). Where these blocks differ from `harness.model`'s
(`harness.theory.memory.autocast`):

- RMSNorm is Python (`LlamaRMSNorm.forward`): x.pow(2) saves the fp32 input, rsqrt its fp32
  result, and `weight * normalised` the fp32 normalised tensor, so every norm, the final one
  too, keeps 4 more bytes per channel than a fused kernel.
- RoPE's cos/sin are computed once per forward in the dtype of the fp32 embeddings and shared by
  every layer: the rotations save those two fp32 tables once, and the rotated Q and K come out
  in fp32 (bf16 * fp32), cast back to 16 bits by SDPA's autocast.
- Without an attention mask SDPA gets `enable_gqa=True`, so the fused kernels save K and V at
  their own (key/value-head) width; the math kernel expands them to every head in fp32.
- Query/key norms (Qwen3: one RMSNorm of head_dim per head) run on the 16-bit projections: they
  save an fp32 copy of their input, the fp32 rstd per head and the 16-bit normalised tensor that
  their weight multiplies (6 bytes per channel against the 2 of `harness.model`'s estimate).
- Experts run through transformers' default grouped GEMM (`grouped_mm`), which autocast does not
  cover: the gathered tokens, the expert activations and outputs stay fp32 and the experts'
  weights get no 16-bit copy. Only the router's linear layer is autocast. The routing weights
  are Mixtral's (Qwen-MoE routers keep a few bytes per token more or less).
- Llama-family blocks have no residual, MLP or embedding dropout; `dropout` means the config's
  attention_dropout, which the fused kernels apply without saving a mask.
"""

from __future__ import annotations

from harness.checks import require_positive_int
from harness.theory.config import TransformerConfig
from harness.theory.memory.activations import MASK_BYTES, check_activation_args
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.states import FP32_BYTES, HALF_BYTES
from harness.theory.memory.widths import layer_kinds, layer_widths

# What the estimate with implementation="huggingface" models, for its breakdown and notes.
HUGGINGFACE_BLOCKS = ("Hugging Face transformers' Llama-family blocks (Llama, Mistral, Qwen2, "
                      "Qwen3, Mixtral) with SDPA: Python RMSNorm keeping its fp32 output, K and V "
                      "at their own width (enable_gqa), fp32 query/key-norm copies and fp32 "
                      "grouped-GEMM experts")
# Recomputation transformers offers: none, or whole layers (activation_checkpointing_enable).
HUGGINGFACE_RECOMPUTE: tuple[str, ...] = ("none", "full")


def check_huggingface_block(cfg: TransformerConfig, seq_len: int, tp: int = 1, pp: int = 1,
                            sp: bool = False, recompute: str = "none") -> None:
    """Raise a ValueError naming the first thing about `cfg` or the layout that the Hugging Face
    estimate does not model: it covers the Llama-family block on one model replica per GPU
    (data parallelism and ZeRO/FSDP sharding, not tensor or pipeline parallelism)."""
    require_positive_int("seq_len", seq_len)
    if recompute not in HUGGINGFACE_RECOMPUTE:
        raise ValueError(f"transformers recomputes whole layers (activation_checkpointing_"
                         f"enable): with implementation='huggingface' recompute must be one of "
                         f"{', '.join(map(repr, HUGGINGFACE_RECOMPUTE))}; got {recompute!r}")
    if tp != 1 or pp != 1 or sp:
        raise ValueError(f"implementation='huggingface' models one model replica per GPU "
                         f"(data parallel, ZeRO/FSDP via zero_stage and dp); got tp={tp}, "
                         f"pp={pp}, sp={sp}: use implementation='harness' for tensor, "
                         f"pipeline or sequence parallelism")
    unsupported = {
        "mla": (cfg.mla is not None, "latent attention (DeepSeek) is another block"),
        "norm": (cfg.norm != "rmsnorm", "Llama-family blocks use RMSNorm"),
        "position": (cfg.position != "rope", "Llama-family blocks use RoPE"),
        "mlp": (cfg.mlp != "swiglu", "Llama-family blocks use a SwiGLU MLP"),
        "norm_placement": (cfg.norm_placement != "pre", "Llama-family blocks are pre-norm"),
        "parallel_residual": (cfg.parallel_residual, "Llama-family blocks are sequential"),
        "embedding_norm": (cfg.embedding_norm, "Llama-family blocks have no embedding norm"),
        "output_bias": (cfg.output_bias, "Llama-family output layers have no bias"),
        "qk_norm": (cfg.qk_norm == "full", "Qwen3's query/key norms are per head ('head')"),
        "moe": (cfg.moe is not None and cfg.moe.num_shared_experts > 0,
                "Mixtral-style experts without shared experts are modelled"),
    }
    for field, (bad, why) in unsupported.items():
        if bad:
            raise ValueError(f"implementation='huggingface' does not model {cfg.name!r}'s "
                             f"{field}={getattr(cfg, field)!r}: {why}; use "
                             f"implementation='harness' for an estimate of the same kind")
    windows = [w for w in cfg.window_counts() if w is not None and w < seq_len]
    if windows:
        raise ValueError(f"{cfg.name!r} has a sliding window of {min(windows)} tokens, shorter "
                         f"than seq_len={seq_len}: transformers then passes an explicit mask to "
                         f"SDPA (no enable_gqa, K and V expanded, a masked kernel), which "
                         f"implementation='huggingface' does not model; use seq_len <= "
                         f"{min(windows)}")


def huggingface_layer_activation_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                                       recompute: str = "none", flash_attention: bool = True,
                                       dropout: bool = False, layer: int = 0) -> MemoryBreakdown:
    """Activations layer `layer` of a Hugging Face Llama-family model keeps for backward under
    torch.autocast over fp32 parameters, term by term (the module docstring says why each
    differs from `autocast_layer_activation_bytes`). In bytes, e = 2, qk = query + key
    channels of the query/key norms, hq = query + key/value heads:

    attention block                                MLP block (dense)
      norm input, output (fp32)    4sbh each         norm input, output (fp32)  4sbh each
      norm rstd (fp32)             4sb               norm rstd                  4sb
      Q, K, V inputs               3 * e*sbh         gate/up inputs             2 * e*sbh
      Q                            e*sb*q            gate, up, silu(gate),
      K, V (own width)             e*sb*kv each        product                  4 * e*sbf
      query/key norms              (4 + e)*sb*qk + 4sb*hq
      log-sum-exp (flash)          4asb            expert layer (k of E experts)
      attention output             e*sb*q            router input               e*sbh
                                                     router probabilities      4sbE
                                                     routing weights           4sb(2k + 1)
                                                     gathered tokens, outputs  4k*sbh each
                                                     gate|up, silu, product    4k*sbf * (2+1+1)

    flash_attention=False is SDPA's math kernel: fp32 Q and K, V expanded to every head (4sbh
    each for MHA-sized heads) and the fp32 softmax output (4as^2b; with attention dropout also
    its 1-byte mask and the fp32 dropped-out probabilities); the output projection saves a
    16-bit copy of the context. recompute="full" is transformers' activation checkpointing: a
    layer keeps only its fp32 input ("checkpoint_input", 4sbh).
    """
    cfg = check_activation_args(cfg, batch_size, seq_len, recompute, 1, False, flash_attention,
                                dropout, HALF_BYTES)
    check_huggingface_block(cfg, seq_len, recompute=recompute)
    e = HALF_BYTES
    w = layer_widths(cfg, layer)
    sb = seq_len * batch_size
    sbh = sb * cfg.hidden_size
    scores = cfg.num_heads * seq_len * seq_len * batch_size  # elements of one [b, a, s, s]
    attention_element = e if flash_attention else FP32_BYTES  # the math kernel upcasts
    key_width = w.key if flash_attention else w.key_all_heads
    value_width = w.value if flash_attention else w.value_all_heads
    normed_heads = cfg.num_heads + cfg.kv_heads if cfg.qk_norm == "head" else 0
    experts = cfg.is_moe_layer(layer)
    mlp_element = FP32_BYTES if experts else e  # grouped-GEMM experts compute in fp32
    top_k = cfg.moe.top_k if experts and cfg.moe is not None else 0
    parts = {
        "attention_norm_input": FP32_BYTES * sbh,
        "attention_norm_statistics": FP32_BYTES * sb,
        "attention_norm_output": FP32_BYTES * sbh,
        "qkv_input": 3 * e * sbh,
        "query": attention_element * sb * w.query,
        "key": attention_element * sb * key_width,
        "value": attention_element * sb * value_width,
        "qk_norm_inputs": FP32_BYTES * sb * w.qk_norm_inputs,
        "qk_norm_statistics": FP32_BYTES * sb * normed_heads,
        "qk_norm_outputs": e * sb * w.qk_norm_inputs,
        "softmax_output": 0 if flash_attention else FP32_BYTES * scores,
        "softmax_dropout_mask": MASK_BYTES * scores if dropout and not flash_attention else 0,
        "softmax_dropout_output": (FP32_BYTES * scores if dropout and not flash_attention
                                   else 0),
        "softmax_stats": FP32_BYTES * cfg.num_heads * sb if flash_attention else 0,
        "projection_input": e * sb * w.attention_output,
        "mlp_norm_input": FP32_BYTES * sbh,
        "mlp_norm_statistics": FP32_BYTES * sb,
        "mlp_norm_output": FP32_BYTES * sbh,
        "mlp_input": (1 if experts else 2) * e * sbh,  # the router's input, or gate and up's
        "router_probs": FP32_BYTES * sb * w.router,
        "routing_weights": FP32_BYTES * sb * (2 * top_k + 1) if experts else 0,
        "expert_input": FP32_BYTES * sbh * w.expert_copies,
        "activation_input": 2 * mlp_element * sb * w.ffn,  # gate and up
        "activation_output": mlp_element * sb * w.ffn,
        "down_projection_input": mlp_element * sb * w.ffn,
        "expert_output": FP32_BYTES * sbh * w.expert_copies,
    }
    if recompute == "full":
        parts = {name: 0 for name in parts}
    parts["checkpoint_input"] = FP32_BYTES * sbh if recompute == "full" else 0
    return MemoryBreakdown(parts)


def huggingface_position_table_bytes(cfg: TransformerConfig, seq_len: int) -> int:
    """The fp32 RoPE cos and sin tables (seq_len x head_dim each) every layer's rotation saves:
    one pair per forward, shared by all layers and kept whether layers are checkpointed or not."""
    return 2 * FP32_BYTES * seq_len * cfg.head_dim


def huggingface_backward_working_set(cfg: TransformerConfig, batch_size: int, seq_len: int,
                                     flash_attention: bool) -> int:
    """Tensors alive during one layer's backward beyond what it saved and the gradients so far,
    at its widest op - an estimate from the order autograd runs the block, as
    `harness.theory.memory.autocast` estimates it for harness.model.

    Always the fp32 gradient of the residual stream (4sbh). Then the widest of: a projection back
    into the residual stream (the 16-bit incoming gradient, its input's gradient and the 16-bit
    weight gradient); the fused attention backward (16-bit gradients of the output, Q and of K
    and V per query head before the kernel sums them per group, the narrow K and V gradients and
    an fp32 query-gradient accumulator), or the math kernel's two fp32 s x s gradients; the gated
    activation's backward (2e*sbf); the Python RMSNorm's backward (the gradient of its fp32
    output, of the normalised tensor and the product its weight gradient reduces: 3 * 4sbh);
    for expert layers, the fp32 down projection's backward (the gradients of the expert outputs
    and inputs and the fp32 gradient of every expert's down matrix).
    """
    e = HALF_BYTES
    h = cfg.hidden_size
    sb = seq_len * batch_size
    sbh = sb * h
    scores = cfg.num_heads * seq_len * seq_len * batch_size
    widest = 3 * FP32_BYTES * sbh  # the RMSNorm backward
    for layer in layer_kinds(cfg, range(cfg.num_layers)):
        w = layer_widths(cfg, layer)
        output = w.attention_output
        widest = max(widest, e * sbh + e * (sb * output + output * h))
        if flash_attention:
            per_head = w.key_all_heads + w.value_all_heads
            narrow = w.key + w.value if w.key != w.key_all_heads else 0
            widest = max(widest, e * sb * (output + w.query + per_head + narrow)
                         + FP32_BYTES * sb * w.query)
        else:
            widest = max(widest, e * sb * output + 2 * FP32_BYTES * scores)
        if cfg.is_moe_layer(layer):
            assert cfg.moe is not None  # is_moe_layer says so
            expert_width = cfg.moe.expert_ffn_hidden_size
            widest = max(widest,
                         FP32_BYTES * (sbh * w.expert_copies + sb * w.ffn
                                       + cfg.moe.num_experts * expert_width * h),
                         2 * FP32_BYTES * sb * w.ffn)
        else:
            widest = max(widest, e * sbh + e * (sb * w.ffn + w.ffn * h), 2 * e * sb * w.ffn)
    return FP32_BYTES * sbh + widest
