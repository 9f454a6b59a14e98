"""Training steps of the models people train today, through `perf.train_step` unchanged: Hugging
Face causal LMs built from their configs (a Llama-3-style model with grouped-query attention, a
Qwen3-style one with head_dim != hidden/heads, a small Mixtral-style mixture of experts), the
Llama-3-style model under `torch.compile`, and a timm ResNet-50.

Each reports step time, TFLOP/s, MFU (analytic model FLOPs of the active parameters), HFU and
peak memory beside its estimate, as perf_tests/test_training.py does for the harness's own
models, and checks the FLOPs FlopCounterMode counted against the formula that predicts them.
The models train as real runs do: fp32 weights, bf16 autocast, fused AdamW, SDPA attention.
transformers and timm are optional: their tests skip, saying so, where they are not installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.gate.results import Measurement
from harness.measure.flop_count import count_flops
from harness.model import lm_loss, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.config import TransformerConfig
from harness.theory.flops import flop_counter_flops
from harness.theory.memory.training import training_memory
from harness.workloads.bounds import peak_flops_of
from harness.workloads.real_models import (
    COMPILED_LAYERS,
    HF_MEMORY_ESTIMATE_BAND,
    HF_WORKLOADS,
    LLAMA3_1B,
    RESNET50,
    HFWorkload,
)
from harness.workloads.training import TRAINING_PRECISION, make_optimizer, release_cuda_memory

pytestmark = pytest.mark.gpu


def _measure_hf(perf: Perf, workload: HFWorkload, *, compiled: bool = False,
                num_layers: int | None = None) -> Measurement:
    """Build (with `num_layers` of the config's layers, if given), measure and drop the model;
    only metrics leave this function, so a failing assertion in the test cannot keep the
    model's memory alive into the next case."""
    pytest.importorskip("transformers", reason="the Hugging Face models need transformers")
    cfg = _config(workload, num_layers)
    model = workload.build(perf.device, **({} if num_layers is None
                                            else {"num_hidden_layers": num_layers}))
    optimizer = make_optimizer(model, fused=True)
    measured_model = torch.compile(model) if compiled else model
    generator = torch.Generator(device=perf.device).manual_seed(0)
    inputs = random_batch(cfg, workload.batch_size, workload.seq_len, device=perf.device,
                          generator=generator)
    measured = perf.train_step(measured_model, inputs, lm_loss, optimizer, config=cfg,
                               autocast_dtype=torch.bfloat16, precision=TRAINING_PRECISION,
                               optimizer_name="adamw", peak_dtype="bf16")
    del model, measured_model, optimizer, inputs
    release_cuda_memory()
    return measured


def _config(workload: HFWorkload, num_layers: int | None) -> TransformerConfig:
    cfg = workload.config()
    return cfg if num_layers is None else cfg.replace(num_layers=num_layers)


def _check_flops(measured: Measurement, workload: HFWorkload, num_layers: int | None = None
                 ) -> None:
    cfg = _config(workload, num_layers)
    mfu, hfu = measured["mfu"].median, measured["hfu"].median
    assert 0 < mfu <= hfu <= 1, (
        f"MFU {mfu:.3f} and HFU {hfu:.3f} must satisfy 0 < MFU <= HFU <= 1")
    assert hfu == pytest.approx(mfu, rel=1e-9), (
        f"without recomputation hardware and model FLOPs are the same, so HFU ({hfu:.3f}) "
        f"must equal MFU ({mfu:.3f})")
    # FlopCounterMode counts the fused attention's backward as 2.5 x its forward, every query
    # head under GQA, and the experts' grouped GEMMs token by token: flop_counter_flops
    # predicts exactly that count from the config.
    counted = measured["flops_per_step"].median
    predicted = flop_counter_flops(cfg, workload.batch_size, workload.seq_len,
                                   fused_attention=True)
    # Within 1e-6, not exactly: on an H200 (torch 2.11, 2026-12-02) every step counted
    # head_dim x seq_len FLOPs more than the formula (131072 of 3.4e13 for the Llama-3 shape,
    # 65536 for the Mixtral one): Hugging Face's rotary embedding computes its angles as a
    # matmul, inv_freq (head_dim / 2) @ position_ids (seq_len), 2 FLOPs each, once per forward.
    # A model change moves the count by far more.
    assert counted == pytest.approx(predicted, rel=1e-6), (
        f"FlopCounterMode counted {counted:.6g} FLOPs in one step of {cfg.name}, the formula "
        f"predicts {predicted:.6g}: {measured['flops_per_step'].note}")


def _hf_memory_estimate(workload: HFWorkload) -> int:
    """The memory estimate of Hugging Face's eager blocks (`training_memory`'s
    implementation="huggingface": Python RMSNorm keeping its fp32 output, K and V at their own
    width under SDPA's enable_gqa, fp32 query/key-norm copies and grouped-GEMM experts), in
    bytes; its parts are those of `training_memory(...).parts`."""
    estimate = training_memory(workload.config(), workload.batch_size, workload.seq_len,
                               precision=TRAINING_PRECISION, optimizer="adamw",
                               dropout=False, implementation="huggingface")
    return int(estimate.total)


@pytest.mark.parametrize("model_name", list(HF_WORKLOADS))
def test_hugging_face_training_step_matches_its_flop_and_memory_model(
        perf: Perf, released_memory: None, model_name: str) -> None:
    workload = HF_WORKLOADS[model_name]
    peak_flops_of(perf.gpu, "bf16")  # MFU and HFU need the GPU's peak: fail early without it
    measured = _measure_hf(perf, workload)
    _check_flops(measured, workload)

    peak = measured["peak_allocated_bytes"].median
    estimate = _hf_memory_estimate(workload)
    ratio = perf.metric("peak_vs_hf_estimate", peak / estimate, unit="ratio", better="lower",
                        kind="memory", theory=1.0).median
    band = HF_MEMORY_ESTIMATE_BAND
    assert 1 - band <= ratio <= 1 + band, (
        f"peak allocated memory is {ratio:.3f} x the Hugging Face estimate for {workload.name} "
        f"at batch {workload.batch_size} x {workload.seq_len}; outside 1 +- {band} the formula "
        f"misses or miscounts a term: {measured['memory_vs_estimate'].note}")


def test_compiled_hugging_face_llama_counts_grouped_query_attention(
        perf: Perf, released_memory: None) -> None:
    peak_flops_of(perf.gpu, "bf16")
    measured = _measure_hf(perf, LLAMA3_1B, compiled=True, num_layers=COMPILED_LAYERS)
    # The compiled graph runs the same GQA flash kernels and cuBLAS GEMMs as eager mode.
    _check_flops(measured, LLAMA3_1B, num_layers=COMPILED_LAYERS)
    assert measured["peak_allocated_bytes"].median > 0


def _resnet_forward_flops(model: torch.nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs of the whole model, forward FLOPs of its stem convolution) counted on one
    image batch without gradients."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        _, whole = count_flops(lambda: model(images))
        _, stem = count_flops(lambda: model.conv1(images))  # type: ignore[operator]
    return whole.total, stem.total


def test_timm_resnet50_training_step_counts_three_forward_passes(
        perf: Perf, released_memory: None) -> None:
    pytest.importorskip("timm", reason="the ResNet-50 step needs timm")
    peak = peak_flops_of(perf.gpu, "bf16")
    workload = RESNET50
    model = workload.build(perf.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = workload.batch(perf.device)
    forward, stem = _resnet_forward_flops(model, images)
    measured = perf.train_step(model, (images, labels), F.cross_entropy, optimizer,
                               autocast_dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    del model, optimizer, images, labels
    release_cuda_memory()

    # No recomputation, no attention: the counted FLOPs are the model's, so MFU = HFU.
    seconds = measured["step_time"].samples
    counted = measured["flops_per_step"].median
    perf.metric("mfu", [counted / s / peak for s in seconds], unit="ratio", better="higher",
                kind="throughput")
    perf.metric("hfu", [counted / s / peak for s in seconds], unit="ratio", better="higher",
                kind="throughput")
    # Backward costs two forwards (input and weight gradients), except that the stem needs no
    # gradient of its input images.
    assert counted == 3 * forward - stem, (
        f"one step counted {counted:.6g} FLOPs; 3 x the forward's {forward:.6g} less the stem's "
        f"input gradient ({stem:.6g}) is {3 * forward - stem:.6g}")
    # fp32 weights, gradients and SGD momentum: 12 bytes per parameter at least.
    held = measured["peak_allocated_bytes"].median
    assert held >= 12 * parameters, (
        f"peak allocated {held:.6g} B is below the 12 B per parameter that the weights, "
        f"gradients and momentum of {parameters} parameters hold")
