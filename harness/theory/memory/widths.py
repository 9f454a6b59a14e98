"""Per-token widths of the tensors one layer produces, the common input of the activation
models (`activations`, `autocast`) and of serving memory (`inference`).

For the classic GPT/LLaMA block these reduce to h (queries, attention output), kv_heads *
head_dim (keys, values) and d_ff (MLP); explicit head widths, MLA, query/key norms, extra norms
and mixture-of-experts layers change them here, once, for every memory model.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.theory.config import TransformerConfig


@dataclass(frozen=True)
class LayerWidths:
    """Channels per token of the tensors of one layer.

    query, key, value: what the attention core reads (key/value at their GQA width);
    key_all_heads, value_all_heads: the same expanded to every query head (unfused attention,
    or repeat_interleave before SDPA); attention_output: the output projection's input;
    latents: MLA's compressed query and key/value latents (with the rotary key), saved for the
    up-projections and their norms; qk_norm_inputs: queries and keys before their norms;
    extra_norm_inputs: norms beyond one before attention and one before the MLP (sandwich: 2;
    a shared norm of a parallel block: -1); ffn: intermediate channels a token passes through
    (d_ff, or top_k routed experts plus the shared ones); expert_copies: hidden-size copies
    of a token dispatched to its experts; router: expert scores per token.
    """

    query: int
    key: int
    value: int
    key_all_heads: int
    value_all_heads: int
    attention_output: int
    latents: int
    qk_norm_inputs: int
    extra_norm_inputs: int
    ffn: int
    expert_copies: int
    router: int


def layer_widths(cfg: TransformerConfig, layer: int = 0) -> LayerWidths:
    """The widths of layer `layer` of `cfg`."""
    heads = cfg.num_heads
    if cfg.mla is not None:
        q_rank = cfg.mla.q_lora_rank or 0
        latents = q_rank + cfg.mla.cached_width
    else:
        latents = 0
    qk_norm_inputs = 0 if cfg.qk_norm == "none" else cfg.query_width + cfg.key_width
    if cfg.is_moe_layer(layer):
        assert cfg.moe is not None  # is_moe_layer says so
        moe = cfg.moe
        ffn = moe.top_k * moe.expert_ffn_hidden_size + moe.num_shared_experts * moe.shared_width
        copies, router = moe.top_k, moe.num_experts
    else:
        ffn, copies, router = cfg.ffn_size, 0, 0
    return LayerWidths(
        query=cfg.query_width, key=cfg.key_width, value=cfg.value_width,
        key_all_heads=heads * cfg.qk_head_dim, value_all_heads=heads * cfg.v_head_dim,
        attention_output=cfg.attention_width, latents=latents, qk_norm_inputs=qk_norm_inputs,
        extra_norm_inputs=cfg.norms_per_layer - 2, ffn=ffn, expert_copies=copies,
        router=router)


def layer_kinds(cfg: TransformerConfig, layers: range) -> dict[int, int]:
    """{a representative layer index: how many of `layers` share its widths} - dense and
    expert layers differ; everything else is the same in every layer."""
    kinds: dict[int, int] = {}
    representative: dict[bool, int] = {}
    for layer in layers:
        first = representative.setdefault(cfg.is_moe_layer(layer), layer)
        kinds[first] = kinds.get(first, 0) + 1
    return kinds
