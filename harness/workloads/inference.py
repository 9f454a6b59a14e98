"""Inference workloads of the suite: a prefill and a KV-cached decode of the Llama-style model,
the bytes a decode step must read, and a KV cache with a forward that fills and reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F

from harness.checks import require_non_negative_int, require_positive_int
from harness.model import Block, DecoderLM, apply_rope, rope_cos_sin
from harness.theory.config import TransformerConfig
from harness.theory.params import param_breakdown
from harness.workloads.models import LLAMA_STYLE, TransformerWorkload

# Inference of the Llama-style model in bf16. Prefill: 4 x 2048 tokens, 5.8 TFLOP (causal, with
# the output layer), ~10-15 ms on an H100. Decode: 8 sequences with 2048 tokens of context each, a
# 384 MiB KV cache; a step reads 1.0 GB (0.6 GB of weights, 0.4 GB of cache), 0.3 ms at the
# H100's 3.35 TB/s, though an eager decode step is bound by kernel launches at a few ms.
PREFILL = TransformerWorkload(LLAMA_STYLE, batch_size=4, seq_len=2048)
DECODE_BATCH = 8
DECODE_CONTEXT = 2047  # the token decoded at position 2047 is the 2048th: the cache is full
DECODE_CACHE = TransformerWorkload(LLAMA_STYLE, batch_size=DECODE_BATCH, seq_len=2048)


def decode_weight_bytes(cfg: TransformerConfig, bytes_per_param: int = 2) -> int:
    """Bytes of weights one decode step must read: every parameter except the input embedding
    table and learned positions, of which a step reads only one row per sequence (a tied table
    is read in full by the output layer, so it counts)."""
    parts = param_breakdown(cfg)
    skipped = parts["position"] + (0 if cfg.tied_embeddings else parts["embedding"])
    return (cfg.num_params() - skipped) * bytes_per_param


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer in one contiguous tensor of shape
    (layers, 2, batch, kv_heads, capacity, head_dim); `keys(i)`/`values(i)` are views."""

    storage: torch.Tensor

    @property
    def capacity(self) -> int:
        """Tokens per sequence the cache can hold."""
        return int(self.storage.shape[4])

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cache."""
        return self.storage.numel() * self.storage.element_size()

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of one layer, (batch, kv_heads, capacity, head_dim), a view."""
        return self.storage[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        """Values of one layer, (batch, kv_heads, capacity, head_dim), a view."""
        return self.storage[layer, 1]


def allocate_kv_cache(cfg: TransformerConfig, batch_size: int, capacity: int, *,
                      device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> KVCache:
    """An uninitialised KV cache for `batch_size` sequences of up to `capacity` tokens.

    One allocation rather than 2 per layer: the caching allocator then counts exactly
    numel * element_size (a multiple of 512 bytes here), so the allocated-memory delta can be
    compared with `kv_cache_bytes` to the byte.
    """
    require_positive_int("batch_size", batch_size)
    require_positive_int("capacity", capacity)
    storage = torch.empty(cfg.num_layers, 2, batch_size, cfg.kv_heads, capacity, cfg.head_dim,
                          dtype=dtype, device=device)
    return KVCache(storage)


def forward_with_cache(model: DecoderLM, input_ids: torch.Tensor, cache: KVCache,
                       start: int) -> torch.Tensor:
    """Logits of the last position, (batch, vocab), for `input_ids` placed at positions
    start..start+n-1, writing their keys and values into `cache` and attending to positions
    0..start+n-1.

    Two cases, as serving does them: a prefill (start == 0, any n; causal attention within the
    prompt) and a decode step (n == 1 at any start; the token attends to every cached position).
    Grouped-query heads attend to their shared KV head by reshaping the queries, so a decode
    step reads the cache once and never copies it. Supports RoPE and learned positions (not
    ALiBi); dropout is off, as in inference.
    """
    cfg = model.config
    if cfg.position == "alibi":
        raise ValueError("forward_with_cache supports RoPE and learned positions; "
                         f"{cfg.name!r} uses ALiBi")
    if (cfg.qk_norm != "none" or cfg.norm_placement != "pre" or cfg.parallel_residual
            or cfg.sliding_window is not None or cfg.position_offset):
        raise ValueError(f"forward_with_cache runs the classic pre-norm block; {cfg.name!r} has "
                         f"query/key norms, another norm placement, a parallel block, a sliding "
                         f"window or a position offset, which it does not apply")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, n) tensor of token ids, got {input_ids!r}")
    batch, new = input_ids.shape
    require_non_negative_int("start", start)
    if start > 0 and new != 1:
        raise ValueError(f"start={start} with {new} new tokens: only a prefill (start=0) or a "
                         f"one-token decode step is supported")
    end = start + new
    if end > cache.capacity:
        raise ValueError(f"positions up to {end} do not fit a cache of capacity "
                         f"{cache.capacity}")
    if cache.storage.shape[2] != batch:
        raise ValueError(f"the cache holds {cache.storage.shape[2]} sequences, input_ids "
                         f"has {batch}")
    x = model.embed_tokens(input_ids)
    if model.embed_positions is not None:
        x = x + model.embed_positions(torch.arange(start, end, device=input_ids.device))
    if model.embed_norm is not None:
        x = model.embed_norm(x)
    heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    groups = heads // kv_heads
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    if cfg.position == "rope":
        cos, sin = rope_cos_sin(new, head_dim, input_ids.device, start=start)
        # Cast once for every layer, so apply_rope's own cast to the activations' dtype is free.
        rope = (cos.to(x.dtype), sin.to(x.dtype))
    for layer, module in enumerate(model.blocks):
        block = cast(Block, module)  # an nn.ModuleList holds untyped modules
        attn = block.attn
        h = block.attn_norm(x)
        q = attn.q_proj(h).view(batch, new, heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(batch, new, kv_heads, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(batch, new, kv_heads, head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cache.keys(layer)[:, :, start:end] = k
        cache.values(layer)[:, :, start:end] = v
        keys = cache.keys(layer)[:, :, :end]
        values = cache.values(layer)[:, :, :end]
        if new == 1:
            # Query head j uses KV head j // groups (repeat_interleave in the model), so the
            # queries of one KV head are consecutive: (batch, kv_heads, groups, head_dim).
            grouped = q.reshape(batch, kv_heads, groups, head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values)
            out = out.reshape(batch, heads, 1, head_dim)
        else:
            if groups > 1:
                keys = keys.repeat_interleave(groups, dim=1)
                values = values.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, new, heads * head_dim))
        x = x + block.mlp(block.mlp_norm(x))
    logits: torch.Tensor = model.lm_head(model.final_norm(x[:, -1]))
    return logits
