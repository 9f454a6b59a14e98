"""Properties of the parallelism arithmetic: DP x TP x PP = GPUs and GBS = MBS x DP x GAS
round-trip, and tensor/pipeline parallelism accept exactly the sizes that split the model evenly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    data_parallel_size,
    global_batch_size,
    grad_accum_steps,
    tokens_per_step,
)
from perf_tests.strategies import transformer_configs

degrees = st.integers(1, 64)


@given(degrees, degrees, degrees)
def test_data_parallel_size_round_trips_through_tp_and_pp(dp, tp, pp):
    num_gpus = dp * tp * pp
    assert data_parallel_size(num_gpus, tp, pp) * tp * pp == num_gpus


@given(st.integers(1, 4096), degrees, degrees)
def test_gpu_counts_that_tp_times_pp_does_not_divide_are_refused(num_gpus, tp, pp):
    if num_gpus % (tp * pp):
        with pytest.raises(ValueError, match=f"num_gpus={num_gpus}"):
            data_parallel_size(num_gpus, tp, pp)
    else:
        assert data_parallel_size(num_gpus, tp, pp) == num_gpus // (tp * pp)


@given(degrees, degrees, degrees, st.integers(1, 32768))
def test_global_batch_size_round_trips_through_grad_accum_steps(micro_batch, dp, gas, seq):
    gbs = global_batch_size(micro_batch, dp, gas)
    assert gbs == micro_batch * dp * gas
    assert grad_accum_steps(gbs, micro_batch, dp) == gas
    assert tokens_per_step(gbs, seq) == gbs * seq


@given(st.integers(1, 4096), degrees, degrees)
def test_global_batches_that_mbs_times_dp_does_not_divide_are_refused(gbs, micro_batch, dp):
    if gbs % (micro_batch * dp):
        with pytest.raises(ValueError, match=f"global_batch_size={gbs}"):
            grad_accum_steps(gbs, micro_batch, dp)
    else:
        assert global_batch_size(micro_batch, dp, grad_accum_steps(gbs, micro_batch, dp)) == gbs


@given(transformer_configs(), st.integers(1, 64))
def test_tensor_parallelism_accepts_exactly_the_sizes_that_split_heads_kv_heads_and_mlp(cfg, tp):
    splits = cfg.num_heads % tp == 0 and cfg.kv_heads % tp == 0 and cfg.ffn_size % tp == 0
    if splits:
        layout = check_tensor_parallel(cfg, tp)
        assert layout.heads_per_rank * tp == cfg.num_heads
        assert layout.kv_heads_per_rank * tp == cfg.kv_heads
        assert layout.ffn_per_rank * tp == cfg.ffn_size
        assert layout.vocab_per_rank * tp == layout.padded_vocab_size >= cfg.vocab_size
    else:
        with pytest.raises(ValueError, match=f"tp={tp}"):
            check_tensor_parallel(cfg, tp)


@given(transformer_configs(), st.integers(1, 16))
def test_pipeline_parallelism_accepts_exactly_the_sizes_that_split_the_layers(cfg, pp):
    if cfg.num_layers % pp:
        with pytest.raises(ValueError, match=f"pp={pp}"):
            check_pipeline_parallel(cfg, pp)
    else:
        assert check_pipeline_parallel(cfg, pp) * pp == cfg.num_layers
