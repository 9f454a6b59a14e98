"""Multi-head latent attention: the `MLA` part of a `TransformerConfig` (DeepSeek-V2/V3).

Keys and values are compressed into one latent of `kv_lora_rank` channels per token (plus a
shared `qk_rope_head_dim`-wide rotary key), normalised, and expanded per head; queries go
through their own low-rank bottleneck of `q_lora_rank` channels (or, with None, one
hidden_size x heads*qk_head_dim projection, as in DeepSeek-V2-Lite). Every head scores over
qk_nope_head_dim + qk_rope_head_dim channels and returns v_head_dim channels. Layout as in
DeepSeek-V2 (arXiv 2405.04434, section 2.1) and transformers' DeepseekV2Attention:

  q_a_proj      hidden -> q_lora_rank           (bias: qkv_bias)   + RMSNorm(q_lora_rank)
  q_b_proj      q_lora_rank -> heads * qk_head_dim
  (or q_proj    hidden -> heads * qk_head_dim)
  kv_a_proj     hidden -> kv_lora_rank + qk_rope_head_dim (bias: qkv_bias) + RMSNorm(kv_lora_rank)
  kv_b_proj     kv_lora_rank -> heads * (qk_nope_head_dim + v_head_dim)
  o_proj        heads * v_head_dim -> hidden    (bias: bias)

What a serving engine caches per token and layer is the latent and the rotary key,
kv_lora_rank + qk_rope_head_dim elements (DeepSeek-V2, table 1), not full keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_positive_int


@dataclass(frozen=True)
class MLA:
    """Ranks and per-head widths of multi-head latent attention."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    def __post_init__(self) -> None:
        for field in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            require_positive_int(f"MLA.{field}", getattr(self, field))
        if self.q_lora_rank is not None:
            require_positive_int("MLA.q_lora_rank", self.q_lora_rank)

    @property
    def qk_head_dim(self) -> int:
        """Channels each head scores over: the unrotated part plus the rotary part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cached_width(self) -> int:
        """Elements cached per token and layer: the latent and the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def projection_weights(self, hidden_size: int, num_heads: int) -> tuple[int, int]:
        """(query-side, key/value-side) weights of the projections before the attention core:
        every matrix above but o_proj."""
        h, heads = hidden_size, num_heads
        if self.q_lora_rank is None:
            query = h * heads * self.qk_head_dim
        else:
            query = h * self.q_lora_rank + self.q_lora_rank * heads * self.qk_head_dim
        key_value = (h * self.cached_width
                     + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim))
        return query, key_value

    def down_projection_widths(self) -> tuple[int, ...]:
        """Output widths of the projections from the hidden state (q_a or none, kv_a): the
        ones that carry a bias when the config has qkv_bias."""
        latent = (self.cached_width,)
        return latent if self.q_lora_rank is None else (self.q_lora_rank, *latent)

    def latent_norm_widths(self) -> tuple[int, ...]:
        """Widths of the RMSNorms on the latents: the query latent (when there is one) and
        the key/value latent."""
        kv = (self.kv_lora_rank,)
        return kv if self.q_lora_rank is None else (self.q_lora_rank, *kv)
