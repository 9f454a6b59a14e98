"""Every supported Hugging Face model type against transformers itself: the config.json loader
gives exactly the parameters of the model transformers builds from the same file, and the FLOPs
torch's FlopCounterMode counts in its training step.

Each type is built from a small config that switches on what the type can do (explicit head
widths, windows with global layers, experts with dense layers and shared experts, latent
attention with and without a query bottleneck, query/key norms), on the meta device (no memory,
no compute). Attention runs eagerly (`attn_implementation="eager"`): its QK^T and softmax.V are
plain matmuls FlopCounterMode counts on any device (SDPA on CPU may be counted as nothing),
so the reference is `flop_counter_flops(..., fused_attention=False)`. Experts run as
`batched_mm`, every token through exactly its top_k experts (the default loop over experts
needs real routing decisions, which meta tensors cannot make).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from harness.theory.config import TransformerConfig
from harness.theory.flops import flop_counter_flops
from harness.theory.hf import HF_MODEL_TYPES, config_from_hf

transformers = pytest.importorskip(
    "transformers", reason="transformers (the `test` extra) builds the reference models")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip(f"transformers {transformers.__version__} has no experts_implementation; the "
                f"`test` extra asks for 5.x", allow_module_level=True)
torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

BATCH, SEQ = 2, 16
# The tolerance for FLOPs (parameters must match exactly); the counts agree exactly
# today, the margin leaves room for a transformers release that adds an uncounted small op.
FLOP_TOLERANCE = 1e-3

_SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=128, max_position_embeddings=64, pad_token_id=0)
# One small config per model type, each switching on what its type can express.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(_SMALL, head_dim=24),
    "mistral": dict(_SMALL, head_dim=24, sliding_window=8),
    "mixtral": dict(_SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=8),
    "qwen2": dict(_SMALL, num_hidden_layers=3, use_sliding_window=True, sliding_window=8,
                  max_window_layers=1),
    "qwen2_moe": dict(_SMALL, num_hidden_layers=3, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      mlp_only_layers=[1]),
    "qwen3": dict(_SMALL, head_dim=32, tie_word_embeddings=True),
    "qwen3_moe": dict(_SMALL, num_hidden_layers=4, head_dim=32, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=2),
    "gemma": dict(_SMALL, num_key_value_heads=1, head_dim=32),
    "gemma2": dict(_SMALL, head_dim=32, sliding_window=8),
    "gemma3_text": dict(_SMALL, num_hidden_layers=3, head_dim=32, sliding_window=8,
                        sliding_window_pattern=3),
    "olmo2": dict(_SMALL),
    "phi": dict(_SMALL, qk_layernorm=True),
    "phi3": dict(_SMALL, sliding_window=8),
    "gpt_neox": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                     intermediate_size=96, vocab_size=128, max_position_embeddings=64,
                     use_parallel_residual=False),
    "opt": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=96,
                vocab_size=128, max_position_embeddings=64),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64),
    "bloom": dict(n_layer=2, hidden_size=64, n_head=4, vocab_size=128),
    "deepseek_v2": dict(_SMALL, num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=2,
                        kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16,
                        qk_rope_head_dim=8, v_head_dim=12, first_k_dense_replace=1),
    "deepseek_v3": dict(_SMALL, num_hidden_layers=3, num_key_value_heads=4, n_routed_experts=8,
                        num_experts_per_tok=2, n_group=2, topk_group=1,
                        moe_intermediate_size=32, n_shared_experts=1, kv_lora_rank=16,
                        q_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                        first_k_dense_replace=1),
}
EXPERT_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
# Where transformers keeps each layer's window: on the attention module, or one for all layers
# in the config.
PER_LAYER_WINDOWS = ("qwen2", "qwen2_moe", "qwen3", "gemma2", "gemma3_text")
CONFIG_WINDOWS = ("mistral", "mixtral", "phi3", "qwen3_moe")


def _hf_config(model_type: str) -> Any:
    return transformers.AutoConfig.for_model(model_type, **SMALL_CONFIGS[model_type])


def _hf_model(hf_config: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation="eager", experts_implementation="batched_mm")


def _counted_training_step(model: Any, vocab_size: int) -> int:
    ids = torch.randint(0, vocab_size, (BATCH, SEQ), device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids).logits.float().sum().backward()
    return int(counter.get_total_flops())


def _ours(model_type: str) -> TransformerConfig:
    return config_from_hf({"model_type": model_type, **SMALL_CONFIGS[model_type]})


def test_every_supported_model_type_is_checked_against_transformers() -> None:
    assert set(SMALL_CONFIGS) == set(HF_MODEL_TYPES)


@pytest.mark.parametrize("model_type", HF_MODEL_TYPES)
def test_parameters_equal_transformers_and_flops_equal_flop_counter_mode(model_type: str
                                                                         ) -> None:
    hf_config = _hf_config(model_type)
    model = _hf_model(hf_config)
    cfg = _ours(model_type)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    counted = _counted_training_step(model, cfg.vocab_size)
    assert flop_counter_flops(cfg, BATCH, SEQ, fused_attention=False) == \
        pytest.approx(counted, rel=FLOP_TOLERANCE)


@pytest.mark.parametrize("model_type", HF_MODEL_TYPES)
def test_the_config_json_transformers_writes_loads_to_the_same_model(model_type: str) -> None:
    # Every key transformers serialises is understood (or known to be neutral).
    written = _hf_config(model_type).to_dict()
    assert config_from_hf(written) == _ours(model_type)


@pytest.mark.parametrize("model_type", PER_LAYER_WINDOWS + CONFIG_WINDOWS)
def test_sliding_windows_sit_on_the_layers_transformers_windows(model_type: str) -> None:
    hf_config = _hf_config(model_type)
    model = _hf_model(hf_config)
    expected = []
    for layer in model.model.layers:
        if model_type in PER_LAYER_WINDOWS:
            window = getattr(layer.self_attn, "sliding_window", None)
        else:
            window = hf_config.sliding_window
        expected.append(window or None)
    cfg = _ours(model_type)
    assert [cfg.layer_window(i) for i in range(cfg.num_layers)] == expected


@pytest.mark.parametrize("model_type", EXPERT_TYPES)
def test_expert_models_load_with_their_experts_never_as_dense(model_type: str) -> None:
    cfg = _ours(model_type)
    model = _hf_model(_hf_config(model_type))
    expert_layers = [i for i, layer in enumerate(model.model.layers)
                     if hasattr(layer.mlp, "experts")]
    assert cfg.moe is not None
    assert [i for i in range(cfg.num_layers) if cfg.is_moe_layer(i)] == expert_layers
    assert cfg.active_params() < cfg.num_params()


# Mistral-Nemo-Base-2407's config.json: 32 heads of head_dim 128 on a 5120-wide model.
MISTRAL_NEMO_JSON: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 1024000,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 131072,
}


def test_mistral_nemo_head_dim_is_honoured_to_the_parameter() -> None:
    data = {key: value for key, value in MISTRAL_NEMO_JSON.items() if key != "model_type"}
    hf_config = transformers.AutoConfig.for_model("mistral", **data)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    cfg = config_from_hf(MISTRAL_NEMO_JSON)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters()) == 12_247_782_400
