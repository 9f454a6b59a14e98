"""The shape of a transformer: a validated `TransformerConfig`, and the parameters of its parts.

Every formula in `harness.theory` and the model builder in `harness.model` read this one
description, so a number in a report can always be traced back to the architecture it came from.
The parameter counts live here, on the dataclass, because they are the sizes of its own parts and
`cfg.num_params()` is part of its face; `harness.theory.params` offers the same counts as functions
beside the estimates built on them. Public models: `harness.theory.zoo`; Hugging Face
config.json files: `harness.theory.hf`.

Parameter conventions (what `harness.model.build_model` creates, pinned by the tests to each zoo
model's published count):
- A LayerNorm has a weight and a bias when `bias`, a weight only otherwise; an RMSNorm has a
  weight only.
- `qkv_bias` puts biases on the query, key and value projections; `bias` on the attention
  output projection and on both (or all three) MLP matrices.
- A tied output layer reuses the token embedding and adds nothing; an untied one is a
  vocab_size x hidden_size matrix without bias (no model in the zoo has an output bias).
- Learned positions add max_position_embeddings x hidden_size; RoPE and ALiBi add nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harness.checks import require_bool, require_choice, require_positive_int, require_text

MLP_KINDS: tuple[str, ...] = ("gelu", "relu", "swiglu", "geglu")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm")
POSITION_KINDS: tuple[str, ...] = ("learned", "rope", "alibi")


def default_ffn_hidden_size(hidden_size: int, mlp: str) -> int:
    """Feed-forward width when none is given: 4h, or for gated MLPs LLaMA's 2/3 * 4h rounded up
    to a multiple of 256 (the `multiple_of` of the LLaMA reference code)."""
    if mlp in ("swiglu", "geglu"):
        return 256 * math.ceil(int(2 * 4 * hidden_size / 3) / 256)
    return 4 * hidden_size


@dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only transformer, validated on construction.

    `bias` puts a bias on every linear layer and on LayerNorms; `qkv_bias` overrides it for the
    query/key/value projections alone (Qwen2 has biases there and nowhere else).
    `embedding_norm` adds a norm right after the token embedding (BLOOM).
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    num_kv_heads: int | None = None
    ffn_hidden_size: int | None = None
    mlp: str = "gelu"
    tied_embeddings: bool = True
    bias: bool = True
    qkv_bias: bool | None = None
    norm: str = "layernorm"
    position: str = "learned"
    max_position_embeddings: int = 2048
    embedding_norm: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_heads", "vocab_size",
                      "max_position_embeddings"):
            require_positive_int(field, getattr(self, field))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        require_positive_int("num_kv_heads", self.num_kv_heads)
        require_choice("mlp", self.mlp, MLP_KINDS)
        require_choice("norm", self.norm, NORM_KINDS)
        require_choice("position", self.position, POSITION_KINDS)
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size",
                               default_ffn_hidden_size(self.hidden_size, self.mlp))
        require_positive_int("ffn_hidden_size", self.ffn_hidden_size)
        for field in ("tied_embeddings", "bias", "embedding_norm"):
            require_bool(field, getattr(self, field))
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        require_bool("qkv_bias", self.qkv_bias)
        require_text("name", self.name)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}; "
                f"valid head counts include {_divisors_near(self.hidden_size, self.num_heads)}")
        if self.kv_heads > self.num_heads or self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                f"(1 is multi-query, num_heads is multi-head attention)")

    # Derived sizes (computed, never stored).
    @property
    def head_dim(self) -> int:
        """Channels per attention head, h / a."""
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to num_heads for multi-head attention)."""
        assert self.num_kv_heads is not None  # set in __post_init__
        return self.num_kv_heads

    @property
    def kv_hidden_size(self) -> int:
        """Width of the key (and of the value) projection: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def ffn_size(self) -> int:
        """Feed-forward width d_ff (never None after validation)."""
        assert self.ffn_hidden_size is not None  # set in __post_init__
        return self.ffn_hidden_size

    @property
    def gated_mlp(self) -> bool:
        """True for SwiGLU/GeGLU, which have three weight matrices instead of two."""
        return self.mlp in ("swiglu", "geglu")

    # Parameters of the parts (the one home of this arithmetic; conventions in the module doc).
    def norm_params(self) -> int:
        """Parameters of one normalisation layer over hidden_size channels."""
        if self.norm == "layernorm" and self.bias:
            return 2 * self.hidden_size
        return self.hidden_size

    def attention_params(self) -> int:
        """Parameters of one attention block: Q, K, V (K and V of width kv_hidden_size under
        GQA) and the output projection, with their biases."""
        h, kv = self.hidden_size, self.kv_hidden_size
        weights = h * h + 2 * h * kv + h * h
        qkv_biases = (h + 2 * kv) if self.qkv_bias else 0
        output_bias = h if self.bias else 0
        return weights + qkv_biases + output_bias

    def mlp_params(self) -> int:
        """Parameters of one MLP block: two matrices (up, down) or three for gated MLPs
        (gate, up, down), with their biases."""
        h, f = self.hidden_size, self.ffn_size
        input_matrices = 2 if self.gated_mlp else 1
        weights = input_matrices * h * f + f * h
        biases = (input_matrices * f + h) if self.bias else 0
        return weights + biases

    def layer_params(self) -> int:
        """Parameters of one transformer block: attention, MLP and its two pre-norms."""
        return self.attention_params() + self.mlp_params() + 2 * self.norm_params()

    def param_breakdown(self) -> dict[str, int]:
        """Parameters by part, summed over all layers; the values add up to `num_params()`.

        Keys: embedding, position, embedding_norm, attention, mlp, layer_norms, final_norm,
        output.
        """
        h, layers = self.hidden_size, self.num_layers
        return {
            "embedding": self.vocab_size * h,
            "position": self.max_position_embeddings * h if self.position == "learned" else 0,
            "embedding_norm": self.norm_params() if self.embedding_norm else 0,
            "attention": layers * self.attention_params(),
            "mlp": layers * self.mlp_params(),
            "layer_norms": layers * 2 * self.norm_params(),
            "final_norm": self.norm_params(),
            "output": 0 if self.tied_embeddings else self.vocab_size * h,
        }

    def num_params(self) -> int:
        """Exact parameter count: every weight, bias, norm and embedding (tied counted once)."""
        return sum(self.param_breakdown().values())

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, for JSON."""
        return dataclasses.asdict(self)


def require_config(cfg: object) -> TransformerConfig:
    """`cfg` itself when it is a TransformerConfig: every formula starts with this check."""
    if not isinstance(cfg, TransformerConfig):
        raise ValueError(f"cfg must be a harness.TransformerConfig, got {type(cfg).__name__} "
                         f"({cfg!r}); build one with harness.TransformerConfig(...) or "
                         f"harness.get_model(name)")
    return cfg


def _divisors_near(n: int, around: int) -> list[int]:
    divisors = [d for d in range(1, min(n, 4 * around + 8) + 1) if n % d == 0]
    return sorted(divisors, key=lambda d: abs(d - around))[:4]
