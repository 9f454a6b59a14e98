"""Parameter counts: every zoo model against its published figure, and the parts that add up."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import harness.theory
import harness.theory.config
from harness.theory.config import TransformerConfig
from harness.theory.params import (
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
    config = Path(harness.theory.config.__file__)
    assert not any(name.startswith("harness.theory") for name in _imports(config))
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
