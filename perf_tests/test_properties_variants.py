"""Properties of the architectures beyond the classic block (explicit head widths, query/key
norms, norm placements, parallel residuals, sliding windows, experts, latent attention): the
counts add up, model FLOPs are 6 x active matmul parameters plus attention, windows and
causality only ever remove attention work, parallel layouts hold every parameter, and every
memory model covers them."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.theory.config import TransformerConfig
from harness.theory.estimate import estimate
from harness.theory.flops import (
    decode_flops,
    flop_counter_flops,
    forward_flops,
    forward_flops_breakdown,
    train_flops,
)
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.states import TRAINING_PRECISIONS
from harness.theory.memory.training import training_memory
from harness.theory.parallel import check_tensor_parallel, params_per_rank
from harness.theory.params import active_params, matmul_params, num_params, param_breakdown
from perf_tests.strategies import (
    invalid_variant_kwargs,
    recompute_modes,
    variant_configs,
    workloads,
)

ATTENTION_CORE = ("attention_scores", "attention_values")
# The whole estimate evaluates every formula at once (~50 ms each): a handful of examples.
ESTIMATE_EXAMPLES = 15


def _without_windows(cfg: TransformerConfig) -> TransformerConfig:
    return cfg.replace(sliding_window=None, global_layers=())


@given(variant_configs())
def test_breakdown_adds_up_and_only_unused_experts_are_inactive(cfg):
    parts = param_breakdown(cfg)
    assert sum(parts.values()) == num_params(cfg) == cfg.num_params()
    assert all(count >= 0 for count in parts.values())
    unused = 0
    if cfg.moe is not None:
        expert = cfg.mlp_params(cfg.moe.expert_ffn_hidden_size)
        unused = cfg.num_moe_layers * (cfg.moe.num_experts - cfg.moe.top_k) * expert
    assert num_params(cfg) - active_params(cfg) == unused


@given(variant_configs(), workloads(max_batch=4, max_seq=4096), st.booleans())
def test_model_flops_are_six_active_matmul_parameters_per_token_plus_attention(cfg, workload,
                                                                                causal):
    # PaLM / torchtitan: 6N per token with N the active matmul parameters, plus three times the
    # forward attention core (which the window and causality shape).
    batch, seq = workload
    parts = forward_flops_breakdown(cfg, batch, seq, causal)
    core = sum(parts[key] for key in ATTENTION_CORE)
    assert train_flops(cfg, batch, seq, causal=causal).model == \
        6 * matmul_params(cfg) * batch * seq + 3 * core


@given(variant_configs(), workloads(max_batch=4, max_seq=8192))
def test_windows_and_causality_only_remove_attention_work(cfg, workload):
    batch, seq = workload
    full = _without_windows(cfg)
    for causal in (False, True):
        windowed = forward_flops_breakdown(cfg, batch, seq, causal)
        unwindowed = forward_flops_breakdown(full, batch, seq, causal)
        for key, value in windowed.items():
            if key in ATTENTION_CORE:
                assert value <= unwindowed[key]
            else:
                assert value == unwindowed[key]
    assert forward_flops(cfg, batch, seq, causal=True) <= forward_flops(cfg, batch, seq)
    assert kv_cache_bytes(cfg, batch, seq) <= kv_cache_bytes(full, batch, seq)
    assert decode_flops(cfg, batch, seq) <= decode_flops(full, batch, seq)


@given(variant_configs(), workloads(max_batch=4, max_seq=4096))
def test_a_window_as_long_as_the_sequence_changes_nothing(cfg, workload):
    batch, seq = workload
    wide = cfg.replace(sliding_window=seq) if cfg.sliding_window is not None else cfg
    full = _without_windows(cfg)
    for causal in (False, True):
        assert forward_flops(wide, batch, seq, causal) == forward_flops(full, batch, seq, causal)
    assert kv_cache_bytes(wide, batch, seq) == kv_cache_bytes(full, batch, seq)


@given(variant_configs(), workloads(max_batch=4, max_seq=4096), recompute_modes())
def test_flop_counter_convention_sees_full_attention_despite_windows(cfg, workload, recompute):
    # An eager or SDPA kernel is handed the full s x s scores and a mask: FlopCounterMode counts
    # them all, whatever the window.
    batch, seq = workload
    full = _without_windows(cfg)
    counted = flop_counter_flops(cfg, batch, seq, recompute, fused_attention=False)
    assert counted == flop_counter_flops(full, batch, seq, recompute, fused_attention=False)
    assert counted == train_flops(full, batch, seq, recompute).hardware
    assert counted >= train_flops(cfg, batch, seq, recompute).hardware


@given(variant_configs(), st.integers(1, 8), st.integers(0, 4096))
def test_decoding_with_an_empty_cache_is_a_one_token_forward(cfg, batch, context):
    # MLA decodes in its absorbed form (scores over the cached latent), so it differs.
    if cfg.mla is None:
        assert decode_flops(cfg, batch, 0) == forward_flops(cfg, batch, 1)
    assert decode_flops(cfg, batch, context) <= decode_flops(cfg, batch, context + 1)


@given(variant_configs())
def test_an_explicit_head_dim_of_hidden_over_heads_is_the_derived_one(cfg):
    if cfg.hidden_size % cfg.num_heads == 0:
        assert cfg.replace(head_dim=cfg.hidden_size // cfg.num_heads) == cfg.replace(head_dim=0)


@given(variant_configs(), st.data())
def test_tensor_parallel_ranks_together_hold_every_parameter(cfg, data):
    assert params_per_rank(cfg, 1, 1) == num_params(cfg)
    valid = []
    for tp in range(2, cfg.kv_heads + 1):
        try:
            check_tensor_parallel(cfg, tp)
        except ValueError:
            continue
        valid.append(tp)
    if valid:
        tp = data.draw(st.sampled_from(valid))
        assert num_params(cfg) <= tp * params_per_rank(cfg, tp, 1)
        assert params_per_rank(cfg, tp, 1) <= num_params(cfg)


@given(variant_configs(), workloads(max_batch=4, max_seq=2048),
       st.sampled_from(TRAINING_PRECISIONS), recompute_modes())
def test_training_memory_of_any_architecture_adds_up_and_grows_with_the_batch(
        cfg, workload, precision, recompute):
    batch, seq = workload
    memory = training_memory(cfg, batch, seq, precision, "adamw", recompute)
    larger = training_memory(cfg, batch + 1, seq, precision, "adamw", recompute)
    assert memory.total == sum(memory.parts.values())
    assert all(value >= 0 for value in memory.parts.values())
    assert memory.total <= larger.total


@given(variant_configs(), workloads(max_batch=4, max_seq=4096))
def test_serving_memory_holds_every_expert_and_the_cache(cfg, workload):
    memory = inference_memory(cfg, *workload)
    assert memory.parts["weights"] == 2 * num_params(cfg)
    assert memory.parts["kv_cache"] == kv_cache_bytes(cfg, *workload)


@settings(max_examples=ESTIMATE_EXAMPLES)
@given(variant_configs(), st.integers(1, 4096))
def test_the_estimate_reports_total_and_active_parameters_of_any_architecture(cfg, seq):
    if cfg.position == "learned":
        seq = min(seq, cfg.max_position_embeddings)
    result = estimate(cfg, seq_len=seq)
    assert result.parameters.total == num_params(cfg)
    assert result.parameters.active == active_params(cfg)
    assert math.isfinite(result.time.step_seconds)


@given(invalid_variant_kwargs())
def test_impossible_architectures_are_refused_naming_the_field(case):
    kwargs, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        TransformerConfig(**kwargs)
