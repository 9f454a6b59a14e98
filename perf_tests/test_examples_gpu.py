"""Examples of measured tests, one per `perf` entry point: a GEMM, a training step, a dataloader.

The test body says what to measure; the `perf` fixture times it, records the metrics under
`<test id>::<metric>`, and after the test judges them against `baselines/<fingerprint>.json`.
Run on a GPU machine with `pytest -m gpu perf_tests/test_examples_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from harness.config import TransformerConfig
from harness.fixture import Perf
from harness.model import build_model, lm_loss, random_batch

pytestmark = pytest.mark.gpu

# 4096^3: large enough that a bf16 GEMM runs at the Tensor Cores' sustained rate on an A100 or
# H100 (hundreds of microseconds; launch overhead below 1%), small enough for any training GPU.
GEMM_SIZE = 4096

# A small GPT-2-style model: 4 layers of width 512 train in a few milliseconds per step, so the
# measurement fits in the default one-second budget; the vocabulary is GPT-2's.
SMALL_GPT = TransformerConfig(num_layers=4, hidden_size=512, num_heads=8, vocab_size=50257,
                              max_position_embeddings=1024, name="gpt-small-example")
BATCH_SIZE = 8
SEQ_LEN = 512

# A dataset of 64 token batches of the training shape; 2 workers and pinned memory, as a real
# input pipeline for a GPU would be set up (source 001, "DataLoader").
LOADER_BATCHES = 64
LOADER_STEPS = 32


def test_bf16_gemm_stays_below_the_dense_peak(perf: Perf) -> None:
    n = GEMM_SIZE
    generator = torch.Generator(device=perf.device).manual_seed(0)
    # Random operands: a GEMM of zeros draws less power and runs at higher clocks than real data.
    a = torch.randn(n, n, device=perf.device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=perf.device, dtype=torch.bfloat16, generator=generator)
    out = torch.empty(n, n, device=perf.device, dtype=torch.bfloat16)
    measured = perf.time(lambda: torch.mm(a, b, out=out), name="gemm_bf16", flops=2 * n**3)

    achieved = measured["gemm_bf16_tflops"].median * 1e12
    assert perf.gpu is not None, "this GPU is not in the spec table: its peak is unknown"
    peak = perf.gpu.peak_flops("bf16")
    # Nothing runs faster than the dense peak: above it, the clock or the FLOP count is wrong.
    assert achieved <= peak, (f"{achieved / 1e12:.1f} TFLOP/s measured exceeds the dense bf16 "
                              f"peak of {perf.gpu.name} ({peak / 1e12:.1f} TFLOP/s)")


def test_small_gpt_training_step(perf: Perf) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL_GPT, device=perf.device, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator(device=perf.device).manual_seed(0)
    inputs = random_batch(SMALL_GPT, BATCH_SIZE, SEQ_LEN, device=perf.device,
                          generator=generator)
    measured = perf.train_step(model, inputs, lm_loss, optimizer, config=SMALL_GPT,
                               autocast_dtype=torch.bfloat16, name_prefix="gpt_small_")

    mfu, hfu = measured["gpt_small_mfu"].median, measured["gpt_small_hfu"].median
    # Without recomputation model and hardware FLOPs are equal, and neither exceeds the peak.
    assert 0 < mfu <= hfu <= 1, f"MFU {mfu:.3f}, HFU {hfu:.3f}: expected 0 < MFU <= HFU <= 1"
    tokens_per_s = measured["gpt_small_tokens_per_s"].median
    step_time = measured["gpt_small_step_time"].median
    assert tokens_per_s == pytest.approx(BATCH_SIZE * SEQ_LEN / step_time, rel=0.05)


def test_pinned_token_loader(perf: Perf) -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SMALL_GPT.vocab_size, (LOADER_BATCHES * BATCH_SIZE, SEQ_LEN + 1),
                           generator=generator)
    dataset = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=2, pin_memory=True)
    measured = perf.dataloader(loader, steps=LOADER_STEPS, name_prefix="tokens_")

    assert measured["tokens_wait_time"].count == LOADER_STEPS
    assert measured["tokens_h2d_bandwidth"].median > 0
