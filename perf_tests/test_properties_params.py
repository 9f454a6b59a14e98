"""Properties of the parameter counts: the breakdown adds up, tying only removes the output layer,
the textbook formula is exact where its assumptions hold, GQA only ever removes weights, and the
tensor/pipeline-parallel share of one rank never exceeds the whole."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given

from harness.theory.config import TransformerConfig
from harness.theory.flops import (
    decode_flops,
    forward_flops,
    forward_flops_breakdown,
    train_flops,
)
from harness.theory.memory.activations import layer_activation_bytes
from harness.theory.memory.inference import kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.theory.parallel import params_per_rank
from harness.theory.params import (
    approx_params_gpt,
    attention_params,
    num_params,
    param_breakdown,
)
from perf_tests.strategies import configs_with_layouts, transformer_configs, workloads

MODEL_STATE_PARTS = ("weights", "master_weights", "gradients", "optimizer_states")


@given(transformer_configs())
def test_num_params_equals_the_sum_of_its_breakdown(cfg):
    breakdown = param_breakdown(cfg)
    assert num_params(cfg) == cfg.num_params() == sum(breakdown.values())
    assert all(count >= 0 for count in breakdown.values())


@given(transformer_configs())
def test_tying_embeddings_removes_exactly_the_output_layer(cfg):
    tied = cfg.replace(tied_embeddings=True).num_params()
    untied = cfg.replace(tied_embeddings=False).num_params()
    assert untied - tied == cfg.vocab_size * cfg.hidden_size


@given(transformer_configs(styles=("gpt",)))
def test_textbook_gpt_count_is_exact_for_an_untied_gpt_block_without_learned_positions(cfg):
    # Source 003: l(12h^2 + 13h) + 2Vh counts the blocks and both vocabulary matrices; the only
    # thing it leaves out is the final LayerNorm (weight and bias, 2h).
    untied = cfg.replace(tied_embeddings=False, position="rope")
    assert num_params(untied) == approx_params_gpt(untied) + 2 * cfg.hidden_size


@given(transformer_configs(), workloads())
def test_parameters_and_model_states_do_not_depend_on_the_workload(cfg, workload):
    small = training_memory(cfg, 1, 1).parts
    large = training_memory(cfg, *workload).parts
    assert {part: small[part] for part in MODEL_STATE_PARTS} == \
        {part: large[part] for part in MODEL_STATE_PARTS}


@given(transformer_configs(styles=("llama", "any")), workloads(max_batch=8, max_seq=1024))
def test_kv_heads_equal_to_heads_is_multi_head_attention(cfg, workload):
    # Multi-head attention: K and V as wide as Q, four h x h matrices, Q/K/V projections of
    # 6bsh^2 FLOPs per layer, a KV cache of 2 * L * h elements per token, and nothing for flash
    # attention to save on K and V.
    batch, seq = workload
    mha = cfg.replace(num_kv_heads=cfg.num_heads)
    h, layers = cfg.hidden_size, cfg.num_layers
    assert mha == cfg.replace(num_kv_heads=None)
    assert mha.kv_hidden_size == h
    biases = (3 * h if mha.qkv_bias else 0) + (h if mha.bias else 0)
    assert attention_params(mha) == 4 * h * h + biases
    assert forward_flops_breakdown(mha, batch, seq)["qkv_projection"] == \
        layers * 6 * batch * seq * h * h
    assert kv_cache_bytes(mha, batch, seq, bytes_per_element=2) == 2 * layers * h * batch * seq * 2
    flash = layer_activation_bytes(mha, batch, seq, flash_attention=True).parts
    unfused = layer_activation_bytes(mha, batch, seq, flash_attention=False).parts
    assert (flash["key"], flash["value"]) == (unfused["key"], unfused["value"])


def _with_kv_heads(cfg: TransformerConfig, kv_heads: int) -> TransformerConfig:
    return cfg.replace(num_kv_heads=kv_heads)


@given(transformer_configs(styles=("llama", "any")), workloads(max_batch=8, max_seq=1024))
def test_fewer_kv_heads_strictly_lower_params_flops_and_kv_cache(cfg, workload):
    divisors = [g for g in range(1, cfg.num_heads + 1) if cfg.num_heads % g == 0]
    costs = []
    for kv_heads in divisors:
        grouped = _with_kv_heads(cfg, kv_heads)
        costs.append((num_params(grouped), forward_flops(grouped, *workload),
                      train_flops(grouped, *workload).model,
                      decode_flops(grouped, *workload), kv_cache_bytes(grouped, *workload)))
    for fewer, more in pairwise(costs):
        assert all(a < b for a, b in zip(fewer, more, strict=True))


@given(transformer_configs())
def test_one_rank_without_parallelism_holds_every_parameter(cfg):
    assert params_per_rank(cfg, tp=1, pp=1) == num_params(cfg)


@given(configs_with_layouts())
def test_one_rank_never_holds_more_than_the_whole_model(cfg_and_layout):
    cfg, (_, tp, pp) = cfg_and_layout
    assert params_per_rank(cfg, tp, pp) <= params_per_rank(cfg, 1, pp) <= num_params(cfg)


@given(configs_with_layouts())
def test_tensor_parallel_ranks_together_hold_at_least_the_whole_model(cfg_and_layout):
    # Split weights add up to the whole; norms and row-parallel biases are replicated on top.
    cfg, (_, tp, _) = cfg_and_layout
    assert tp * params_per_rank(cfg, tp, 1) >= num_params(cfg)
