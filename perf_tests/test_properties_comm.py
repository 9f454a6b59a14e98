"""Properties of the communication formulas: a ring at its bound runs exactly at the link's
bandwidth, an all-reduce costs a reduce-scatter plus an all-gather, ZeRO's volumes keep their
ratios, gradient accumulation divides DDP's traffic, and bad sizes are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.theory.comm import (
    COLLECTIVES,
    GRADIENT_REDUCE_BYTES,
    bus_bandwidth,
    bus_bandwidth_factor,
    communication_share,
    data_parallel_traffic,
    ddp_gradient_bytes_per_micro_step,
    pipeline_parallel_bytes,
    ring_time_lower_bound,
    tensor_parallel_traffic,
)
from perf_tests.strategies import (
    bad_sizes,
    precisions,
    recompute_modes,
    transformer_configs,
    workloads,
    zero_stages,
)

collectives = st.sampled_from(COLLECTIVES)
ranks = st.integers(2, 1024)
# Message sizes from one byte to 64 GiB, link bandwidths from 1 GB/s (a slow NIC) to 2 TB/s.
sizes = st.integers(1, 64 * 2**30)
links = st.floats(1e9, 2e12)
latencies = st.floats(1e-7, 1e-4)
params = st.integers(1, 10**12)
accumulation = st.integers(1, 64)


@given(collectives, sizes, ranks, links)
def test_a_ring_at_its_bound_runs_at_exactly_the_link_bandwidth(op, nbytes, n, link):
    seconds = ring_time_lower_bound(op, nbytes, n, link)
    assert bus_bandwidth(op, nbytes, seconds, n) == pytest.approx(link, rel=1e-9)


@given(collectives, sizes, ranks, links, latencies)
def test_latency_keeps_the_bus_bandwidth_below_the_link(op, nbytes, n, link, latency):
    seconds = ring_time_lower_bound(op, nbytes, n, link, latency)
    assert bus_bandwidth(op, nbytes, seconds, n) < link


@given(sizes, ranks, links, st.floats(0, 1e-4))
def test_a_ring_all_reduce_is_a_reduce_scatter_then_an_all_gather(nbytes, n, link, latency):
    parts = (ring_time_lower_bound("reduce_scatter", nbytes, n, link, latency)
             + ring_time_lower_bound("all_gather", nbytes, n, link, latency))
    assert ring_time_lower_bound("all_reduce", nbytes, n, link, latency) == pytest.approx(parts)


@given(collectives, st.integers(1, 1023))
def test_more_ranks_send_more_per_byte_but_never_beyond_the_limit(op, n):
    limit = 2 if op == "all_reduce" else 1
    assert bus_bandwidth_factor(op, n) < bus_bandwidth_factor(op, n + 1) < limit


@given(collectives, sizes, ranks, links)
def test_the_bandwidth_bound_is_linear_in_the_size(op, nbytes, n, link):
    assert ring_time_lower_bound(op, 2 * nbytes, n, link) == pytest.approx(
        2 * ring_time_lower_bound(op, nbytes, n, link), rel=1e-12)


@given(params, ranks, st.sampled_from(["fp32", "bf16"]))
def test_zero_1_and_2_move_what_ddp_moves_and_zero_3_half_as_much_again(num_params, n,
                                                                        precision):
    # Equal element sizes for gradients and parameters (fp32 or pure bf16 training).
    sent = [data_parallel_traffic(num_params, zero_stage=stage, precision=precision)
            .bytes_sent_per_rank(n) for stage in range(4)]
    assert sent[1] == pytest.approx(sent[0]) and sent[2] == pytest.approx(sent[0])
    assert sent[3] == pytest.approx(1.5 * sent[0])


@given(params, accumulation, precisions())
def test_ddp_traffic_per_optimizer_step_does_not_grow_with_accumulation(num_params, gas,
                                                                        precision):
    once = data_parallel_traffic(num_params, grad_accum_steps=1, precision=precision)
    assert data_parallel_traffic(num_params, grad_accum_steps=gas, precision=precision) == once
    per_micro = ddp_gradient_bytes_per_micro_step(num_params, 4, gas)
    assert per_micro * gas == pytest.approx(num_params * 4)


@given(params, accumulation, zero_stages(), precisions(), ranks)
def test_every_stage_reduces_the_gradients_at_least_once_per_step(num_params, gas, stage,
                                                                 precision, n):
    traffic = data_parallel_traffic(num_params, zero_stage=stage, grad_accum_steps=gas,
                                    precision=precision)
    # A reduce-scatter of the gradients is the least any stage does: (n-1)/n of them per rank.
    once = (n - 1) / n * num_params * GRADIENT_REDUCE_BYTES[precision]
    assert traffic.bytes_sent_per_rank(n) >= once * (1 - 1e-12)


@given(transformer_configs(), workloads(max_batch=8, max_seq=4096), st.integers(1, 8),
       accumulation, recompute_modes())
def test_tensor_parallel_traffic_grows_with_layers_and_micro_batches(cfg, workload, layers, gas,
                                                                     recompute):
    batch, seq = workload
    one = tensor_parallel_traffic(cfg, batch, seq, layers=1, recompute=recompute)
    many = tensor_parallel_traffic(cfg, batch, seq, layers=layers, recompute=recompute,
                                   grad_accum_steps=gas)
    assert many.all_reduce_bytes == layers * gas * one.all_reduce_bytes
    assert many.all_gather_bytes == many.reduce_scatter_bytes == 0


@given(transformer_configs(), workloads(max_batch=8, max_seq=4096), accumulation,
       st.integers(1, 8))
def test_sequence_parallel_pipeline_sends_a_tensor_parallel_share(cfg, workload, gas, tp):
    batch, seq = workload
    whole = pipeline_parallel_bytes(cfg, batch, seq, grad_accum_steps=gas)
    split = pipeline_parallel_bytes(cfg, batch, seq, grad_accum_steps=gas, tp=tp, sp=True)
    assert split <= whole and split * tp <= whole


@given(st.floats(0, 1e3), st.floats(1e-6, 1e3), st.floats(0, 1e3))
def test_communication_share_is_a_fraction_that_grows_with_communication(comm, compute, more):
    share = communication_share(comm, compute)
    assert 0 <= share < 1
    assert communication_share(comm + more, compute) >= share


@given(collectives, bad_sizes())
def test_world_sizes_that_are_not_positive_integers_are_refused(op, n):
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        bus_bandwidth_factor(op, n)


@given(bad_sizes())
def test_parameter_counts_that_are_not_positive_integers_are_refused(num_params):
    with pytest.raises(ValueError, match="num_params must be a positive integer"):
        data_parallel_traffic(num_params)
