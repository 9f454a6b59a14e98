"""Properties of the memory formulas: breakdowns add up, memory only grows with the workload,
recomputation, tensor/sequence parallelism and ZeRO only ever save, the KV cache is linear, and
Korthikanti et al.'s closed forms hold exactly for the block they were derived for."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from harness.theory.config import TransformerConfig
from harness.theory.memory.activations import activation_bytes, layer_activation_bytes
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.theory.params import num_params
from perf_tests.strategies import (
    optimizers,
    parallel_layouts,
    precisions,
    recompute_modes,
    transformer_configs,
    workloads,
    zero_stages,
)

MODEL_STATE_PARTS = ("weights", "master_weights", "gradients", "optimizer_states")


def _layout(data: st.DataObject, cfg: TransformerConfig) -> tuple[int, int, int, bool]:
    """(dp, tp, pp, sp) for cfg; sp only where it may be used (any seq_len drawn later is a
    multiple of tp, see `_seq_multiple`)."""
    num_gpus, tp, pp = data.draw(parallel_layouts(cfg), label="num_gpus, tp, pp")
    return num_gpus // (tp * pp), tp, pp, data.draw(st.booleans(), label="sp")


def _seq_multiple(data: st.DataObject, tp: int, *, max_seq: int = 4096) -> int:
    """A sequence length that sequence parallelism can split over tp ranks."""
    return tp * data.draw(st.integers(1, max(1, max_seq // tp)), label="seq_len / tp")


@given(transformer_configs(), workloads(max_seq=4096), precisions(), optimizers(),
       recompute_modes())
def test_memory_breakdown_total_is_the_sum_of_its_parts(cfg, workload, precision, optimizer,
                                                        recompute):
    for breakdown in (training_memory(cfg, *workload, precision, optimizer, recompute),
                      activation_bytes(cfg, *workload, recompute),
                      layer_activation_bytes(cfg, *workload, recompute),
                      inference_memory(cfg, *workload)):
        assert breakdown.total == sum(breakdown.parts.values())
        assert all(value >= 0 for value in breakdown.parts.values())
        assert breakdown.to_dict()["total_bytes"] == breakdown.total


@given(transformer_configs(), workloads(max_seq=4096), precisions(), optimizers(),
       recompute_modes(), st.booleans())
def test_training_memory_is_model_states_plus_activations(cfg, workload, precision, optimizer,
                                                         recompute, flash):
    training = training_memory(cfg, *workload, precision, optimizer, recompute,
                               flash_attention=flash).parts
    activations = activation_bytes(cfg, *workload, recompute, flash_attention=flash,
                                   bytes_per_element=4 if precision == "fp32" else 2).parts
    assert {k: v for k, v in training.items() if k not in MODEL_STATE_PARTS} == activations


@given(transformer_configs())
def test_mixed_precision_adamw_costs_twenty_bytes_per_parameter(cfg):
    # Source 003: (2+4) weights + (2+4) gradients + (4+4) AdamW moments = 20 bytes/param; fp32
    # AdamW is 4 + 4 + 8 = 16; pure bf16 with bf16 states is 2 + 2 + 4 = 8.
    n = num_params(cfg)
    for precision, bytes_per_param in (("bf16-mixed", 20), ("fp16-mixed", 20), ("fp32", 16),
                                       ("bf16", 8)):
        parts = training_memory(cfg, 1, 1, precision, "adamw").parts
        assert sum(parts[name] for name in MODEL_STATE_PARTS) == bytes_per_param * n


@given(transformer_configs(), st.data(), st.integers(1, 32), precisions(), optimizers(),
       recompute_modes(), zero_stages(), st.booleans())
def test_training_memory_never_decreases_with_batch(cfg, data, batch, precision, optimizer,
                                                    recompute, zero, flash):
    dp, tp, pp, sp = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    smaller, larger = (training_memory(cfg, b, seq, precision, optimizer, recompute, tp, pp, sp,
                                       flash, zero, dp).total for b in (batch, batch + 1))
    assert smaller <= larger


@given(transformer_configs(), st.data(), st.integers(1, 8), precisions(), optimizers(),
       recompute_modes(), zero_stages(), st.booleans())
def test_training_memory_never_decreases_with_sequence_length(cfg, data, batch, precision,
                                                              optimizer, recompute, zero, flash):
    dp, tp, pp, sp = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    step = tp if sp else 1
    shorter, longer = (training_memory(cfg, batch, s, precision, optimizer, recompute, tp, pp,
                                       sp, flash, zero, dp).total for s in (seq, seq + step))
    assert shorter <= longer


@given(transformer_configs(), workloads(max_seq=4096), st.sampled_from([0.5, 1, 2, 4]))
def test_inference_memory_never_decreases_with_batch_or_sequence(cfg, workload, bytes_per_param):
    batch, seq = workload
    base = inference_memory(cfg, batch, seq, bytes_per_param).total
    assert base <= inference_memory(cfg, batch + 1, seq, bytes_per_param).total
    assert base <= inference_memory(cfg, batch, seq + 1, bytes_per_param).total


@given(transformer_configs(), workloads(max_seq=4096), st.sampled_from([0.5, 1, 2, 4]))
def test_inference_memory_holds_every_weight_and_the_whole_kv_cache(cfg, workload,
                                                                    bytes_per_param):
    parts = inference_memory(cfg, *workload, bytes_per_param).parts
    assert parts["kv_cache"] == kv_cache_bytes(cfg, *workload)
    # int4 weights take half a byte each; an odd count rounds up to whole bytes.
    assert parts["weights"] == math.ceil(Fraction(num_params(cfg)) * Fraction(bytes_per_param))


@given(transformer_configs(), st.data(), st.integers(1, 8), st.booleans(), st.booleans())
def test_activation_memory_full_at_most_selective_at_most_none(cfg, data, batch, flash, dropout):
    _, tp, pp, sp = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    none, selective, full = (activation_bytes(cfg, batch, seq, mode, tp, sp, flash, pp,
                                              dropout).total
                             for mode in ("none", "selective", "full"))
    assert full <= selective <= none
    layer = [layer_activation_bytes(cfg, batch, seq, mode, tp, sp, flash, dropout).total
             for mode in ("none", "selective", "full")]
    assert layer[2] <= layer[1] <= layer[0]


@given(transformer_configs(), st.data(), st.integers(1, 8), recompute_modes(), st.booleans(),
       st.booleans())
def test_tensor_parallelism_never_raises_per_gpu_activations(cfg, data, batch, recompute, flash,
                                                             dropout):
    _, tp, pp, _ = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    split = activation_bytes(cfg, batch, seq, recompute, tp, False, flash, pp, dropout).total
    whole = activation_bytes(cfg, batch, seq, recompute, 1, False, flash, pp, dropout).total
    assert split <= whole


@given(transformer_configs(), st.data(), st.integers(1, 8), recompute_modes(), st.booleans(),
       st.booleans())
def test_sequence_parallelism_never_raises_activations_over_tensor_parallelism_alone(
        cfg, data, batch, recompute, flash, dropout):
    _, tp, pp, _ = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    with_sp = activation_bytes(cfg, batch, seq, recompute, tp, True, flash, pp, dropout).total
    without = activation_bytes(cfg, batch, seq, recompute, tp, False, flash, pp, dropout).total
    assert with_sp <= without
    if tp == 1:
        assert with_sp == without


@given(transformer_configs(), st.data(), precisions(), optimizers())
def test_zero_stages_never_raise_model_states(cfg, data, precision, optimizer):
    dp, tp, pp, _ = _layout(data, cfg)
    states = []
    for zero in (0, 1, 2, 3):
        parts = training_memory(cfg, 1, tp, precision, optimizer, tp=tp, pp=pp, zero_stage=zero,
                                dp=dp).parts
        states.append(sum(parts[name] for name in MODEL_STATE_PARTS))
    assert states[0] >= states[1] >= states[2] >= states[3]


@given(transformer_configs(), zero_stages(), precisions(), optimizers())
def test_zero_over_a_single_replica_changes_nothing(cfg, zero, precision, optimizer):
    assert training_memory(cfg, 1, 1, precision, optimizer, zero_stage=zero, dp=1) == \
        training_memory(cfg, 1, 1, precision, optimizer, zero_stage=0, dp=1)


@given(transformer_configs(), workloads(max_batch=32, max_seq=4096), st.sampled_from([1, 2, 4]))
def test_kv_cache_is_linear_in_sequence_and_in_batch(cfg, workload, element_bytes):
    batch, seq = workload
    one = kv_cache_bytes(cfg, batch, seq, element_bytes)
    assert kv_cache_bytes(cfg, 2 * batch, seq, element_bytes) == 2 * one
    assert kv_cache_bytes(cfg, batch, 3 * seq, element_bytes) == 3 * one
    assert kv_cache_bytes(cfg, 1, 1, element_bytes) * batch * seq == one


@given(transformer_configs(styles=("gpt",)), st.data(), st.integers(1, 8))
def test_korthikanti_closed_forms_are_exact_for_gpt_blocks(cfg, data, batch):
    # Korthikanti et al. 2022 (source 003), per layer, 16-bit activations, dropout, unfused
    # attention: sbh(34 + 5as/h) on one GPU; sbh(10 + 24/t + 5as/(ht)) under tensor parallelism;
    # sbh/t * (34 + 5as/h) with sequence parallelism added.
    _, tp, _, _ = _layout(data, cfg)
    seq = _seq_multiple(data, tp)
    sbh = seq * batch * cfg.hidden_size
    scores = Fraction(5 * cfg.num_heads * seq, cfg.hidden_size)

    def per_layer(t: int, sp: bool) -> int:
        return layer_activation_bytes(cfg, batch, seq, "none", t, sp, flash_attention=False,
                                      dropout=True, bytes_per_element=2).total

    assert per_layer(1, False) == sbh * (34 + scores)
    assert per_layer(tp, False) == sbh * (10 + Fraction(24, tp) + scores / tp)
    assert per_layer(tp, True) == sbh * (34 + scores) / tp


@given(transformer_configs(), st.integers(1, 8), st.integers(2, 4096), recompute_modes(),
       st.booleans())
def test_flash_attention_never_raises_activations_from_two_tokens_on(cfg, batch, seq, recompute,
                                                                     dropout):
    # Flash keeps a fp32 log-sum-exp per row and head (4 bytes * a*s*b) instead of the 16-bit
    # s x s scores (2 bytes * a*s^2*b or more): no larger once s >= 2. At s = 1 without dropout
    # the single 2-byte score is smaller than its 4-byte log-sum-exp, so the bound starts at 2.
    flash = activation_bytes(cfg, batch, seq, recompute, flash_attention=True,
                             dropout=dropout).total
    unfused = activation_bytes(cfg, batch, seq, recompute, flash_attention=False,
                               dropout=dropout).total
    assert flash <= unfused
