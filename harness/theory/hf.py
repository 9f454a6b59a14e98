"""Hugging Face config.json files as `TransformerConfig`s: llama, mistral, qwen2, gpt2, bloom.

Each loader reads the keys transformers itself reads for that `model_type`, with transformers'
defaults where a key is absent, and refuses what `TransformerConfig` cannot describe (a
`ValueError` names the key, the value or the model type).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.checks import require_bool, require_positive_int
from harness.theory.config import TransformerConfig

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
    return require_positive_int(f"config.json key {key!r}", _hf_key(data, key, model_type))


def _hf_bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    return default if value is None else require_bool(f"config.json key {key!r}", value)


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
