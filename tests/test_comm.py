"""The communication formulas on worked examples: nccl-tests' bandwidth conventions, ring time
bounds, the bytes data/tensor/pipeline parallelism move, and the errors bad input gets."""

from __future__ import annotations

import re

import pytest

from harness.theory.comm import (
    COLLECTIVES,
    StepTraffic,
    algorithm_bandwidth,
    bus_bandwidth,
    bus_bandwidth_factor,
    bytes_sent_per_rank,
    communication_share,
    data_parallel_traffic,
    ddp_gradient_bytes_per_micro_step,
    pipeline_parallel_bytes,
    ring_steps,
    ring_time_lower_bound,
    tensor_parallel_traffic,
)
from harness.theory.zoo import get_model

GIB = 2**30
H100_LINK = 450e9  # NVLink 4, 900 GB/s bidirectional: 450 GB/s each way


@pytest.mark.parametrize(("op", "world_size", "factor"), [
    ("all_reduce", 1, 0.0), ("all_reduce", 2, 1.0), ("all_reduce", 8, 1.75),
    ("all_gather", 2, 0.5), ("all_gather", 8, 0.875),
    ("reduce_scatter", 4, 0.75),
])
def test_bus_bandwidth_factor_is_the_nccl_tests_correction(op: str, world_size: int,
                                                           factor: float) -> None:
    assert bus_bandwidth_factor(op, world_size) == factor


def test_bus_bandwidth_of_an_eight_gpu_all_reduce() -> None:
    # 1 GiB all-reduced by 8 ranks in 5 ms: algbw 214.7 GB/s, busbw 7/4 of it.
    algbw = algorithm_bandwidth(GIB, 5e-3)
    assert algbw == pytest.approx(214.748e9, rel=1e-5)
    assert bus_bandwidth("all_reduce", GIB, 5e-3, 8) == pytest.approx(algbw * 1.75)


def test_all_gather_size_is_the_whole_gathered_buffer() -> None:
    # nccl-tests sizes an all-gather by its output: 4 ranks each contribute 256 MiB of a 1 GiB
    # result and each receives the 768 MiB it lacks.
    assert bytes_sent_per_rank("all_gather", GIB, 4) == 0.75 * GIB
    assert bus_bandwidth("all_gather", GIB, 1e-2, 4) == pytest.approx(0.75 * GIB / 1e-2)


def test_two_h100s_all_reduce_a_gib_in_no_less_than_2_4_ms() -> None:
    # Two ranks: each sends half in the reduce-scatter and half in the all-gather = 1 GiB.
    assert ring_time_lower_bound("all_reduce", GIB, 2, H100_LINK) == pytest.approx(GIB / 450e9)
    assert ring_time_lower_bound("all_reduce", GIB, 2, H100_LINK) == pytest.approx(2.386e-3,
                                                                                 rel=1e-3)


def test_latency_is_paid_once_per_ring_step() -> None:
    assert ring_steps("all_reduce", 8) == 14
    assert ring_steps("all_gather", 8) == 7
    latency = 5e-6
    bound = ring_time_lower_bound("all_gather", 8 * 2**10, 8, H100_LINK, latency)
    assert bound == pytest.approx(7 * latency + 0.875 * 8 * 2**10 / H100_LINK)


def test_one_rank_communicates_nothing() -> None:
    for op in COLLECTIVES:
        assert ring_time_lower_bound(op, GIB, 1, H100_LINK, latency_seconds=1e-5) == 0.0
        assert bus_bandwidth(op, GIB, 1.0, 1) == 0.0


def test_ddp_all_reduces_every_fp32_gradient_once_per_optimizer_step() -> None:
    llama = get_model("llama-2-7b")
    params = llama.num_params()
    traffic = data_parallel_traffic(params, zero_stage=0, grad_accum_steps=8,
                                    precision="bf16-mixed")
    assert traffic == StepTraffic(all_reduce_bytes=4 * params)
    # Source 001: GAS 1 -> 8 divides the gradient traffic per micro-step by 8.
    assert ddp_gradient_bytes_per_micro_step(params, 4, 8) == 4 * params / 8
    # 8 GPUs: each sends 2 * 7/8 of the 27 GB of gradients, >= 105 ms at H100 NVLink speed.
    assert traffic.bytes_sent_per_rank(8) == pytest.approx(1.75 * 4 * params)
    assert traffic.time_lower_bound(8, H100_LINK) == pytest.approx(1.75 * 4 * params / 450e9)


def test_zero_stages_move_as_much_as_ddp_and_zero_3_half_as_much_again() -> None:
    # With the same element size for parameters and gradients (pure bf16), the ZeRO paper's
    # volumes: 2 psi for stages 0-2, 3 psi for stage 3 (per rank, times (n-1)/n).
    params, n = 1000, 4
    sent = {stage: data_parallel_traffic(params, zero_stage=stage, precision="bf16")
            .bytes_sent_per_rank(n) for stage in range(4)}
    assert sent[0] == sent[1] == sent[2] == 2 * 0.75 * 2 * params
    assert sent[3] == 1.5 * sent[0]


def test_sharded_gradients_are_reduced_every_micro_step() -> None:
    params = 1000
    stage2 = data_parallel_traffic(params, zero_stage=2, grad_accum_steps=4, precision="bf16")
    stage3 = data_parallel_traffic(params, zero_stage=3, grad_accum_steps=4, precision="bf16")
    assert stage2 == StepTraffic(reduce_scatter_bytes=4 * 2 * params,
                                 all_gather_bytes=2 * params)
    assert stage3 == StepTraffic(reduce_scatter_bytes=4 * 2 * params,
                                 all_gather_bytes=2 * 4 * 2 * params)


def test_tensor_parallelism_all_reduces_activations_four_times_per_layer() -> None:
    cfg = get_model("llama-2-70b")
    b, s, h = 1, 2048, cfg.hidden_size
    traffic = tensor_parallel_traffic(cfg, b, s, layers=12, grad_accum_steps=3)
    assert traffic == StepTraffic(all_reduce_bytes=3 * 12 * 4 * b * s * h * 2)
    full = tensor_parallel_traffic(cfg, b, s, layers=12, grad_accum_steps=3, recompute="full")
    assert full.all_reduce_bytes == traffic.all_reduce_bytes * 6 // 4
    # Selective recomputation rebuilds only the attention core, which holds no all-reduce.
    selective = tensor_parallel_traffic(cfg, b, s, layers=12, grad_accum_steps=3,
                                        recompute="selective")
    assert selective == traffic


def test_a_pipeline_stage_sends_activations_forward_and_gradients_back() -> None:
    cfg = get_model("llama-2-7b")
    sent = pipeline_parallel_bytes(cfg, 2, 4096, grad_accum_steps=8)
    assert sent == 2 * 8 * 2 * 4096 * 4096 * 2
    assert pipeline_parallel_bytes(cfg, 2, 4096, grad_accum_steps=8, tp=4, sp=True) == sent // 4


def test_communication_share_without_overlap() -> None:
    assert communication_share(1.0, 3.0) == 0.25
    assert communication_share(0.0, 3.0) == 0.0


@pytest.mark.parametrize(("call", "message"), [
    (lambda: bus_bandwidth_factor("broadcast", 2),
     "op must be one of 'all_reduce', 'all_gather', 'reduce_scatter'; got 'broadcast'"),
    (lambda: bus_bandwidth_factor("all_reduce", 0), "world_size must be a positive integer, got 0"),
    (lambda: algorithm_bandwidth(GIB, 0.0), "seconds must be a positive finite number, got 0.0"),
    (lambda: algorithm_bandwidth(-1, 1.0), "nbytes must be a non-negative finite number, got -1"),
    (lambda: ring_time_lower_bound("all_reduce", GIB, 2, 0),
     "link_bandwidth_bytes_per_s must be a positive finite number, got 0"),
    (lambda: ring_time_lower_bound("all_reduce", GIB, 2, 1e9, latency_seconds=-1e-6),
     "latency_seconds must be a non-negative finite number, got -1e-06"),
    (lambda: data_parallel_traffic(10, zero_stage=4),
     "zero_stage must be one of 0, 1, 2, 3; got 4"),
    (lambda: data_parallel_traffic(10, precision="int8"), "precision must be one of"),
    (lambda: data_parallel_traffic(0), "num_params must be a positive integer, got 0"),
    (lambda: ddp_gradient_bytes_per_micro_step(10, 4, grad_accum_steps=True),
     "grad_accum_steps must be a positive integer, got True"),
    (lambda: tensor_parallel_traffic(get_model("gpt2"), 1, 8, layers=0),
     "layers must be a positive integer, got 0"),
    (lambda: pipeline_parallel_bytes(get_model("gpt2"), 1, 8, sp="yes"),  # type: ignore[arg-type]
     "sp must be True or False, got 'yes'"),
    (lambda: communication_share(1.0, 0.0),
     "compute_seconds must be a positive finite number, got 0.0"),
    (lambda: StepTraffic(all_gather_bytes=-5),
     "StepTraffic.all_gather_bytes must be a non-negative integer, got -5"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
