"""The suite's reference transformer models (GPT-style and Llama-style at the 350M scale) and
`TransformerWorkload`: a model with the batch and sequence length it is measured at."""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_positive_int
from harness.theory.config import TransformerConfig
from harness.theory.zoo import get_model


@dataclass(frozen=True)
class TransformerWorkload:
    """A model config with the batch and sequence length it is measured at."""

    config: TransformerConfig
    batch_size: int
    seq_len: int

    def __post_init__(self) -> None:
        for field in ("batch_size", "seq_len"):
            require_positive_int(field, getattr(self, field))
        if self.seq_len > self.config.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings} of {self.config.name!r}")

    @property
    def tokens(self) -> int:
        """Tokens per step: batch_size * seq_len."""
        return self.batch_size * self.seq_len

    def with_batch(self, batch_size: int) -> TransformerWorkload:
        """The same model and sequence length at another batch size."""
        return TransformerWorkload(self.config, batch_size, self.seq_len)


# GPT-style: GPT-2 medium as published (355M parameters, 24 x 1024, learned positions, GELU,
# LayerNorm, tied embeddings).
GPT_STYLE = get_model("gpt2-medium")

# Llama-style at the same scale: 24 x 1024 with 16 query heads sharing 4 KV heads (GQA 4:1),
# SwiGLU at the LLaMA default width (2816 = 8/3*h rounded up to 256), RoPE, RMSNorm, no biases,
# untied 32000-token output layer: 336M parameters.
LLAMA_STYLE = TransformerConfig(
    num_layers=24, hidden_size=1024, num_heads=16, num_kv_heads=4, vocab_size=32000,
    mlp="swiglu", tied_embeddings=False, bias=False, norm="rmsnorm", position="rope",
    max_position_embeddings=2048, name="llama-style-336m")
