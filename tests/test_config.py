"""Loading Hugging Face config.json files: real configs give the zoo's entries, bad ones name
the key or model type that is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.theory.hf import config_from_hf, load_hf_config
from harness.theory.zoo import get_model

# The config.json files as published on the Hugging Face hub (keys that do not describe the
# architecture, such as token ids and dropout, are kept to show that they are ignored).
GPT2_JSON: dict[str, Any] = {  # openai-community/gpt2
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024,
    "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True, "vocab_size": 50257,
}
LLAMA_2_7B_JSON: dict[str, Any] = {  # meta-llama/Llama-2-7b-hf
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
    "vocab_size": 32000,
}
MISTRAL_7B_JSON: dict[str, Any] = {  # mistralai/Mistral-7B-v0.1
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 32000,
}
QWEN2_7B_JSON: dict[str, Any] = {  # Qwen/Qwen2-7B-Instruct
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768,
    "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 152064,
}
BLOOM_7B1_JSON: dict[str, Any] = {  # bigscience/bloom-7b1
    "apply_residual_connection_post_layernorm": False, "architectures": ["BloomForCausalLM"],
    "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_dropout": 0.0, "hidden_size": 4096,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "masked_softmax_fusion": True,
    "model_type": "bloom", "n_head": 32, "n_inner": None, "n_layer": 30, "offset_alibi": 100,
    "pad_token_id": 3, "pretraining_tp": 1, "skip_bias_add": True, "skip_bias_add_qkv": False,
    "slow_but_exact": False, "unk_token_id": 0, "use_cache": True, "vocab_size": 250880,
}

PUBLISHED_JSONS: dict[str, dict[str, Any]] = {
    "gpt2": GPT2_JSON,
    "llama-2-7b": LLAMA_2_7B_JSON,
    "mistral-7b": MISTRAL_7B_JSON,
    "qwen2-7b": QWEN2_7B_JSON,
    "bloom-7b1": BLOOM_7B1_JSON,
}


@pytest.mark.parametrize("zoo_name", sorted(PUBLISHED_JSONS))
def test_published_config_json_gives_the_zoo_entry(zoo_name: str) -> None:
    cfg = config_from_hf(PUBLISHED_JSONS[zoo_name], name="from-hub")
    assert cfg.name == "from-hub"
    assert cfg.replace(name=zoo_name) == get_model(zoo_name)


def test_gpt2_null_n_inner_means_four_h() -> None:
    cfg = config_from_hf({**GPT2_JSON, "n_inner": None})
    assert cfg.ffn_size == 4 * 768


def test_gpt2_explicit_n_inner_and_relu_are_honoured() -> None:
    cfg = config_from_hf({**GPT2_JSON, "n_inner": 2048, "activation_function": "relu"})
    assert cfg.ffn_size == 2048
    assert cfg.mlp == "relu"


def test_tie_word_embeddings_is_honoured_both_ways() -> None:
    assert config_from_hf({**LLAMA_2_7B_JSON, "tie_word_embeddings": True}).tied_embeddings
    assert not config_from_hf({**GPT2_JSON, "tie_word_embeddings": False}).tied_embeddings


def test_missing_num_key_value_heads_means_multi_head_attention() -> None:
    data = {k: v for k, v in LLAMA_2_7B_JSON.items() if k != "num_key_value_heads"}
    assert config_from_hf(data).kv_heads == 32


def test_llama_attention_and_mlp_bias_together_set_bias() -> None:
    cfg = config_from_hf({**LLAMA_2_7B_JSON, "attention_bias": True, "mlp_bias": True})
    assert cfg.bias and cfg.qkv_bias


def test_llama_attention_bias_without_mlp_bias_is_refused_with_both_values() -> None:
    with pytest.raises(ValueError, match="attention_bias=True but mlp_bias=False"):
        config_from_hf({**LLAMA_2_7B_JSON, "attention_bias": True})


def test_qwen2_has_qkv_bias_only() -> None:
    cfg = config_from_hf(QWEN2_7B_JSON)
    assert cfg.qkv_bias and not cfg.bias


def test_bloom_small_models_spell_the_width_n_embed() -> None:
    data = {k: v for k, v in BLOOM_7B1_JSON.items() if k != "hidden_size"}
    data["n_embed"] = 1024
    data["n_head"] = 16
    assert config_from_hf(data).hidden_size == 1024


def test_unknown_model_type_names_it_and_lists_supported_types() -> None:
    with pytest.raises(ValueError, match=r"model_type 'mamba' is not supported; supported model "
                                         r"types: llama, mistral, qwen2, gpt2, bloom"):
        config_from_hf({**LLAMA_2_7B_JSON, "model_type": "mamba"})


def test_missing_model_type_lists_supported_types() -> None:
    data = {k: v for k, v in GPT2_JSON.items() if k != "model_type"}
    with pytest.raises(ValueError, match="no 'model_type' key; supported model types: llama"):
        config_from_hf(data)


@pytest.mark.parametrize("key", ["num_hidden_layers", "hidden_size", "num_attention_heads",
                                 "vocab_size", "intermediate_size", "max_position_embeddings"])
def test_missing_llama_key_is_named(key: str) -> None:
    data = {k: v for k, v in LLAMA_2_7B_JSON.items() if k != key}
    with pytest.raises(ValueError, match=f"missing the key '{key}'"):
        config_from_hf(data)


@pytest.mark.parametrize("key", ["n_layer", "n_embd", "n_head", "vocab_size", "n_positions"])
def test_missing_gpt2_key_is_named(key: str) -> None:
    data = {k: v for k, v in GPT2_JSON.items() if k != key}
    with pytest.raises(ValueError, match=f"model_type 'gpt2' is missing the key '{key}'"):
        config_from_hf(data)


def test_bloom_without_any_width_key_names_n_embed() -> None:
    data = {k: v for k, v in BLOOM_7B1_JSON.items() if k != "hidden_size"}
    with pytest.raises(ValueError, match="missing the key 'n_embed'"):
        config_from_hf(data)


def test_non_integer_size_names_the_json_key() -> None:
    with pytest.raises(ValueError, match="'num_hidden_layers' must be a positive integer, "
                                         "got '32'"):
        config_from_hf({**LLAMA_2_7B_JSON, "num_hidden_layers": "32"})


def test_unsupported_activation_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="'hidden_act' is 'tanh'; supported values: silu"):
        config_from_hf({**LLAMA_2_7B_JSON, "hidden_act": "tanh"})


def test_non_mapping_data_is_refused() -> None:
    with pytest.raises(ValueError, match="must be the dict of a config.json, got list"):
        config_from_hf([1, 2])  # type: ignore[arg-type]


def test_load_hf_config_reads_a_file_and_names_the_model_after_its_folder(tmp_path: Path
                                                                          ) -> None:
    folder = tmp_path / "Mistral-7B-v0.1"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(MISTRAL_7B_JSON))
    cfg = load_hf_config(folder / "config.json")
    assert cfg.name == "Mistral-7B-v0.1"
    assert cfg.replace(name="mistral-7b") == get_model("mistral-7b")
