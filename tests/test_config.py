"""Loading Hugging Face config.json files: real configs give the zoo's entries, bad ones name
the key or model type that is wrong."""

from __future__ import annotations

import json
import re
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


# --- the architectures beyond LLaMA/GPT-2 (counts against transformers: test_hf_architectures)

QWEN3_0_6B_JSON: dict[str, Any] = {  # Qwen/Qwen3-0.6B
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}
MIXTRAL_JSON: dict[str, Any] = {  # mistralai/Mixtral-8x7B-v0.1
    "architectures": ["MixtralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 32000,
}
DEEPSEEK_V2_LITE_JSON: dict[str, Any] = {  # deepseek-ai/DeepSeek-V2-Lite
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False,
    "aux_loss_alpha": 0.001, "first_k_dense_replace": 1, "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 10944, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
    "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 1.0,
    "scoring_func": "softmax", "seq_aux": True, "tie_word_embeddings": False,
    "topk_group": 1, "topk_method": "greedy", "v_head_dim": 128, "vocab_size": 102400,
}


def test_qwen3_head_dim_wider_than_hidden_over_heads_is_honoured() -> None:
    cfg = config_from_hf(QWEN3_0_6B_JSON)
    assert (cfg.head_dim, cfg.hidden_size // cfg.num_heads) == (128, 64)
    assert cfg.query_width == 2048 and cfg.kv_hidden_size == 1024
    assert cfg.qk_norm == "head" and cfg.tied_embeddings
    # Qwen/Qwen3-0.6B: 596,049,920 parameters (0.6B with the tied embedding once).
    assert cfg.num_params() == 596_049_920


def test_qwen3_without_head_dim_takes_transformers_default_of_128() -> None:
    data = {k: v for k, v in QWEN3_0_6B_JSON.items() if k != "head_dim"}
    assert config_from_hf(data).head_dim == 128


def test_mixtral_loads_as_experts_with_total_and_active_counts() -> None:
    cfg = config_from_hf(MIXTRAL_JSON)
    assert cfg.moe is not None and cfg.num_moe_layers == 32
    assert (cfg.moe.num_experts, cfg.moe.top_k) == (8, 2)
    # Mixtral 8x7B: 46.7B parameters, 12.9B active per token (Jiang et al. 2024); a token
    # skips 6 of 8 SwiGLU experts (3 * 4096 * 14336 each) in each of 32 layers.
    assert cfg.num_params() == 46_702_792_704
    assert cfg.active_params() == cfg.num_params() - 32 * 6 * 3 * 4096 * 14336
    assert round(cfg.active_params() / 1e9, 1) == 12.9


def test_deepseek_v2_lite_has_latent_attention_a_dense_first_layer_and_shared_experts() -> None:
    cfg = config_from_hf(DEEPSEEK_V2_LITE_JSON)
    assert cfg.mla is not None and cfg.mla.q_lora_rank is None
    assert cfg.moe is not None and cfg.moe.dense_layers == (0,)
    assert cfg.moe.num_shared_experts == 2
    assert cfg.num_params() == 15_706_484_224  # DeepSeek-V2-Lite: 15.7B total


def test_an_absent_key_takes_the_types_default_and_null_its_own_meaning() -> None:
    # DeepSeek's q_lora_rank: absent is transformers' 1536, null is no query bottleneck.
    absent = {k: v for k, v in DEEPSEEK_V2_LITE_JSON.items() if k != "q_lora_rank"}
    mla = config_from_hf(absent).mla
    assert mla is not None and mla.q_lora_rank == 1536
    # Mistral's sliding_window: absent is 4096, null is none.
    assert config_from_hf({**MISTRAL_7B_JSON, "sliding_window": None}).sliding_window is None
    no_window = {k: v for k, v in MISTRAL_7B_JSON.items() if k != "sliding_window"}
    assert config_from_hf(no_window).sliding_window == 4096


def test_gemma2_windows_every_other_layer_and_keeps_sandwich_norms() -> None:
    data = {"model_type": "gemma2", "num_hidden_layers": 4, "hidden_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
            "vocab_size": 128, "max_position_embeddings": 64, "sliding_window": 16}
    cfg = config_from_hf(data)
    assert cfg.norm_placement == "sandwich" and cfg.head_dim == 256
    assert [cfg.layer_window(i) for i in range(4)] == [16, None, 16, None]


def test_expert_keys_on_a_dense_model_type_are_refused_naming_them() -> None:
    data = {**LLAMA_2_7B_JSON, "num_local_experts": 8, "num_experts_per_tok": 2}
    with pytest.raises(ValueError, match="does not understand: num_experts_per_tok, "
                                         "num_local_experts"):
        config_from_hf(data)


def test_unknown_key_is_an_error_unless_the_caller_says_it_changes_nothing() -> None:
    data = {**LLAMA_2_7B_JSON, "my_training_flag": True}
    with pytest.raises(ValueError, match="my_training_flag.*never ignored silently.*"
                                         "ignore_keys"):
        config_from_hf(data)
    cfg = config_from_hf(data, ignore_keys=["my_training_flag"])
    assert cfg.replace(name="llama-2-7b") == get_model("llama-2-7b")


@pytest.mark.parametrize(("data", "message"), [
    ({**QWEN3_0_6B_JSON, "attention_bias": True}, "attention_bias=True: it adds biases"),
    ({**MIXTRAL_JSON, "model_type": "gemma", "use_bidirectional_attention": True,
      "num_local_experts": None, "num_experts_per_tok": None, "output_router_logits": None,
      "router_aux_loss_coef": None, "sliding_window": None},
     "use_bidirectional_attention=True"),
    ({**DEEPSEEK_V2_LITE_JSON, "moe_layer_freq": 2}, "moe_layer_freq=2"),
    ({**DEEPSEEK_V2_LITE_JSON, "num_key_value_heads": 4}, "MLA expands its latent"),
    ({"model_type": "opt", "hidden_size": 1024, "word_embed_proj_dim": 512,
      "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096,
      "vocab_size": 50272, "max_position_embeddings": 2048}, "project_in/project_out"),
    ({**GPT2_JSON, "add_cross_attention": True}, "cross-attention"),
    ({"model_type": "gemma3", "text_config": {}}, "vision tower"),
    ({**MIXTRAL_JSON, "num_experts": 4}, "sets both 'num_experts'=4 and "
                                         "'num_local_experts'=8"),
])
def test_architectures_the_config_cannot_express_are_refused_naming_the_key(
        data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_hf(data)


# --- reading the file --------------------------------------------------------------------------

def test_a_model_directory_is_read_through_its_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "Qwen3-0.6B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_0_6B_JSON))
    cfg = load_hf_config(folder)
    assert cfg.name == "Qwen3-0.6B"
    assert cfg == load_hf_config(str(folder / "config.json"))


def test_a_directory_without_config_json_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no config.json; pass the model directory"):
        load_hf_config(tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0x89 at offset 0)"),
    (b'{"model_type": "llama",', "not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object of model settings, got a JSON list"),
    (b'{"model_type": "llama"}', "missing the key 'num_hidden_layers'"),
])
def test_a_bad_file_is_a_value_error_naming_the_path(tmp_path: Path, content: bytes,
                                                     message: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_hf_config(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("path", [None, 3, b"config.json", ""])
def test_a_path_that_is_not_a_path_is_refused_with_what_to_pass(path: Any) -> None:
    with pytest.raises(ValueError, match="model directory or its config.json"):
        load_hf_config(path)
