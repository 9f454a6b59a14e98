"""Memory of serving: the KV cache; weights, cache, activations and logits of a batch of
requests on one GPU; and how many requests fit in a given capacity."""

from __future__ import annotations

import math

from harness.checks import require_positive, require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.states import FP32_BYTES


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
    require_positive("bytes_per_param", bytes_per_param)
    require_positive_int("bytes_per_activation", bytes_per_activation)
    h, kv, f = cfg.hidden_size, cfg.kv_hidden_size, cfg.ffn_size
    attention_width = 2 * h + (h + 2 * kv) + h
    mlp_width = 2 * h + (3 if cfg.gated_mlp else 2) * f
    tokens = batch_size * seq_len
    return MemoryBreakdown({
        "weights": math.ceil(cfg.num_params() * bytes_per_param),
        "kv_cache": kv_cache_bytes(cfg, batch_size, seq_len, bytes_per_activation),
        "activations": tokens * max(attention_width, mlp_width) * bytes_per_activation,
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
