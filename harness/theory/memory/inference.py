"""Memory of serving: the KV cache; weights, cache, activations and logits of a batch of
requests on one GPU; and how many requests fit in a given capacity."""

from __future__ import annotations

import math

from harness.checks import require_positive, require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.states import FP32_BYTES
from harness.theory.memory.widths import layer_kinds, layer_widths


def kv_cache_width(cfg: TransformerConfig) -> int:
    """Elements one layer caches per token: keys and values, 2 * kv_heads * head_dim, or for
    MLA the compressed latent and the shared rotary key, kv_lora_rank + qk_rope_head_dim
    (DeepSeek-V2, table 1; what transformers and serving engines cache for it)."""
    cfg = require_config(cfg)
    if cfg.mla is not None:
        return cfg.mla.cached_width
    return 2 * cfg.kv_heads * cfg.head_dim


def kv_cache_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int,
                   bytes_per_element: int = 2) -> int:
    """KV cache of `seq_len` tokens for `batch_size` sequences:
    layers * `kv_cache_width` * cached tokens * batch_size * bytes_per_element, where a
    sliding-window layer caches at most its window of tokens (a rolling cache, as Mistral's
    reference code and transformers' sliding-window cache keep) and every other layer all
    seq_len. For multi-head attention: 2 * layers * h * seq_len * batch * bytes."""
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_positive_int("bytes_per_element", bytes_per_element)
    cached_tokens = sum(layers * (seq_len if window is None else min(seq_len, window))
                        for window, layers in cfg.window_counts().items())
    return kv_cache_width(cfg) * cached_tokens * batch_size * bytes_per_element


def _widest_layer(cfg: TransformerConfig) -> int:
    """Channels per token alive at the widest point of one layer during prefill: the residual
    and the normed input beside either the attention's Q, K, V (and MLA latents) and output,
    or the MLP's intermediate tensors (3f gated, 2f otherwise; for experts f counts the top_k
    routed and the shared experts, plus the k dispatched copies of the token and the router's
    scores)."""
    widest = 0
    for layer in layer_kinds(cfg, range(cfg.num_layers)):
        w = layer_widths(cfg, layer)
        attention = (2 * cfg.hidden_size + w.query + w.key + w.value + w.latents
                     + w.attention_output)
        mlp = (2 * cfg.hidden_size + (3 if cfg.gated_mlp else 2) * w.ffn
               + w.expert_copies * cfg.hidden_size + w.router)
        widest = max(widest, attention, mlp)
    return widest


def inference_memory(cfg: TransformerConfig, batch_size: int, seq_len: int,
                     bytes_per_param: float = 2, bytes_per_activation: int = 2) -> MemoryBreakdown:
    """Memory of serving `batch_size` sequences of `seq_len` tokens on one GPU, in bytes.

    Parts: "weights" (num_params * bytes_per_param, every expert included: 2 for fp16/bf16, 1
    for int8, 0.5 for int4; source 003), "kv_cache" (`kv_cache_bytes` in bytes_per_activation),
    "activations" (the tensors alive at the widest point of one layer while prefilling all
    seq_len tokens with fused attention: residual, normed input and either Q, K, V and the
    attention output, or the MLP's intermediate tensors - 3f for gated MLPs, 2f otherwise) and
    "logits" (the last token's logits in fp32 for sampling).
    """
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_positive("bytes_per_param", bytes_per_param)
    require_positive_int("bytes_per_activation", bytes_per_activation)
    tokens = batch_size * seq_len
    return MemoryBreakdown({
        "weights": math.ceil(cfg.num_params() * bytes_per_param),
        "kv_cache": kv_cache_bytes(cfg, batch_size, seq_len, bytes_per_activation),
        "activations": tokens * _widest_layer(cfg) * bytes_per_activation,
        "logits": batch_size * cfg.vocab_size * FP32_BYTES,
    })


def max_concurrent_requests(cfg: TransformerConfig, seq_len: int, bytes_per_element: int,
                            capacity_bytes: int) -> int:
    """Most requests of seq_len tokens whose weights, KV caches and working set fit in
    `capacity_bytes` (weights and cache elements of `bytes_per_element`); 0 when one does not.
    Inference memory grows strictly with the batch, so this bisects on it."""

    def needed(requests: int) -> int:
        return inference_memory(cfg, requests, seq_len, bytes_per_element,
                                bytes_per_element).total

    if needed(1) > capacity_bytes:
        return 0
    low, high = 1, 2
    while needed(high) <= capacity_bytes:
        low, high = high, 2 * high
    while high - low > 1:  # needed(low) fits, needed(high) does not
        middle = (low + high) // 2
        low, high = (middle, high) if needed(middle) <= capacity_bytes else (low, middle)
    return low
