"""The shape of a transformer: a validated `TransformerConfig` and a zoo of public models.

Every formula in `harness.formulas` and the model builder in `harness.model` read this one
description, so a number in a report can always be traced back to the architecture it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MLP_KINDS: tuple[str, ...] = ("gelu", "relu", "swiglu", "geglu")
NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm")
POSITION_KINDS: tuple[str, ...] = ("learned", "rope", "alibi")


def _check_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def _check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be True or False, got {value!r}")


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
            _check_positive_int(field, getattr(self, field))
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        _check_positive_int("num_kv_heads", self.num_kv_heads)
        _check_choice("mlp", self.mlp, MLP_KINDS)
        _check_choice("norm", self.norm, NORM_KINDS)
        _check_choice("position", self.position, POSITION_KINDS)
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size",
                               default_ffn_hidden_size(self.hidden_size, self.mlp))
        _check_positive_int("ffn_hidden_size", self.ffn_hidden_size)
        for field in ("tied_embeddings", "bias", "embedding_norm"):
            _check_bool(field, getattr(self, field))
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        _check_bool("qkv_bias", self.qkv_bias)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}; "
                f"valid head counts include {_divisors_near(self.hidden_size, self.num_heads)}")
        assert self.num_kv_heads is not None
        if self.num_kv_heads > self.num_heads or self.num_heads % self.num_kv_heads:
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
        assert self.num_kv_heads is not None
        return self.num_kv_heads

    @property
    def kv_hidden_size(self) -> int:
        """Width of the key (and of the value) projection: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def ffn_size(self) -> int:
        """Feed-forward width d_ff (never None after validation)."""
        assert self.ffn_hidden_size is not None
        return self.ffn_hidden_size

    @property
    def gated_mlp(self) -> bool:
        """True for SwiGLU/GeGLU, which have three weight matrices instead of two."""
        return self.mlp in ("swiglu", "geglu")

    def num_params(self) -> int:
        """Exact parameter count: every weight, bias, norm and embedding (tied counted once)."""
        from harness.theory.params import num_params

        return num_params(self)

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


def _gpt2(name: str, layers: int, hidden: int, heads: int) -> TransformerConfig:
    # GPT-2 (Radford et al. 2019; HF gpt2* config.json): 50257 tokens, 1024 positions,
    # LayerNorm with bias, GELU MLP of 4h, biases everywhere, tied output layer.
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                             vocab_size=50257, max_position_embeddings=1024, name=name)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
           vocab: int, positions: int, *, qkv_bias: bool = False) -> TransformerConfig:
    # LLaMA family: RMSNorm, RoPE, SwiGLU, no biases, untied output layer.
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                             num_kv_heads=kv_heads, ffn_hidden_size=ffn, vocab_size=vocab,
                             mlp="swiglu", tied_embeddings=False, bias=False, qkv_bias=qkv_bias,
                             norm="rmsnorm", position="rope",
                             max_position_embeddings=positions, name=name)


# Sizes from each model's published config.json (Hugging Face hub).
MODEL_ZOO: dict[str, TransformerConfig] = {
    c.name: c
    for c in (
        _gpt2("gpt2", 12, 768, 12),
        _gpt2("gpt2-medium", 24, 1024, 16),
        _gpt2("gpt2-large", 36, 1280, 20),
        _gpt2("gpt2-xl", 48, 1600, 25),
        # BLOOM (BigScience 2022): ALiBi, LayerNorm after the embedding, 250880 tokens, tied.
        TransformerConfig(num_layers=30, hidden_size=4096, num_heads=32, vocab_size=250880,
                          position="alibi", embedding_norm=True, max_position_embeddings=2048,
                          name="bloom-7b1"),
        _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
        _llama("qwen2-7b", 28, 3584, 28, 4, 18944, 152064, 32768, qkv_bias=True),
    )
}


def get_model(name: str) -> TransformerConfig:
    """A public model's configuration by name (case-insensitive), e.g. "llama-2-7b"."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODEL_ZOO:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_ZOO)} "
                         f"(or load your own with harness.load_hf_config(path))")
    return MODEL_ZOO[key]


def list_models() -> list[str]:
    """Names accepted by `get_model`."""
    return list(MODEL_ZOO)


# Hugging Face `model_type` values that `config_from_hf` understands.
HF_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "gpt2", "bloom")

# `activation_function` values of GPT-2 configs (transformers' ACT2FN names) and what they mean.
_GPT2_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu", "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}

# `hidden_act` of LLaMA-style configs: the activation inside the gated MLP.
_GATED_ACTIVATIONS: dict[str, str] = {
    "silu": "swiglu", "swish": "swiglu",
    "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu",
}

# BLOOM's config.json has no position limit (ALiBi has no table); its models were trained on
# 2048-token sequences (BigScience 2022), which `seq_length` states where present.
_BLOOM_TRAINING_SEQ_LEN = 2048


def _hf_key(data: Mapping[str, Any], key: str, model_type: str) -> Any:
    if key not in data or data[key] is None:
        raise ValueError(f"config.json of model_type {model_type!r} is missing the key {key!r}; "
                         f"supported model types: {', '.join(HF_MODEL_TYPES)}")
    return data[key]


def _hf_int(data: Mapping[str, Any], key: str, model_type: str) -> int:
    value = _hf_key(data, key, model_type)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json key {key!r} must be a positive integer, got {value!r}")
    return value


def _hf_bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"config.json key {key!r} must be true or false, got {value!r}")
    return value


def _hf_choice(data: Mapping[str, Any], key: str, default: str, meanings: Mapping[str, str]
               ) -> str:
    value = data.get(key, default)
    if value not in meanings:
        raise ValueError(f"config.json key {key!r} is {value!r}; supported values: "
                         f"{', '.join(meanings)}")
    return meanings[value]


def _llama_style_from_hf(data: Mapping[str, Any], model_type: str, name: str
                         ) -> TransformerConfig:
    num_heads = _hf_int(data, "num_attention_heads", model_type)
    kv_heads = (_hf_int(data, "num_key_value_heads", model_type)
                if data.get("num_key_value_heads") is not None else num_heads)
    if model_type == "qwen2":
        # Qwen2 fixes its biases in code: on q, k and v, nowhere else.
        bias, qkv_bias = False, True
    else:
        # LLaMA's `attention_bias` covers q, k, v and o; `mlp_bias` the three MLP matrices.
        attention_bias = _hf_bool(data, "attention_bias", False)
        mlp_bias = _hf_bool(data, "mlp_bias", False)
        if attention_bias != mlp_bias:
            raise ValueError(
                f"config.json has attention_bias={attention_bias} but mlp_bias={mlp_bias}; "
                f"TransformerConfig.bias covers the attention output and the MLP together, so "
                f"only equal values (both true or both false) are supported")
        bias = qkv_bias = attention_bias
    return TransformerConfig(
        num_layers=_hf_int(data, "num_hidden_layers", model_type),
        hidden_size=_hf_int(data, "hidden_size", model_type),
        num_heads=num_heads,
        num_kv_heads=kv_heads,
        vocab_size=_hf_int(data, "vocab_size", model_type),
        ffn_hidden_size=_hf_int(data, "intermediate_size", model_type),
        mlp=_hf_choice(data, "hidden_act", "silu", _GATED_ACTIVATIONS),
        # transformers' LlamaConfig, MistralConfig and Qwen2Config default to an untied head.
        tied_embeddings=_hf_bool(data, "tie_word_embeddings", False),
        bias=bias,
        qkv_bias=qkv_bias,
        norm="rmsnorm",
        position="rope",
        max_position_embeddings=_hf_int(data, "max_position_embeddings", model_type),
        name=name,
    )


def _gpt2_from_hf(data: Mapping[str, Any], name: str) -> TransformerConfig:
    # `n_inner` null or absent means 4 * n_embd (transformers' GPT2MLP).
    n_inner = data.get("n_inner")
    return TransformerConfig(
        num_layers=_hf_int(data, "n_layer", "gpt2"),
        hidden_size=_hf_int(data, "n_embd", "gpt2"),
        num_heads=_hf_int(data, "n_head", "gpt2"),
        vocab_size=_hf_int(data, "vocab_size", "gpt2"),
        ffn_hidden_size=None if n_inner is None else _hf_int(data, "n_inner", "gpt2"),
        mlp=_hf_choice(data, "activation_function", "gelu_new", _GPT2_ACTIVATIONS),
        tied_embeddings=_hf_bool(data, "tie_word_embeddings", True),
        bias=True,
        norm="layernorm",
        position="learned",
        max_position_embeddings=_hf_int(data, "n_positions", "gpt2"),
        name=name,
    )


def _bloom_from_hf(data: Mapping[str, Any], name: str) -> TransformerConfig:
    # Small BLOOMs spell the width `n_embed`, the larger ones `hidden_size`.
    width_key = "hidden_size" if data.get("hidden_size") is not None else "n_embed"
    seq_len = data.get("seq_length")
    return TransformerConfig(
        num_layers=_hf_int(data, "n_layer", "bloom"),
        hidden_size=_hf_int(data, width_key, "bloom"),
        num_heads=_hf_int(data, "n_head", "bloom"),
        vocab_size=_hf_int(data, "vocab_size", "bloom"),
        ffn_hidden_size=None,  # BloomMLP is always 4h; `n_inner` is not read by transformers
        mlp="gelu",
        tied_embeddings=_hf_bool(data, "tie_word_embeddings", True),
        bias=True,
        norm="layernorm",
        position="alibi",
        max_position_embeddings=(_BLOOM_TRAINING_SEQ_LEN if seq_len is None
                                 else _hf_int(data, "seq_length", "bloom")),
        embedding_norm=True,
        name=name,
    )


def config_from_hf(data: Mapping[str, Any], *, name: str = "custom") -> TransformerConfig:
    """A `TransformerConfig` from a Hugging Face style config.json dict (llama, mistral, qwen2,
    gpt2, bloom); a `ValueError` names the missing key or the unsupported `model_type`."""
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be the dict of a config.json, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type is None:
        raise ValueError(f"config.json has no 'model_type' key; supported model types: "
                         f"{', '.join(HF_MODEL_TYPES)}")
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported model types: "
                         f"{', '.join(HF_MODEL_TYPES)}")
    if model_type == "gpt2":
        return _gpt2_from_hf(data, name)
    if model_type == "bloom":
        return _bloom_from_hf(data, name)
    return _llama_style_from_hf(data, model_type, name)


def load_hf_config(path: str | Path) -> TransformerConfig:
    """Read a Hugging Face style config.json from disk; errors name the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"{p}: no such config file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object of model settings")
    return config_from_hf(data, name=p.parent.name or p.stem)
