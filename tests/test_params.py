"""Parameter counts: every zoo model against its published figure, and the parts that add up."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import harness.theory
import harness.theory.config
from harness.theory.config import TransformerConfig
from harness.theory.mla import MLA
from harness.theory.moe import MoE
from harness.theory.params import (
    active_params,
    approx_params_gpt,
    attention_params,
    layer_params,
    matmul_params,
    mlp_params,
    non_embedding_params,
    norm_params,
    num_params,
    param_breakdown,
)
from harness.theory.zoo import MODEL_ZOO, get_model

# Published totals: the sum of tensor sizes in each model's released checkpoint (Hugging Face
# safetensors metadata / model cards). The formula must match them to the parameter.
PUBLISHED_PARAMS: dict[str, int] = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "bloom-7b1": 7_069_016_064,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
}


def test_every_zoo_model_has_a_published_count() -> None:
    assert set(PUBLISHED_PARAMS) == set(MODEL_ZOO)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_zoo_model_count_equals_published_figure(name: str) -> None:
    assert num_params(get_model(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_config_method_delegates_to_the_formula(name: str) -> None:
    cfg = get_model(name)
    assert cfg.num_params() == num_params(cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_breakdown_adds_up_to_the_total(name: str) -> None:
    cfg = get_model(name)
    assert sum(param_breakdown(cfg).values()) == num_params(cfg)


def test_gpt2_block_is_twelve_h_squared_plus_thirteen_h() -> None:
    # Source 003, section 2.3: a GPT block with biases and a 4h MLP has 12h^2 + 13h parameters.
    cfg = get_model("gpt2")
    h = cfg.hidden_size
    parts = param_breakdown(cfg)
    per_layer = (parts["attention"] + parts["mlp"] + parts["layer_norms"]) // cfg.num_layers
    assert per_layer == 12 * h * h + 13 * h


def test_gpt2_parts_by_hand() -> None:
    cfg = get_model("gpt2")
    parts = param_breakdown(cfg)
    assert parts["embedding"] == 50257 * 768
    assert parts["position"] == 1024 * 768
    assert parts["output"] == 0  # tied to the embedding
    assert parts["final_norm"] == 2 * 768
    assert parts["embedding_norm"] == 0


def test_tied_output_counted_once_untied_adds_vocab_by_hidden() -> None:
    tied = get_model("gpt2")
    untied = tied.replace(tied_embeddings=False)
    assert num_params(untied) - num_params(tied) == tied.vocab_size * tied.hidden_size


def test_layernorm_without_bias_has_weight_only_rmsnorm_always_weight_only() -> None:
    cfg = get_model("gpt2")
    assert norm_params(cfg) == 2 * cfg.hidden_size
    assert norm_params(cfg.replace(bias=False)) == cfg.hidden_size
    assert norm_params(cfg.replace(norm="rmsnorm")) == cfg.hidden_size


def test_gqa_shrinks_key_and_value_projections() -> None:
    cfg = get_model("llama-2-70b")
    h, kv = cfg.hidden_size, cfg.kv_hidden_size
    assert kv == 1024  # 8 kv heads of 128 channels
    assert attention_params(cfg) == 2 * h * h + 2 * h * kv


def test_qkv_bias_alone_adds_q_k_v_biases() -> None:
    cfg = get_model("qwen2-7b")
    without = cfg.replace(qkv_bias=False)
    assert attention_params(cfg) - attention_params(without) == cfg.hidden_size + \
        2 * cfg.kv_hidden_size
    assert mlp_params(cfg) == mlp_params(without)


def test_gated_mlp_has_three_matrices() -> None:
    cfg = get_model("llama-2-7b")
    assert mlp_params(cfg) == 3 * 4096 * 11008


def test_bloom_embedding_layernorm_is_counted() -> None:
    cfg = get_model("bloom-7b1")
    assert param_breakdown(cfg)["embedding_norm"] == 2 * cfg.hidden_size
    assert num_params(cfg) - num_params(cfg.replace(embedding_norm=False)) == 2 * cfg.hidden_size


def test_rope_and_alibi_add_no_position_parameters() -> None:
    cfg = get_model("gpt2")
    learned = param_breakdown(cfg)["position"]
    assert learned == cfg.max_position_embeddings * cfg.hidden_size
    assert param_breakdown(cfg.replace(position="rope"))["position"] == 0
    assert param_breakdown(cfg.replace(position="alibi"))["position"] == 0


def test_non_embedding_params_excludes_embeddings_positions_and_untied_head() -> None:
    gpt2 = get_model("gpt2")
    h, layers = gpt2.hidden_size, gpt2.num_layers
    assert non_embedding_params(gpt2) == layers * (12 * h * h + 13 * h) + 2 * h
    llama = get_model("llama-2-7b")
    assert non_embedding_params(llama) == num_params(llama) - 2 * 32000 * 4096


def test_matmul_params_is_linear_weights_plus_output_layer() -> None:
    cfg = get_model("llama-2-7b")
    # LLaMA has no biases and RMSNorm only: everything except the input embedding and the norms.
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    assert matmul_params(cfg) == num_params(cfg) - cfg.vocab_size * cfg.hidden_size - norms


def test_textbook_approximation_overcounts_gpt2_by_its_tied_head() -> None:
    cfg = get_model("gpt2")
    exact = num_params(cfg)
    approx = approx_params_gpt(cfg)
    # 2Vh counts the tied head a second time; it ignores positions and the final norm.
    assert approx - exact == cfg.vocab_size * cfg.hidden_size - 1024 * 768 - 2 * 768


def test_textbook_approximation_is_exact_for_an_untied_gpt_without_positions() -> None:
    cfg = TransformerConfig(num_layers=4, hidden_size=64, num_heads=4, vocab_size=1000,
                            tied_embeddings=False, position="rope")
    # The only difference left is the final LayerNorm (2h), which the textbook form omits.
    assert num_params(cfg) - approx_params_gpt(cfg) == 2 * cfg.hidden_size


def test_non_config_argument_is_a_value_error_naming_the_type() -> None:
    with pytest.raises(ValueError, match="cfg must be a harness.TransformerConfig, got dict"):
        num_params({"num_layers": 2})  # type: ignore[arg-type]


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, function-level imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_config_counts_its_parameters_without_importing_params() -> None:
    # It may import its own parts (experts, latent attention), nothing that builds on it.
    config = Path(harness.theory.config.__file__)
    own_parts = {"harness.theory.moe", "harness.theory.mla"}
    assert not any(name.startswith("harness.theory") and name not in own_parts
                   for name in _imports(config))
    cfg = get_model("llama-2-7b")
    assert cfg.num_params() == num_params(cfg) == sum(param_breakdown(cfg).values())
    assert layer_params(cfg) == cfg.layer_params() == (
        attention_params(cfg) + mlp_params(cfg) + 2 * norm_params(cfg))


def test_the_theory_imports_only_the_standard_library_itself_and_the_checks() -> None:
    root = Path(harness.theory.__file__).parent
    for path in root.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = (top in sys.stdlib_module_names or name == "harness.checks"
                       or name.startswith("harness.theory"))
            assert allowed, f"{path.relative_to(root)} imports {name}"


# --- head widths, norms, experts and latent attention ------------------------------------------

# PaLM 540B (Chowdhery et al. 2022, table 1 and section 2): 118 layers of d_model 18432 with 48
# heads of 256 channels (12288 wide, not 18432), one key/value head, parallel attention and MLP
# behind one LayerNorm, SwiGLU of 4 d_model, no biases anywhere, shared input/output embedding.
PALM_540B = TransformerConfig(
    num_layers=118, hidden_size=18432, num_heads=48, head_dim=256, num_kv_heads=1,
    vocab_size=256000, ffn_hidden_size=4 * 18432, mlp="swiglu", bias=False, norm="layernorm",
    position="rope", parallel_residual=True, norm_placement="single", name="palm-540b")


def test_palm_540b_with_48_heads_of_256_channels_has_its_published_540_35b() -> None:
    assert PALM_540B.query_width == 12288 != PALM_540B.hidden_size
    assert PALM_540B.num_params() // 10**7 == 54035  # 540.35B as the paper gives it


def test_an_explicit_head_dim_sizes_queries_keys_values_and_output() -> None:
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_heads=4, head_dim=32,
                            num_kv_heads=2, vocab_size=10, bias=False)
    h, q, kv = 64, 4 * 32, 2 * 32
    assert attention_params(cfg) == h * q + 2 * h * kv + q * h


def test_ignoring_qwen3_head_dim_would_miss_a_seventh_of_qwen3_0_6b() -> None:
    # The issue that made head_dim a field: hidden/heads = 64, but Qwen3-0.6B's heads are 128.
    qwen3 = TransformerConfig(num_layers=28, hidden_size=1024, num_heads=16, num_kv_heads=8,
                              head_dim=128, vocab_size=151936, ffn_hidden_size=3072,
                              mlp="swiglu", bias=False, norm="rmsnorm", position="rope",
                              qk_norm="head")
    narrow = qwen3.replace(head_dim=0)
    assert round(1 - narrow.num_params() / qwen3.num_params(), 3) == 0.148


def test_query_key_norms_per_head_or_over_all_channels() -> None:
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=2,
                            vocab_size=10, bias=False, norm="rmsnorm")
    plain = attention_params(cfg)
    assert attention_params(cfg.replace(qk_norm="head")) - plain == 2 * 16  # Qwen3, Gemma 3
    assert attention_params(cfg.replace(qk_norm="full")) - plain == 64 + 32  # OLMo 2


@pytest.mark.parametrize(("placement", "parallel", "norms"), [
    ("pre", False, 2), ("post", False, 2), ("sandwich", False, 4), ("pre", True, 2),
    ("single", True, 1)])
def test_norms_per_layer_follow_their_placement(placement: str, parallel: bool,
                                                norms: int) -> None:
    cfg = get_model("llama-2-7b").replace(norm_placement=placement, parallel_residual=parallel)
    assert param_breakdown(cfg)["layer_norms"] == 32 * norms * 4096


def test_output_bias_and_position_offset_add_their_rows() -> None:
    cfg = get_model("gpt2")
    assert num_params(cfg.replace(output_bias=True)) - num_params(cfg) == 50257
    assert num_params(cfg.replace(position_offset=2)) - num_params(cfg) == 2 * 768


def test_experts_count_router_routed_and_shared_experts_and_only_top_k_are_active() -> None:
    moe = MoE(num_experts=8, top_k=2, expert_ffn_hidden_size=32, num_shared_experts=1,
              shared_ffn_hidden_size=48, shared_expert_gate=True, dense_layers=(0,))
    cfg = TransformerConfig(num_layers=3, hidden_size=16, num_heads=2, vocab_size=10,
                            mlp="swiglu", bias=False, norm="rmsnorm", ffn_hidden_size=40,
                            moe=moe)
    parts = param_breakdown(cfg)
    assert parts["mlp"] == 1 * 3 * 16 * 40  # the one dense layer
    assert parts["router"] == 2 * 16 * 8
    assert parts["experts"] == 2 * 8 * 3 * 16 * 32
    assert parts["shared_experts"] == 2 * (3 * 16 * 48 + 16)  # with Qwen's gate
    assert num_params(cfg) - active_params(cfg) == 2 * 6 * 3 * 16 * 32
    assert layer_params(cfg, 0) != layer_params(cfg, 1) == layer_params(cfg, 2)


def test_latent_attention_counts_its_bottlenecks_and_latent_norms() -> None:
    # DeepSeek-V2-Lite's attention: no query bottleneck, a 512-channel key/value latent plus a
    # 64-channel rotary key, 16 heads scoring over 128 + 64 channels and returning 128.
    mla = MLA(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    cfg = TransformerConfig(num_layers=1, hidden_size=2048, num_heads=16, vocab_size=10,
                            mlp="swiglu", bias=False, norm="rmsnorm", mla=mla)
    h = 2048
    expected = (h * 16 * 192 + h * (512 + 64) + 512 * 16 * (128 + 128) + 16 * 128 * h + 512)
    assert attention_params(cfg) == expected
    bottleneck = cfg.replace(mla=MLA(kv_lora_rank=512, qk_nope_head_dim=128,
                                     qk_rope_head_dim=64, v_head_dim=128, q_lora_rank=1536))
    assert attention_params(bottleneck) - attention_params(cfg) == \
        h * 1536 + 1536 + 1536 * 16 * 192 - h * 16 * 192
