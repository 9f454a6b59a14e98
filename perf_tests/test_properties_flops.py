"""Properties of the FLOP formulas: recomputation ordering, linearity in batch, growth in sequence,
the Megatron-LM closed forms, the 6ND rule's error bound, decode versus prefill, MFU/HFU."""

from __future__ import annotations

import sys
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from harness.theory.flops import (
    approximation_error,
    decode_flops,
    forward_flops,
    hfu,
    mfu,
    six_nd,
    train_flops,
)
from harness.theory.params import matmul_params, num_params
from perf_tests.strategies import recompute_modes, transformer_configs, workloads

# A GPT block as Megatron-LM's closed forms assume it: GELU MLP of 4h, multi-head attention.
gpt_configs = transformer_configs(styles=("gpt",))

# Peaks between 1 TFLOP/s and 10 PFLOP/s cover every accelerator from a laptop to FP8 on B200.
peaks = st.floats(1e12, 1e16)


@given(transformer_configs(), workloads(), recompute_modes(), st.booleans(),
       st.floats(1e-3, 1e3), st.integers(1, 1024), peaks)
def test_mfu_never_exceeds_hfu_and_equals_it_without_recompute(
        cfg, workload, recompute, causal, seconds, num_gpus, peak):
    flops = train_flops(cfg, *workload, recompute=recompute, causal=causal)
    model_utilisation = mfu(flops.model, seconds, num_gpus, peak)
    hardware_utilisation = hfu(flops.hardware, seconds, num_gpus, peak)
    assert model_utilisation <= hardware_utilisation
    if recompute == "none":
        assert model_utilisation == hardware_utilisation


@given(transformer_configs(), workloads(), st.booleans())
def test_hardware_flops_strictly_increase_from_none_to_selective_to_full(cfg, workload, causal):
    none, selective, full = (train_flops(cfg, *workload, recompute=mode, causal=causal).hardware
                             for mode in ("none", "selective", "full"))
    # Strict: selective adds the attention core (never zero), full adds the projections too.
    assert none < selective < full


@given(transformer_configs(), workloads(), st.booleans())
def test_model_flops_do_not_depend_on_recompute(cfg, workload, causal):
    models = {train_flops(cfg, *workload, recompute=mode, causal=causal).model
              for mode in ("none", "selective", "full")}
    assert len(models) == 1


@given(transformer_configs(), workloads(max_batch=32), recompute_modes(), st.booleans())
def test_flops_are_exactly_linear_in_batch(cfg, workload, recompute, causal):
    batch, seq = workload
    assert forward_flops(cfg, 2 * batch, seq, causal) == 2 * forward_flops(cfg, batch, seq, causal)
    double = train_flops(cfg, 2 * batch, seq, recompute, causal)
    single = train_flops(cfg, batch, seq, recompute, causal)
    assert (double.model, double.hardware) == (2 * single.model, 2 * single.hardware)
    assert decode_flops(cfg, 2 * batch, seq) == 2 * decode_flops(cfg, batch, seq)


@given(transformer_configs(), workloads(max_seq=4096), st.booleans())
def test_forward_flops_grow_strictly_and_superlinearly_in_sequence(cfg, workload, causal):
    batch, seq = workload
    at_seq = forward_flops(cfg, batch, seq, causal)
    assert forward_flops(cfg, batch, seq + 1, causal) > at_seq
    # Attention is quadratic in s, everything else linear: doubling s more than doubles the work.
    assert forward_flops(cfg, batch, 2 * seq, causal) > 2 * at_seq


@given(transformer_configs(), workloads(), recompute_modes())
def test_causal_attention_never_costs_more_than_full_attention(cfg, workload, recompute):
    causal = train_flops(cfg, *workload, recompute=recompute, causal=True)
    full = train_flops(cfg, *workload, recompute=recompute, causal=False)
    assert causal.model < full.model
    assert causal.hardware < full.hardware


@given(gpt_configs, workloads())
def test_megatron_closed_forms_are_exact_for_gpt_blocks(cfg, workload):
    # Narayanan et al. 2021, eq. 3 (source 003): 72*b*l*s*h^2 * (1 + s/(6h) + V/(12*l*h)) without
    # recomputation and 96*b*l*s*h^2 * (1 + s/(6h) + V/(16*l*h)) with full recomputation.
    b, s = workload
    h, layers, vocab = cfg.hidden_size, cfg.num_layers, cfg.vocab_size
    base = b * layers * s * h * h
    without = 72 * base * (1 + Fraction(s, 6 * h) + Fraction(vocab, 12 * layers * h))
    with_full = 96 * base * (1 + Fraction(s, 6 * h) + Fraction(vocab, 16 * layers * h))
    assert train_flops(cfg, b, s, "none").model == without
    assert train_flops(cfg, b, s, "full").hardware == with_full


@given(transformer_configs(), workloads())
def test_six_nd_is_off_by_at_most_attention_below_and_non_matmul_weights_above(cfg, workload):
    # model = 6*D*M + 12*L*D*s*h with M the matmul weights (M <= N): 6ND can undercount only the
    # attention scores and overcount only the parameters that do no matmul (norms, biases,
    # positions, an untied input embedding).
    batch, seq = workload
    tokens = batch * seq
    model = train_flops(cfg, batch, seq).model
    rule = six_nd(num_params(cfg), tokens)
    attention = 12 * cfg.num_layers * tokens * seq * cfg.hidden_size
    non_matmul = num_params(cfg) - matmul_params(cfg)
    assert non_matmul >= 0
    assert -attention <= rule - model <= 6 * tokens * non_matmul


@given(transformer_configs(styles=("gpt",), max_hidden=4096), workloads())
def test_six_nd_relative_error_is_bounded_by_sequence_over_hidden_for_gpt_blocks(cfg, workload):
    # For a GPT block (tied, learned positions P, biases and LayerNorm): N = 12Lh^2 + 13Lh + Vh
    # + Ph + 2h, so |6ND/model - 1| <= max(s/(6h), (13 + (P + 2)/L)/(12h)): 6ND is within a few
    # percent once h is large against s and the error vanishes as h grows.
    batch, seq = workload
    h, layers = cfg.hidden_size, cfg.num_layers
    positions = cfg.max_position_embeddings
    exact = Fraction(six_nd(num_params(cfg), batch * seq) - train_flops(cfg, batch, seq).model,
                     train_flops(cfg, batch, seq).model)
    bound = max(Fraction(seq, 6 * h), (13 + Fraction(positions + 2, layers)) / (12 * h))
    assert abs(exact) <= bound
    assert abs(approximation_error(cfg, batch, seq) - float(exact)) <= 1e-12


@given(transformer_configs(), st.integers(1, 64), st.integers(2, 8192))
def test_decode_is_cheaper_than_prefill_of_the_same_context_from_two_tokens_on(
        cfg, batch, context):
    # decode(c) = b*P + 4*L*b*h*(c+1) against prefill(c) = c*b*P + 4*L*b*h*c^2 (P: per-token
    # matmul work): cheaper for every c >= 2, causal prefill (2*L*b*h*c^2) included.
    decode = decode_flops(cfg, batch, context)
    assert decode < forward_flops(cfg, batch, context)
    assert decode < forward_flops(cfg, batch, context, causal=True)


@given(transformer_configs(), st.integers(1, 64))
def test_decode_after_one_token_costs_exactly_one_more_key_per_layer_than_its_prefill(cfg, batch):
    # At c = 1 the rule above fails: the new query reads two keys (the cached one and its own),
    # the 1-token prefill one, so decode costs 4*L*b*h more (two matmuls, 2 FLOPs per MAC).
    extra = decode_flops(cfg, batch, 1) - forward_flops(cfg, batch, 1)
    assert extra == 4 * cfg.num_layers * batch * cfg.hidden_size


@given(transformer_configs(), st.integers(1, 64), st.integers(0, 8192))
def test_decode_with_empty_cache_is_one_token_prefill_and_each_cached_token_adds_one_key(
        cfg, batch, context):
    # With an empty cache decode is the 1-token forward; each cached token then adds exactly one
    # key to every layer's score and weighted-sum matmuls: 4*L*b*h.
    assert decode_flops(cfg, batch, 0) == forward_flops(cfg, batch, 1)
    step = decode_flops(cfg, batch, context + 1) - decode_flops(cfg, batch, context)
    assert step == 4 * cfg.num_layers * batch * cfg.hidden_size


@given(st.integers(0, 10**18), st.floats(1.0, 1e3), st.integers(1, 4096), peaks)
def test_mfu_lies_in_unit_interval_when_time_is_at_least_the_ideal(
        flops, slack, num_gpus, peak):
    ideal_seconds = flops / (num_gpus * peak)
    seconds = max(ideal_seconds * slack, sys.float_info.min)
    utilisation = mfu(flops, seconds, num_gpus, peak)
    # A few ulps of float rounding in seconds * gpus * peak, nothing more.
    assert 0.0 <= utilisation <= 1.0 + 4 * sys.float_info.epsilon
