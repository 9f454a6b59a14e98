"""Training steps of a GPT-style and a Llama-style model, with and without full activation
checkpointing: time, TFLOP/s, MFU, HFU, tokens/s and memory, each against its formula.

The models train as real runs do: fp32 master weights, bf16 autocast, fused AdamW, attention by
`scaled_dot_product_attention` (flash kernels on the GPU).
"""

from __future__ import annotations

import pytest
import torch

from harness.gate.results import Measurement
from harness.model import build_model, lm_loss, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.flops import flop_counter_flops
from harness.workloads.bounds import peak_flops_of
from harness.workloads.injections import inject
from harness.workloads.models import TransformerWorkload
from harness.workloads.tolerances import HOST_BOUND_TOLERANCE
from harness.workloads.training import (
    MEMORY_ESTIMATE_BAND,
    RECOMPUTE_CASES,
    TRAINING_PRECISION,
    TRAINING_WORKLOADS,
    make_optimizer,
    release_cuda_memory,
)

pytestmark = pytest.mark.gpu


def _measure_training(perf: Perf, workload: TransformerWorkload,
                      recompute: str, tolerance: float | None) -> Measurement:
    """Build, measure and drop the model; only metrics leave this function, so a failing
    assertion in the test cannot keep the model's memory alive into the next case."""
    cfg = workload.config
    model = build_model(cfg, device=perf.device, dtype=torch.float32,
                        checkpoint_activations=recompute == "full")
    optimizer = make_optimizer(model, fused=True)
    generator = torch.Generator(device=perf.device).manual_seed(0)
    inputs = random_batch(cfg, workload.batch_size, workload.seq_len, device=perf.device,
                          generator=generator)
    loss_fn = inject(model, lm_loss, perf.device)  # PERF_INJECT: a regression on purpose
    measured = perf.train_step(model, inputs, loss_fn, optimizer, config=cfg,
                               recompute=recompute, autocast_dtype=torch.bfloat16,
                               precision=TRAINING_PRECISION, optimizer_name="adamw",
                               peak_dtype="bf16",
                               tolerance=tolerance)
    del model, optimizer, inputs
    release_cuda_memory()
    return measured


@pytest.mark.parametrize("recompute", RECOMPUTE_CASES)
@pytest.mark.parametrize("model_name", list(TRAINING_WORKLOADS))
def test_training_step_matches_its_flop_and_memory_model(perf: Perf, released_memory: None,
                                                         model_name: str,
                                                         recompute: str) -> None:
    workload = TRAINING_WORKLOADS[model_name]
    peak_flops_of(perf.gpu, "bf16")  # MFU and HFU need the GPU's peak: fail early without it
    measured = _measure_training(perf, workload, recompute,
                                 HOST_BOUND_TOLERANCE.get(f"{model_name}-{recompute}"))

    mfu, hfu = measured["mfu"].median, measured["hfu"].median
    assert 0 < mfu <= hfu <= 1, (
        f"MFU {mfu:.3f} and HFU {hfu:.3f} must satisfy 0 < MFU <= HFU <= 1: model FLOPs never "
        f"exceed hardware FLOPs, and neither can exceed the peak")
    if recompute == "full":
        assert hfu > mfu, (
            f"with full recomputation the hardware does an extra forward of every layer, so "
            f"HFU ({hfu:.3f}) must exceed MFU ({mfu:.3f})")
    else:
        assert hfu == pytest.approx(mfu, rel=1e-9), (
            f"without recomputation hardware and model FLOPs are the same, so HFU ({hfu:.3f}) "
            f"must equal MFU ({mfu:.3f})")

    # FlopCounterMode on the GPU sees the fused attention kernels, whose backward it counts as
    # 2.5 x their forward; flop_counter_flops predicts exactly that count from the config.
    counted = measured["flops_per_step"].median
    predicted = flop_counter_flops(workload.config, workload.batch_size, workload.seq_len,
                                   recompute=recompute, fused_attention=True)
    assert counted == pytest.approx(predicted, rel=1e-9), (
        f"FlopCounterMode counted {counted:.6g} FLOPs in one step, the formula predicts "
        f"{predicted:.6g}: the model computes something the formulas do not describe")

    ratio = measured["memory_vs_estimate"].median
    band = MEMORY_ESTIMATE_BAND
    assert 1 - band <= ratio <= 1 + band, (
        f"peak allocated memory is {ratio:.3f} x training_memory's estimate for "
        f"{workload.config.name} at batch {workload.batch_size} x {workload.seq_len} "
        f"(recompute={recompute!r}, precision={TRAINING_PRECISION!r}); outside "
        f"1 +- {band} the formula misses or miscounts a term")
