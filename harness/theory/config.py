"""The shape of a transformer: a validated `TransformerConfig`, and the parameters of its parts.

Every formula in `harness.theory` and the model builder in `harness.model` read this one
description, so a number in a report can always be traced back to the architecture it came from.
The parameter counts live here, on the dataclass, because they are the sizes of its own parts and
`cfg.num_params()` is part of its face; `harness.theory.params` offers the same counts as functions
beside the estimates built on them. Public models: `harness.theory.zoo`; Hugging Face
config.json files: `harness.theory.hf`; mixture of experts and latent attention: the `MoE`
(`harness.theory.moe`) and `MLA` (`harness.theory.mla`) parts.

Parameter conventions (those of `harness.model.build_model` and of transformers' modules, pinned
by the tests to published counts and to transformers itself):
- A LayerNorm has a weight and a bias when `bias`, a weight only otherwise; an RMSNorm has a
  weight only. Each layer has two norms ("pre" before attention and MLP, "post" on their outputs
  as in OLMo 2), four ("sandwich": both, Gemma 2/3) or one ("single": one norm feeding attention
  and MLP in parallel, Phi-2).
- `qkv_bias` puts biases on the query, key and value projections (MLA: on its two projections
  from the hidden state); `bias` on the attention output projection and on every MLP matrix.
- Query/key norms: "head" is one norm of head_dim shared by all heads (Qwen3, Gemma 3, Phi's
  qk_layernorm), "full" one over all query and one over all key channels (OLMo 2).
- A tied output layer reuses the token embedding and adds nothing; an untied one is a
  vocab_size x hidden_size matrix; `output_bias` adds vocab_size biases (Phi-2).
- Learned positions add (max_position_embeddings + position_offset) x hidden_size (OPT keeps 2
  rows before position 0); RoPE and ALiBi add nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harness.checks import (
    require_bool,
    require_choice,
    require_non_negative_int,
    require_positive_int,
    require_text,
)
from harness.theory.mla import MLA
from harness.theory.moe import MoE

MLP_KINDS: tuple[str, ...] = ("gelu", "relu", "swiglu", "geglu")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm")
POSITION_KINDS: tuple[str, ...] = ("learned", "rope", "alibi")
QK_NORM_KINDS: tuple[str, ...] = ("none", "head", "full")
# Norms per layer for each placement (see the module docstring).
NORMS_PER_LAYER: dict[str, int] = {"pre": 2, "post": 2, "sandwich": 4, "single": 1}
NORM_PLACEMENTS: tuple[str, ...] = tuple(NORMS_PER_LAYER)


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
    `embedding_norm` adds a norm right after the token embedding (BLOOM). `head_dim` (0: derive)
    defaults to hidden_size / num_heads; given, the heads may be wider or narrower than that (Gemma,
    Qwen3, Mistral-Nemo). `sliding_window` makes every layer but `global_layers` attend to the
    last `sliding_window` tokens only (itself included). `parallel_residual` adds attention and
    MLP of the same input to the residual (GPT-NeoX, Phi-2). `moe` and `mla` replace the MLP
    and the attention of the config (see their modules).
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
    head_dim: int = 0
    qk_norm: str = "none"
    norm_placement: str = "pre"
    parallel_residual: bool = False
    sliding_window: int | None = None
    global_layers: tuple[int, ...] = ()
    output_bias: bool = False
    position_offset: int = 0
    moe: MoE | None = None
    mla: MLA | None = None

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
        for field in ("tied_embeddings", "bias", "embedding_norm", "parallel_residual",
                      "output_bias"):
            require_bool(field, getattr(self, field))
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        require_bool("qkv_bias", self.qkv_bias)
        require_text("name", self.name)
        # 0 (or None) derives head_dim, and `replace` derives it again (see there).
        derived = self.head_dim is None or (type(self.head_dim) is int and self.head_dim == 0)
        object.__setattr__(self, "_derived_head_dim", derived)
        if derived:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} "
                    f"(or give head_dim); valid head counts include "
                    f"{_divisors_near(self.hidden_size, self.num_heads)}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        require_positive_int("head_dim", self.head_dim)
        if self.kv_heads > self.num_heads or self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                f"(1 is multi-query, num_heads is multi-head attention)")
        self._check_variants()

    def _check_variants(self) -> None:
        """The fields beyond the classic GPT/LLaMA shape, and how they combine."""
        require_choice("qk_norm", self.qk_norm, QK_NORM_KINDS)
        require_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        if self.norm_placement == "single" and not self.parallel_residual:
            raise ValueError("norm_placement='single' feeds attention and MLP from one norm, "
                             "which needs parallel_residual=True (Phi-2, GPT-J)")
        if self.parallel_residual and self.norm_placement not in ("pre", "single"):
            raise ValueError(f"parallel_residual=True reads one input for attention and MLP; "
                             f"use norm_placement 'pre' (GPT-NeoX) or 'single' (Phi-2), not "
                             f"{self.norm_placement!r}")
        require_non_negative_int("position_offset", self.position_offset)
        if self.position_offset and self.position != "learned":
            raise ValueError(f"position_offset={self.position_offset} adds rows to a learned "
                             f"position table, but position={self.position!r} has none")
        if self.sliding_window is not None:
            require_positive_int("sliding_window", self.sliding_window)
        object.__setattr__(self, "global_layers",
                           _layer_indices("global_layers", self.global_layers, self.num_layers))
        if self.global_layers and self.sliding_window is None:
            raise ValueError(f"global_layers={self.global_layers} names the layers exempt from "
                             f"a sliding window, but sliding_window is None")
        if self.moe is not None:
            if not isinstance(self.moe, MoE):
                raise ValueError(f"moe must be a harness.MoE or None, got {self.moe!r}")
            _layer_indices("MoE.dense_layers", self.moe.dense_layers, self.num_layers)
            if len(self.moe.dense_layers) == self.num_layers:
                raise ValueError("MoE.dense_layers lists every layer: the model has no expert "
                                 "layer; use moe=None for a dense model")
        if self.mla is not None:
            if not isinstance(self.mla, MLA):
                raise ValueError(f"mla must be a harness.MLA or None, got {self.mla!r}")
            if self.kv_heads != self.num_heads:
                raise ValueError(f"MLA expands its latent to every head: num_kv_heads must be "
                                 f"None or num_heads={self.num_heads}, got {self.num_kv_heads}")
            if self.qk_norm != "none":
                raise ValueError("MLA normalises its latents, not queries and keys: use "
                                 "qk_norm='none' with mla")

    # Derived sizes (computed, never stored).
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
    def qk_head_dim(self) -> int:
        """Channels each head scores queries against keys over (MLA: nope + rope)."""
        return self.mla.qk_head_dim if self.mla is not None else self.head_dim

    @property
    def v_head_dim(self) -> int:
        """Channels each head returns (MLA: v_head_dim)."""
        return self.mla.v_head_dim if self.mla is not None else self.head_dim

    @property
    def query_width(self) -> int:
        """Channels of all queries: num_heads * qk_head_dim."""
        return self.num_heads * self.qk_head_dim

    @property
    def key_width(self) -> int:
        """Channels of all keys the attention core reads (MLA: expanded to every head)."""
        return self.kv_heads * self.qk_head_dim

    @property
    def value_width(self) -> int:
        """Channels of all values the attention core reads (MLA: expanded to every head)."""
        return self.kv_heads * self.v_head_dim

    @property
    def attention_width(self) -> int:
        """Width of the attention output, the output projection's input: heads * v_head_dim."""
        return self.num_heads * self.v_head_dim

    @property
    def ffn_size(self) -> int:
        """Feed-forward width d_ff of the dense MLP (never None after validation)."""
        assert self.ffn_hidden_size is not None  # set in __post_init__
        return self.ffn_hidden_size

    @property
    def gated_mlp(self) -> bool:
        """True for SwiGLU/GeGLU, which have three weight matrices instead of two."""
        return self.mlp in ("swiglu", "geglu")

    @property
    def norms_per_layer(self) -> int:
        """Norms of hidden_size in each layer (see the module docstring)."""
        return NORMS_PER_LAYER[self.norm_placement]

    def is_moe_layer(self, layer: int) -> bool:
        """True when `layer` (0-based) has experts instead of the dense MLP."""
        return self.moe is not None and layer not in self.moe.dense_layers

    @property
    def num_moe_layers(self) -> int:
        """Layers with experts (0 for a dense model)."""
        return 0 if self.moe is None else self.num_layers - len(self.moe.dense_layers)

    @property
    def num_dense_layers(self) -> int:
        """Layers with the dense MLP."""
        return self.num_layers - self.num_moe_layers

    def layer_window(self, layer: int) -> int | None:
        """Keys one query of `layer` sees at most: the sliding window, or None for all."""
        return None if layer in self.global_layers else self.sliding_window

    def window_counts(self) -> dict[int | None, int]:
        """Layers per attention span: {None: full-attention layers, w: layers of window w}."""
        counts: dict[int | None, int] = {}
        for layer in range(self.num_layers):
            window = self.layer_window(layer)
            counts[window] = counts.get(window, 0) + 1
        return counts

    # Parameters of the parts (the one home of this arithmetic; conventions in the module doc).
    def norm_params(self, width: int | None = None) -> int:
        """Parameters of one normalisation layer over `width` channels (default hidden_size)."""
        channels = self.hidden_size if width is None else width
        return 2 * channels if self.norm == "layernorm" and self.bias else channels

    def attention_projection_weights(self) -> tuple[int, int]:
        """(weights before the attention core: Q, K, V or MLA's projections; weights of the
        output projection). Two FLOPs per weight per token is their forward cost."""
        h = self.hidden_size
        output = self.attention_width * h
        if self.mla is not None:
            query, key_value = self.mla.projection_weights(h, self.num_heads)
            return query + key_value, output
        return h * (self.query_width + 2 * self.kv_hidden_size), output

    def attention_params(self) -> int:
        """Parameters of one attention block: its projections (K and V of width kv_hidden_size
        under GQA; MLA's latent projections), their biases and the query/key or latent norms."""
        h = self.hidden_size
        inputs, output = self.attention_projection_weights()
        if self.mla is not None:
            input_biases = sum(self.mla.down_projection_widths()) if self.qkv_bias else 0
        else:
            input_biases = self.query_width + 2 * self.kv_hidden_size if self.qkv_bias else 0
        return (inputs + output + input_biases + (h if self.bias else 0)
                + self.attention_norm_params())

    def attention_norm_params(self) -> int:
        """Parameters of the norms inside one attention block: query/key norms, or MLA's
        latent norms."""
        if self.mla is not None:
            return sum(self.norm_params(w) for w in self.mla.latent_norm_widths())
        return {"none": 0, "head": 2 * self.norm_params(self.head_dim),
                "full": (self.norm_params(self.query_width)
                         + self.norm_params(self.kv_hidden_size))}[self.qk_norm]

    def mlp_params(self, width: int | None = None) -> int:
        """Parameters of one MLP of `width` (default ffn_hidden_size): two matrices (up, down)
        or three for gated MLPs (gate, up, down), with their biases. An expert is one."""
        h, f = self.hidden_size, self.ffn_size if width is None else width
        input_matrices = 2 if self.gated_mlp else 1
        weights = input_matrices * h * f + f * h
        biases = (input_matrices * f + h) if self.bias else 0
        return weights + biases

    def moe_parts(self) -> dict[str, int]:
        """Parameters of one expert layer's MLP by part: router, experts (all routed experts),
        active_experts (the top_k a token uses) and shared_experts (with Qwen's gate)."""
        if self.moe is None:
            return {"router": 0, "experts": 0, "active_experts": 0, "shared_experts": 0}
        moe, h = self.moe, self.hidden_size
        expert = self.mlp_params(moe.expert_ffn_hidden_size)
        return {"router": moe.router_params(h), "experts": moe.num_experts * expert,
                "active_experts": moe.top_k * expert,
                "shared_experts": (moe.num_shared_experts * self.mlp_params(moe.shared_width)
                                   + moe.shared_gate_params(h))}

    def layer_params(self, layer: int = 0) -> int:
        """Parameters of transformer block `layer`: attention, its MLP (dense or experts) and
        its norms."""
        if self.is_moe_layer(layer):
            moe = self.moe_parts()
            mlp = moe["router"] + moe["experts"] + moe["shared_experts"]
        else:
            mlp = self.mlp_params()
        return self.attention_params() + mlp + self.norms_per_layer * self.norm_params()

    def param_breakdown(self) -> dict[str, int]:
        """Parameters by part, summed over all layers; the values add up to `num_params()`.

        Keys: embedding, position, embedding_norm, attention, mlp (dense MLPs), router,
        experts (routed), shared_experts, layer_norms, final_norm, output.
        """
        h, layers, moe_layers = self.hidden_size, self.num_layers, self.num_moe_layers
        moe = self.moe_parts()
        positions = self.max_position_embeddings + self.position_offset
        return {
            "embedding": self.vocab_size * h,
            "position": positions * h if self.position == "learned" else 0,
            "embedding_norm": self.norm_params() if self.embedding_norm else 0,
            "attention": layers * self.attention_params(),
            "mlp": self.num_dense_layers * self.mlp_params(),
            "router": moe_layers * moe["router"],
            "experts": moe_layers * moe["experts"],
            "shared_experts": moe_layers * moe["shared_experts"],
            "layer_norms": layers * self.norms_per_layer * self.norm_params(),
            "final_norm": self.norm_params(),
            "output": ((0 if self.tied_embeddings else self.vocab_size * h)
                       + (self.vocab_size if self.output_bias else 0)),
        }

    def num_params(self) -> int:
        """Exact parameter count: every weight, bias, norm and embedding (tied counted once),
        every expert included."""
        return sum(self.param_breakdown().values())

    def active_params(self) -> int:
        """Parameters one token's forward pass uses: all but the routed experts it is not sent
        to (equal to `num_params()` for a dense model)."""
        moe = self.moe_parts()
        return self.num_params() - self.num_moe_layers * (moe["experts"] - moe["active_experts"])

    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed, validated again. A head_dim that was derived from
        hidden_size / num_heads is derived again unless given."""
        if getattr(self, "_derived_head_dim", False) and "head_dim" not in changes:
            changes["head_dim"] = 0
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


def _layer_indices(name: str, value: object, num_layers: int) -> tuple[int, ...]:
    """`value` as a tuple of distinct layer indices below num_layers, in increasing order."""
    indices = tuple(value) if isinstance(value, (list, tuple)) else value
    if not isinstance(indices, tuple) or any(
            isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise ValueError(f"{name} must be a tuple of layer indices, got {value!r}")
    if list(indices) != sorted(set(indices)) or any(not 0 <= i < num_layers for i in indices):
        raise ValueError(f"{name} must list layer indices 0..{num_layers - 1} once each, in "
                         f"increasing order, got {value!r}")
    return indices


def _divisors_near(n: int, around: int) -> list[int]:
    divisors = [d for d in range(1, min(n, 4 * around + 8) + 1) if n % d == 0]
    return sorted(divisors, key=lambda d: abs(d - around))[:4]
