"""Floating-point operations of a decoder-only transformer: forward, training, decoding, and the
utilisation figures (achieved TFLOP/s, MFU, HFU) built on them.

Conventions (every function here follows them):

- A multiply-add is 2 FLOPs: a (m x k) @ (k x n) matmul costs 2mkn.
- Only matrix multiplies are counted: the Q, K, V and output projections (K and V of width
  kv_hidden_size under GQA; MLA's latent projections), the attention scores QK^T and the
  weighted sum softmax(.)V, the MLP matrices (2, or 3 when gated), the router and experts of
  MoE layers and the output layer (logits). Norms, softmax, activations,
  residual adds, biases, RoPE/ALiBi and the embedding lookup are left out: they are a fraction of
  a percent of the total, and it is exactly what `torch.utils.flop_counter.FlopCounterMode`
  counts, so the two can be put side by side.
- Attention follows the Megatron-LM/PaLM convention: non-causal, every query against every key
  (4*b*s^2*h per layer forward). With `causal=True` the score and weighted-sum matmuls are halved,
  the work a causal kernel that skips masked blocks does (FlashAttention's own accounting).
  A sliding-window layer counts each query against at most its window of keys
  (`twice_attended_pairs`): the window is architecture, not masking, so it applies in both
  conventions.
- Mixture of experts: model FLOPs follow active parameters, each token through its top_k
  routed experts, the shared experts and the router (Megatron-LM `num_floating_point_operations`
  and torchtitan `get_moe_model_nparams_and_flops`; PaLM's 6N + 12LHQT per token with N the
  active matmul parameters). Experts a token is not routed to cost nothing.
- Training: backward = 2 x forward (gradients for inputs and for weights), so model FLOPs are
  3 x forward. "Model" FLOPs exclude recomputation (they give MFU); "hardware" FLOPs include it
  (they give HFU), so model <= hardware always.
- Recomputation: "selective" recomputes the attention core (QK^T and softmax.V) once more in
  backward (Korthikanti et al. 2022); "full" recomputes one forward of every transformer layer.
  The output layer is never recomputed (Megatron-LM checkpoints the transformer layers only), so
  full recomputation matches Narayanan et al. 2021, eq. 3:
  96*b*s*l*h^2 * (1 + s/(6h) + V/(16*l*h)) for a GPT block (4h MLP, no GQA).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import (
    require_bool,
    require_choice,
    require_non_negative,
    require_non_negative_int,
    require_positive,
    require_positive_int,
)
from harness.theory.config import TransformerConfig, require_config
from harness.theory.params import active_params, mlp_matmul_weights, moe_matmul_weights

# Activation recomputation, as every formula (FLOPs, memory, communication) spells it.
RECOMPUTE_KINDS: tuple[str, ...] = ("none", "selective", "full")

# Training costs three forward passes: forward + backward (gradients for inputs and for weights,
# each as expensive as the forward matmul; Narayanan et al. 2021, appendix).
TRAIN_FORWARD_MULTIPLE = 3


@dataclass(frozen=True)
class Flops:
    """FLOPs of one training step: `model` excludes recomputation (for MFU), `hardware` includes
    it (for HFU)."""

    model: int
    hardware: int

    def __post_init__(self) -> None:
        for name in ("model", "hardware"):
            require_non_negative_int(f"Flops.{name}", getattr(self, name))
        if self.model > self.hardware:
            raise ValueError(f"Flops.model={self.model} exceeds Flops.hardware={self.hardware}; "
                             f"hardware FLOPs include recomputation and are never fewer")

    @property
    def recompute_overhead(self) -> float:
        """Extra work from recomputation as a fraction of the model FLOPs (0.0 without)."""
        return (self.hardware - self.model) / self.model if self.model else 0.0


def twice_attended_pairs(seq_len: int, window: int | None, causal: bool) -> int:
    """Twice the (query, key) pairs one sequence's attention core computes, an integer in
    every case: 2s^2 non-causal; s^2 causal (half the square: FlashAttention's accounting,
    which counts the diagonal blocks as half); with a window w < s, 2sw non-causal (every query
    against a full window) and w(2s - w) causal (the band s^2 - (s - w)^2 of the square)."""
    s = seq_len
    if window is None or window >= s:
        return s * s if causal else 2 * s * s
    return window * (2 * s - window) if causal else 2 * s * window


def _attention_core(cfg: TransformerConfig, b: int, s: int, causal: bool,
                    windows: bool) -> tuple[int, int]:
    """(QK^T, softmax.V) FLOPs over all layers; each layer's sliding window counted unless
    `windows` is False (what an eager implementation computes: full s x s, masked)."""
    scores = values = 0
    for window, layers in cfg.window_counts().items():
        pairs2 = twice_attended_pairs(s, window if windows else None, causal)
        # 2 FLOPs per multiply-add over qk (or v) channels per head: 2 * pairs * H * d.
        scores += layers * b * pairs2 * cfg.num_heads * cfg.qk_head_dim
        values += layers * b * pairs2 * cfg.num_heads * cfg.v_head_dim
    return scores, values


def _forward_parts(cfg: TransformerConfig, batch_size: int, seq_len: int, causal: bool,
                   windows: bool) -> dict[str, int]:
    cfg = require_config(cfg)
    b = require_positive_int("batch_size", batch_size)
    s = require_positive_int("seq_len", seq_len)
    require_bool("causal", causal)
    tokens = b * s
    projections, output = cfg.attention_projection_weights()
    moe = moe_matmul_weights(cfg)
    scores, values = _attention_core(cfg, b, s, causal, windows)
    layers, moe_layers = cfg.num_layers, cfg.num_moe_layers
    return {
        "qkv_projection": layers * 2 * tokens * projections,
        "attention_scores": scores,
        "attention_values": values,
        "attention_output": layers * 2 * tokens * output,
        "mlp": cfg.num_dense_layers * 2 * tokens * mlp_matmul_weights(cfg),
        "router": moe_layers * 2 * tokens * moe["router"],
        "experts": moe_layers * 2 * tokens * moe["experts"],
        "shared_experts": moe_layers * 2 * tokens * moe["shared_experts"],
        "logits": 2 * tokens * cfg.hidden_size * cfg.vocab_size,
    }


def forward_flops_breakdown(cfg: TransformerConfig, batch_size: int, seq_len: int,
                            causal: bool = False) -> dict[str, int]:
    """Forward matmul FLOPs by part, summed over all layers; the values add up to
    `forward_flops`.

    Keys: qkv_projection (Q, K, V or MLA's latent projections), attention_scores (QK^T),
    attention_values (softmax.V), attention_output, mlp (dense layers), router, experts (the
    top_k routed experts of each token), shared_experts, logits. Sliding-window layers count
    the keys inside their window (`twice_attended_pairs`).
    """
    return _forward_parts(cfg, batch_size, seq_len, causal, windows=True)


def forward_flops(cfg: TransformerConfig, batch_size: int, seq_len: int,
                  causal: bool = False) -> int:
    """Matmul FLOPs of one forward pass over batch_size sequences of seq_len tokens, logits
    included (also the prefill cost of a prompt of seq_len tokens)."""
    return sum(forward_flops_breakdown(cfg, batch_size, seq_len, causal).values())


# A prompt's prefill is one forward pass over it.
prefill_flops = forward_flops


def _transformer_layer_flops(parts: dict[str, int]) -> int:
    return sum(value for key, value in parts.items() if key != "logits")


def _train(parts: dict[str, int], recompute: str) -> Flops:
    recompute = require_choice("recompute", recompute, RECOMPUTE_KINDS)
    model = TRAIN_FORWARD_MULTIPLE * sum(parts.values())
    if recompute == "selective":
        extra = parts["attention_scores"] + parts["attention_values"]
    elif recompute == "full":
        extra = _transformer_layer_flops(parts)
    else:
        extra = 0
    return Flops(model=model, hardware=model + extra)


def train_flops(cfg: TransformerConfig, batch_size: int, seq_len: int, recompute: str = "none",
                causal: bool = False) -> Flops:
    """FLOPs of one training step (forward + backward) on batch_size x seq_len tokens.

    model = 3 x forward. hardware adds what recomputation repeats: "selective" the attention core
    (QK^T and softmax.V) once, "full" one forward of the transformer layers (not of the output
    layer, which Megatron-LM never recomputes). For mixture-of-experts models every token counts
    its top_k routed experts, the shared experts and the router: active parameters, as
    Megatron-LM's `num_floating_point_operations` (moe_router_topk, shared experts) and
    torchtitan's `get_moe_model_nparams_and_flops` count MoE model FLOPs (6 x active matmul
    parameters per token plus non-causal attention); Megatron omits the router's h x E matmul,
    which is counted here.
    """
    require_choice("recompute", recompute, RECOMPUTE_KINDS)
    return _train(forward_flops_breakdown(cfg, batch_size, seq_len, causal), recompute)


def flop_counter_flops(cfg: TransformerConfig, batch_size: int, seq_len: int,
                       recompute: str = "none", fused_attention: bool = True) -> int:
    """What `FlopCounterMode` reports for one forward + backward of `harness.model.build_model`
    (or of a transformers model of the same config with eager attention, its experts run as
    `batched_mm`: each token through its top_k experts).

    FlopCounterMode ignores causal masking and sliding windows (it counts the full s x s work
    the kernels are given). With a fused SDPA kernel (flash, memory-efficient or cuDNN: the
    CUDA path) it counts the attention backward as 2.5 x the forward core, because that
    backward recomputes QK^T: one extra score matmul per layer beyond the hardware FLOPs. Where
    SDPA falls back to the math path (meta tensors) or attention is eager, it sees plain bmm
    ops whose backward is exactly 2 x forward (`fused_attention=False`).
    """
    require_bool("fused_attention", fused_attention)
    require_choice("recompute", recompute, RECOMPUTE_KINDS)
    parts = _forward_parts(cfg, batch_size, seq_len, causal=False, windows=False)
    counted = _train(parts, recompute).hardware
    if fused_attention:
        counted += parts["attention_scores"]
    return counted


def decode_flops(cfg: TransformerConfig, batch_size: int, context_len: int) -> int:
    """Matmul FLOPs to generate one new token per sequence with a KV cache of context_len tokens.

    The new token goes through every projection, MLP (its experts) and the output layer as a
    1-token forward; its query attends to context_len + 1 keys (the cached ones and its own; at
    most the window in a sliding-window layer), so the score and weighted-sum matmuls each cost
    2*b*heads*head_dim*keys per layer. This is source 003's decode formula
    24*l*h^2*b + 4*l*h*b*(s+1) + 2*b*h*V for a GPT block. MLA decodes in its absorbed form
    (DeepSeek-V2, appendix; what serving engines run over the compressed cache): the
    up-projections fold into the query and the output, costing their weights once per token, and
    every head scores over the cached kv_lora_rank + qk_rope_head_dim channels and sums
    kv_lora_rank channels.
    """
    cfg = require_config(cfg)
    b = require_positive_int("batch_size", batch_size)
    require_non_negative_int("context_len", context_len)  # 0: an empty cache
    one_token = forward_flops_breakdown(cfg, b, 1)
    if cfg.mla is not None:
        score_width, value_width = cfg.mla.cached_width, cfg.mla.kv_lora_rank
    else:
        score_width, value_width = cfg.qk_head_dim, cfg.v_head_dim
    attention_core = 0
    for window, layers in cfg.window_counts().items():
        keys = context_len + 1 if window is None else min(context_len + 1, window)
        attention_core += layers * 2 * b * cfg.num_heads * (score_width + value_width) * keys
    return (sum(one_token.values()) - one_token["attention_scores"]
            - one_token["attention_values"] + attention_core)


def six_nd(num_params: int, tokens: int) -> int:
    """Training FLOPs by the 6ND rule (Kaplan et al. 2020): 2N forward + 4N backward per token."""
    n = require_positive_int("num_params", num_params)
    d = require_positive_int("tokens", tokens)
    return 6 * n * d


def two_n(num_params: int) -> int:
    """Forward FLOPs per token by the 2N rule: one multiply-add per parameter."""
    return 2 * require_positive_int("num_params", num_params)


def approximation_error(cfg: TransformerConfig, batch_size: int, seq_len: int,
                        causal: bool = False) -> float:
    """Relative error of 6ND (N = `active_params(cfg)`, all parameters of a dense model,
    D = batch_size*seq_len) against the full model FLOPs: positive when 6ND overestimates (it
    charges the input embedding and learned positions, which do no matmul), negative when it
    underestimates (it ignores attention scores, which grow with seq_len)."""
    exact = train_flops(cfg, batch_size, seq_len, "none", causal).model
    rule = six_nd(active_params(cfg), batch_size * seq_len)
    return (rule - exact) / exact


def macs_to_flops(macs: float) -> float:
    """FLOPs from multiply-accumulate counts (fvcore, ptflops, DeepSpeed report MACs): x2."""
    require_non_negative("macs", macs)
    return 2 * macs


def flops_to_macs(flops: float) -> float:
    """Multiply-accumulate count from FLOPs: /2."""
    require_non_negative("flops", flops)
    return flops / 2


def quick_tflops_estimate(model_size_billion: float, seq_len: int, global_batch_size: int,
                          seconds_per_iter: float, num_gpus: int, recompute: bool) -> float:
    """TFLOP/s per GPU by the handbook rule (source 001):
    size_B * (4 if recompute else 3) * 2 * seq_len * GBS / (seconds_per_iter * gpus * 1e3).

    It is 6N (8N with full recomputation) per token and ignores attention, so it slightly
    underestimates; use `train_flops` for the exact count.
    """
    size = require_positive("model_size_billion", model_size_billion)
    s = require_positive_int("seq_len", seq_len)
    gbs = require_positive_int("global_batch_size", global_batch_size)
    seconds = require_positive("seconds_per_iter", seconds_per_iter)
    gpus = require_positive_int("num_gpus", num_gpus)
    require_bool("recompute", recompute)
    # 4 = forward + backward (2) + recomputed forward; 3 without recomputation; 2 FLOPs per MAC.
    passes = 4 if recompute else 3
    # size in 1e9 parameters over a 1e3 divisor gives 1e12 (TFLOP/s).
    return size * passes * 2 * s * gbs / (seconds * gpus * 1e3)


def achieved_tflops(flops: float, seconds: float, num_gpus: int = 1) -> float:
    """TFLOP/s per GPU: flops done in `seconds` by `num_gpus` GPUs together."""
    f = require_non_negative("flops", flops)
    t = require_positive("seconds", seconds)
    gpus = require_positive_int("num_gpus", num_gpus)
    return f / (t * gpus) / 1e12


def _utilization(flops_name: str, flops: float, seconds: float, num_gpus: int,
                 peak_flops_per_gpu: float) -> float:
    f = require_non_negative(flops_name, flops)
    t = require_positive("seconds", seconds)
    gpus = require_positive_int("num_gpus", num_gpus)
    peak = require_positive("peak_flops_per_gpu", peak_flops_per_gpu)
    return f / (t * gpus * peak)


def mfu(model_flops: float, seconds: float, num_gpus: int, peak_flops_per_gpu: float) -> float:
    """Model FLOPs utilisation (0..1): model FLOPs (no recomputation) per second over the GPUs'
    dense peak in FLOP/s. Above 1 means the peak or the FLOP count is wrong."""
    return _utilization("model_flops", model_flops, seconds, num_gpus, peak_flops_per_gpu)


def hfu(hardware_flops: float, seconds: float, num_gpus: int, peak_flops_per_gpu: float
        ) -> float:
    """Hardware FLOPs utilisation (0..1): FLOPs actually executed, recomputation included, per
    second over the GPUs' dense peak in FLOP/s; >= MFU for the same step."""
    return _utilization("hardware_flops", hardware_flops, seconds, num_gpus, peak_flops_per_gpu)
