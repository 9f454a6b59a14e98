"""Training workloads of the suite (GPT-style and Llama-style steps, a GPU-bound step of two
Llama-2-7B layers, a batch sweep for memory), and one training step as the measurements take it."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from harness.measure.memory import release_cached_memory
from harness.model import lm_loss
from harness.theory.zoo import get_model
from harness.workloads.injections import adamw_options
from harness.workloads.models import GPT_STYLE, LLAMA_STYLE, TransformerWorkload

# GPT-2 medium at batch 8 x its full 1024-token context = 8192 tokens per step: 19.8 TFLOP of
# model FLOPs (train_flops), so 40-80 ms per step on an H100 at the 25-50% MFU models of this
# size reach; ~20 GB at the peak, far inside 80 GB.
GPT_TRAINING = TransformerWorkload(GPT_STYLE, batch_size=8, seq_len=1024)

# The Llama-style model at batch 4 x 2048 tokens = 8192 tokens per step like the GPT case, with
# a longer context for attention: 19.9 TFLOP, 40-80 ms per step.
LLAMA_TRAINING = TransformerWorkload(LLAMA_STYLE, batch_size=4, seq_len=2048)

# A step the GPU bounds, for measurements that must not time the host: Llama-2-7B's layer shapes
# (hidden 4096, 32 heads, SwiGLU 11008, 32000-token vocabulary, untied), two of its 32 layers,
# batch 8 x 1024 tokens; 667M parameters, 27.2 TFLOP of model FLOPs per step. On a 2-H200 host
# (2026-11-21, torch.profiler over three steps) the host made its 224 kernel launches per step
# in 12.5 ms of a 60 ms step and the GPU idled 1.5% of the time. LLAMA_TRAINING's 24 narrow
# layers make 1,918 launches per step: the host took 65-75 ms to issue a 67 ms step's
# kernels, the GPU idled 37-57%, and under DDP (more host work per step) the step took 112-124
# ms, bound by Python, not by communication.
LLAMA_7B_TWO_LAYERS = dataclasses.replace(get_model("llama-2-7b"), num_layers=2,
                                          name="llama-2-7b-2-layers")
GPU_BOUND_TRAINING = TransformerWorkload(LLAMA_7B_TWO_LAYERS, batch_size=8, seq_len=1024)

TRAINING_WORKLOADS: dict[str, TransformerWorkload] = {
    "gpt": GPT_TRAINING,
    "llama": LLAMA_TRAINING,
}

# Activation checkpointing cases: none, and full (every block recomputed in backward).
RECOMPUTE_CASES: tuple[str, ...] = ("none", "full")

# Learning rate of the measured AdamW: any small value; the steps train on random tokens, and a
# small rate keeps the weights (and so the numerics) close to their initial values.
TRAINING_LR = 1e-4

# The memory model's precision for these runs: torch.autocast over fp32 parameters with eager
# activations (fp32 weights as the master copy, fp32 gradients, two fp32 AdamW moments: 16 bytes
# per parameter, plus the bf16 weight copies the matmuls save for backward), whose estimate is
# the peak over the phases of a step - for these workloads the loss, where the fp32 logits
# buffers meet every saved activation (end of forward or start of backward).
TRAINING_PRECISION = "bf16-autocast"

# The memory estimate must match the measured peak within 15%: the formula ignores allocator
# rounding, the cuBLAS workspace and a few small transients (norm statistics, RoPE tables),
# which stay within a few percent; anything outside 15% means a term is missing or wrong.
MEMORY_ESTIMATE_BAND = 0.15

# Peak memory of one training step of the Llama-style model at 2048 tokens per sequence for
# these batch sizes: activations double with each, 9 GB to 25 GB by training_memory, inside
# 80 GB even if eager autocast keeps half as much again.
MEMORY_SWEEP_BATCHES: tuple[int, ...] = (1, 2, 4, 8)
MEMORY_SWEEP = TransformerWorkload(LLAMA_STYLE, batch_size=1, seq_len=2048)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                  inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One step as `harness.measure.train_step` takes it: zero_grad(set_to_none=True), forward
    and loss under bf16 autocast on CUDA (none on CPU), backward, optimizer step."""
    tokens, targets = inputs
    device_type = tokens.device.type
    optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if device_type == "cuda" else contextlib.nullcontext())
    with autocast:
        loss = lm_loss(model(tokens), targets)
    torch.autograd.backward(loss)  # the typed spelling of loss.backward()
    optimizer.step()


def release_cuda_memory() -> None:
    """Free what earlier work left behind (unreachable tensors, cached allocator blocks) and
    start a new peak, so one measurement's memory never shows in the next."""
    release_cached_memory()
    # torch leaves is_initialized unannotated.
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.reset_peak_memory_stats()


def make_optimizer(model: nn.Module, *, fused: bool) -> torch.optim.AdamW:
    """AdamW as large-model training uses it (two fp32 states per parameter); `fused` picks the
    single-kernel CUDA implementation, which needs the parameters on the GPU (unless
    PERF_INJECT=foreach_adamw asks for the for-loop one: `harness.workloads.injections`)."""
    return torch.optim.AdamW(model.parameters(), lr=TRAINING_LR, **adamw_options(fused=fused))
