"""Examples of measured tests, one per `perf` entry point: a GEMM, a training step, a dataloader.

The test body says what to measure; the `perf` fixture times it, records the metrics under
`<test id>::<metric>`, and after the test judges them against `baselines/<fingerprint>.json`.
Run on a GPU machine with `pytest -m gpu examples/`. To see the gate go red, make the work
honestly heavier with `PERF_EXAMPLE_EXTRA_WORK=1` (twice the real work per call: GEMM rows,
sequences per training step, CPU work per loaded sample; 0.25 is enough for the GPU-bound
GEMM and step): the metric ids stay the same, so the run is judged against the baseline of the
unchanged code.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from harness.measure.dataloader import window_size
from harness.model import build_model, lm_loss, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.config import TransformerConfig

pytestmark = pytest.mark.gpu

# Extra real work per call as a fraction of the normal work (0 = the unchanged example).
EXTRA_WORK = float(os.environ.get("PERF_EXAMPLE_EXTRA_WORK", "0"))

# 8192^3: about 1.4 ms of bf16 Tensor Core work on an H100, long enough that clock ramps and
# launch overhead stay far below the default tolerance (a 4096^3 GEMM of ~0.2 ms drifted by up to
# 14% between processes on an H200), small enough for any training GPU.
GEMM_SIZE = 8192

# GPT-2 small (124M parameters): about 40 ms per step at batch 8 x 1024 on an H200, so the
# default one-second budget still takes over 20 samples; smaller models drifted by up to 8%
# between processes.
SMALL_GPT = TransformerConfig(num_layers=12, hidden_size=768, num_heads=12, vocab_size=50257,
                              max_position_embeddings=1024, name="gpt2-example")
BATCH_SIZE = 8
SEQ_LEN = 1024

# A dataset of 64 token batches of the training shape; 2 workers and pinned memory, as a real
# input pipeline for a GPU would be set up (source 001, "DataLoader").
LOADER_BATCHES = 64
LOADER_STEPS = 32
# CPU work per sample (small matrix products, a stand-in for decoding and tokenizing): enough
# that the two workers, not inter-process plumbing, set the wait time.
SAMPLE_WORK = 8


class TokensWithCpuWork(Dataset):
    """Token sequences whose loading costs `work` rounds of real CPU work per sample."""

    def __init__(self, tokens: torch.Tensor, work: int) -> None:
        self.tokens = tokens
        self.work = work

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((128, 128), 1.0 / (index + 1))
        for _ in range(self.work):
            x = torch.tanh(x @ x)
        row = self.tokens[index]
        return row[:-1] + 0 * int(x[0, 0] > 2), row[1:]


def test_bf16_gemm_stays_below_the_dense_peak(perf: Perf) -> None:
    n = GEMM_SIZE
    generator = torch.Generator(device=perf.device).manual_seed(0)
    # Random operands: a GEMM of zeros draws less power and runs at higher clocks than real data.
    a = torch.randn(n, n, device=perf.device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(n, n, device=perf.device, dtype=torch.bfloat16, generator=generator)
    out = torch.empty(n, n, device=perf.device, dtype=torch.bfloat16)
    # The extra work is a GEMM over a slice of the rows: EXTRA_WORK x the FLOPs of the real one.
    extra_rows = round(EXTRA_WORK * n)
    extra_out = torch.empty(max(extra_rows, 1), n, device=perf.device, dtype=torch.bfloat16)

    def gemm() -> None:
        torch.mm(a, b, out=out)
        if extra_rows:
            torch.mm(a[:extra_rows], b, out=extra_out)

    measured = perf.time(gemm, name="gemm_bf16", flops=2 * n**3)

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
    # Extra work: more sequences in the same step (the step time is what regresses).
    batch_size = round(BATCH_SIZE * (1 + EXTRA_WORK))
    inputs = random_batch(SMALL_GPT, batch_size, SEQ_LEN, device=perf.device,
                          generator=generator)
    # GPT-2 small reaches only ~15% MFU in eager mode: the host launching kernels sets much of
    # the step time, which moved by up to 10% between runs on an H200; hence 15%.
    measured = perf.train_step(model, inputs, lm_loss, optimizer, config=SMALL_GPT,
                               autocast_dtype=torch.bfloat16, precision="bf16-autocast",
                               name_prefix="gpt_small_", tolerance=0.15)

    mfu, hfu = measured["gpt_small_mfu"].median, measured["gpt_small_hfu"].median
    # Without recomputation model and hardware FLOPs are equal, and neither exceeds the peak.
    assert 0 < mfu <= hfu <= 1, f"MFU {mfu:.3f}, HFU {hfu:.3f}: expected 0 < MFU <= HFU <= 1"
    tokens_per_s = measured["gpt_small_tokens_per_s"].median
    step_time = measured["gpt_small_step_time"].median
    assert tokens_per_s == pytest.approx(batch_size * SEQ_LEN / step_time, rel=0.05)


def test_pinned_token_loader(perf: Perf) -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, SMALL_GPT.vocab_size, (LOADER_BATCHES * BATCH_SIZE, SEQ_LEN + 1),
                           generator=generator)
    dataset = TokensWithCpuWork(tokens, work=round(SAMPLE_WORK * (1 + EXTRA_WORK)))
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=2, pin_memory=True)
    # Loader workers compete with everything else on the host: between runs on one H100 their
    # wait time moved by up to 29%, hence a tolerance of 50% (a doubled cost still fails).
    measured = perf.dataloader(loader, steps=LOADER_STEPS, name_prefix="tokens_",
                               tolerance=0.5)

    # One sample per window of whole worker cycles (see measure_dataloader), all steps used.
    assert measured["tokens_wait_time"].count == LOADER_STEPS // window_size(LOADER_STEPS, 2)
    assert measured["tokens_h2d_bandwidth"].median > 0

