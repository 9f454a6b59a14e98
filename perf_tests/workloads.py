"""Sizes and builders of the reference GPU suite: GEMM shapes, transformer workloads, a KV-cached
decode, a synthetic image pipeline and host-to-device copy buffers.

The measured tests in this folder only say what to measure; every shape and size they use lives
here, each with the reason it was chosen. The budget is the whole suite in under 3 minutes on one
80 GB H100, startup included, so every workload takes milliseconds per call and fits with room to
spare. Everything here also runs on CPU (small shapes), which is how tests/test_suite_workloads.py
checks it without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.measure.memory import release_cached_memory
from harness.model import ROPE_THETA, DecoderLM, lm_loss
from harness.theory.config import TransformerConfig, get_model
from harness.theory.params import param_breakdown

# --------------------------------------------------------------------------------------------
# GEMMs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmShape:
    """A matrix product C = A @ B with A of m x k and B of k x n (BLAS naming)."""

    name: str
    m: int
    n: int
    k: int

    def __post_init__(self) -> None:
        for field in ("m", "n", "k"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GemmShape {self.name!r}: {field} must be a positive integer, "
                                 f"got {value!r}")

    @property
    def flops(self) -> int:
        """2*m*n*k: one multiply and one add per term of every output element."""
        return 2 * self.m * self.n * self.k


# 8192^3 is the usual "peak" probe: large enough that every SM is busy for many waves and the
# kernel runs ~1.4 ms in bf16 on an H100 (1.1 TFLOP), long against launch overhead and event
# resolution, yet three 128-256 MiB operands fit any 80 GB GPU.
SQUARE_GEMM = GemmShape("square_8192", 8192, 8192, 8192)
# fp32 without tensor cores runs at ~67 TFLOP/s on an H100 SXM: 8192^3 would take ~20 ms per
# call, so 4096^3 (~2.5 ms, still 1024 output tiles of 128x128, ~8 waves over 132 SMs) keeps
# the suite fast.
FP32_SQUARE_GEMM = GemmShape("square_4096", 4096, 4096, 4096)

# Llama-2-7B layer GEMMs for 4096 tokens (e.g. batch 1 x its 4096-token context): the shapes a
# 7B training or prefill step spends most of its time in. Derived from the zoo config, not typed.
LLAMA_7B = get_model("llama-2-7b")
LLAMA_7B_TOKENS = 4096
LLAMA_7B_LAYER_GEMMS: tuple[GemmShape, ...] = (
    # Fused Q, K and V projection: h -> h + 2 * kv_hidden (12288 for MHA).
    GemmShape("qkv", LLAMA_7B_TOKENS, LLAMA_7B.hidden_size + 2 * LLAMA_7B.kv_hidden_size,
              LLAMA_7B.hidden_size),
    # MLP up (and, with the same shape, gate) projection: h -> d_ff = 11008.
    GemmShape("mlp_up", LLAMA_7B_TOKENS, LLAMA_7B.ffn_size, LLAMA_7B.hidden_size),
    # MLP down projection: d_ff -> h.
    GemmShape("mlp_down", LLAMA_7B_TOKENS, LLAMA_7B.hidden_size, LLAMA_7B.ffn_size),
)

# SwiGLU width (source 001, "SwiGLU-based MLP"): the paper's 8/3*h gives d_ff = 10922 at h=4096,
# which is not a multiple of 64 and breaks every tile alignment; 10944 (= 171 * 64), only 22
# wider, was the fastest nearby width in the source's H100 search (398 vs 273 TFLOP/s).
SWIGLU_HIDDEN = 4096
SWIGLU_TOKENS = 4096
SWIGLU_MISALIGNED_FFN = int(8 * SWIGLU_HIDDEN / 3)
SWIGLU_ALIGNED_FFN = 10944
SWIGLU_MISALIGNED = GemmShape(f"swiglu_up_{SWIGLU_MISALIGNED_FFN}", SWIGLU_TOKENS,
                              SWIGLU_MISALIGNED_FFN, SWIGLU_HIDDEN)
SWIGLU_ALIGNED = GemmShape(f"swiglu_up_{SWIGLU_ALIGNED_FFN}", SWIGLU_TOKENS, SWIGLU_ALIGNED_FFN,
                           SWIGLU_HIDDEN)
# The aligned width must not be slower than the misaligned one beyond run-to-run noise: 3% is
# about three times the spread of a 1 s GEMM measurement on a quiet H100 (the timing policy's
# 1% target spread), so only a real inversion fails.
SWIGLU_ALIGNED_NOISE_MARGIN = 0.97

# Storage dtype of each GEMM precision, and the key of that precision in GPUSpec.peak_flops.
# "tf32" stores fp32 and lets cuBLAS use TF32 tensor cores (see `tf32_matmul`).
GEMM_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "tf32": torch.float32,
    "fp32": torch.float32,
}

# FP8 tensor cores arrived with Ada (sm_89) and Hopper (sm_90); torch._scaled_mm needs them.
FP8_MIN_CAPABILITY = (8, 9)


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 tensor cores for fp32 matmuls inside the block, restoring the
    previous setting afterwards, even when the block raises."""
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True or False, got {enabled!r}")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def gemm_operands(shape: GemmShape, dtype: torch.dtype, device: str | torch.device,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normal A (m x k) and B (k x n): never zeros, which some GPUs multiply faster
    (less switching power, so higher clocks)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(shape.m, shape.k, dtype=dtype, device=device, generator=generator)
    b = torch.randn(shape.k, shape.n, dtype=dtype, device=device, generator=generator)
    return a, b


@dataclass(frozen=True)
class Fp8Operands:
    """Inputs of `torch._scaled_mm`: e4m3 A (row-major), e4m3 B (column-major, as cuBLASLt's
    FP8 kernels require) and their per-tensor dequantisation scales as fp32 scalar tensors."""

    a: torch.Tensor
    b: torch.Tensor
    scale_a: torch.Tensor
    scale_b: torch.Tensor


# Largest finite value of float8_e4m3fn: per-tensor scales map each operand's amax onto it.
E4M3_MAX = 448.0


def fp8_operands(shape: GemmShape, device: str | torch.device, seed: int = 0) -> Fp8Operands:
    """Random normal operands quantised to e4m3 with per-tensor scales (amax -> 448), the way
    FP8 training recipes (Transformer Engine's delayed/current scaling) feed `_scaled_mm`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(shape.m, shape.k, dtype=torch.float32, device=device, generator=generator)
    # B is created as n x k and transposed: a k x n view with strides (1, k), i.e. column-major.
    b_t = torch.randn(shape.n, shape.k, dtype=torch.float32, device=device, generator=generator)
    scale_a = a.abs().max() / E4M3_MAX
    scale_b = b_t.abs().max() / E4M3_MAX
    a8 = (a / scale_a).to(torch.float8_e4m3fn)
    b8 = (b_t / scale_b).to(torch.float8_e4m3fn).t()
    return Fp8Operands(a=a8, b=b8, scale_a=scale_a.float(), scale_b=scale_b.float())


def fp8_matmul(ops: Fp8Operands) -> torch.Tensor:
    """A @ B in FP8 with bf16 output, dequantised by the two scales."""
    return torch._scaled_mm(ops.a, ops.b, scale_a=ops.scale_a, scale_b=ops.scale_b,
                            out_dtype=torch.bfloat16)


def fp8_unavailable_reason(capability: tuple[int, int]) -> str | None:
    """Why this GPU cannot run FP8 GEMMs (None when it can), from its compute capability."""
    if tuple(capability) >= FP8_MIN_CAPABILITY:
        return None
    major, minor = FP8_MIN_CAPABILITY
    return (f"FP8 GEMMs need compute capability >= {major}.{minor} (Ada or Hopper); this GPU is "
            f"sm_{capability[0]}{capability[1]}")


def peak_flops_of(gpu: object, dtype: str) -> float:
    """Dense peak FLOP/s of the GPU for `dtype`; a clear error when the GPU is not in the
    table (a fraction of peak needs the right peak, never a guessed one)."""
    if gpu is None:
        raise ValueError(f"the GPU is not in harness.theory.hardware's table, so its {dtype} peak is "
                         f"unknown; register it with harness.theory.hardware.register_gpu(GPUSpec(...))")
    return float(gpu.peak_flops(dtype))  # type: ignore[attr-defined]


def memory_bandwidth_of(gpu: object) -> float:
    """Datasheet memory bandwidth (bytes/s) of the GPU; a clear error when it is not in the
    table."""
    if gpu is None:
        raise ValueError("the GPU is not in harness.theory.hardware's table, so its memory bandwidth "
                         "is unknown; register it with harness.theory.hardware.register_gpu(GPUSpec(...))")
    return float(gpu.memory_bandwidth_bytes_per_s)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Transformer workloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerWorkload:
    """A model config with the batch and sequence length it is measured at."""

    config: TransformerConfig
    batch_size: int
    seq_len: int

    def __post_init__(self) -> None:
        for field in ("batch_size", "seq_len"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.seq_len > self.config.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings} of {self.config.name!r}")

    @property
    def tokens(self) -> int:
        """Tokens per step: batch_size * seq_len."""
        return self.batch_size * self.seq_len

    def with_batch(self, batch_size: int) -> TransformerWorkload:
        """The same model and sequence length at another batch size."""
        return TransformerWorkload(self.config, batch_size, self.seq_len)


# GPT-style: GPT-2 medium as published (355M parameters, 24 x 1024, learned positions, GELU,
# LayerNorm, tied embeddings). Batch 8 x its full 1024-token context = 8192 tokens per step:
# 19.8 TFLOP of model FLOPs (train_flops), so 40-80 ms per step on an H100 at the 25-50% MFU
# models of this size reach; ~20 GB at the peak, far inside 80 GB.
GPT_STYLE = get_model("gpt2-medium")
GPT_TRAINING = TransformerWorkload(GPT_STYLE, batch_size=8, seq_len=1024)

# Llama-style at the same scale: 24 x 1024 with 16 query heads sharing 4 KV heads (GQA 4:1),
# SwiGLU at the LLaMA default width (2816 = 8/3*h rounded up to 256), RoPE, RMSNorm, no biases,
# untied 32000-token output layer: 336M parameters. Batch 4 x 2048 tokens = 8192 tokens per
# step like the GPT case, with a longer context for attention: 19.9 TFLOP, 40-80 ms per step.
LLAMA_STYLE = TransformerConfig(
    num_layers=24, hidden_size=1024, num_heads=16, num_kv_heads=4, vocab_size=32000,
    mlp="swiglu", tied_embeddings=False, bias=False, norm="rmsnorm", position="rope",
    max_position_embeddings=2048, name="llama-style-336m")
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

# Host-bound measurements: their time follows the host CPU (Python, kernel launches, worker
# processes) as much as the GPU, and the host of a shared GPU runner varies far more between runs
# than the GPU does. Three runs of this suite on one H100 (2026-11-21: a recording and two
# verifications, minutes apart) moved GEMMs and the GPU-bound train steps by at most 3.6%, but:
#   - llama-full step time: medians 110, 114 and 163 ms (activation checkpointing re-launches
#     every block's small kernels; the eager Llama-style step reaches only ~18% MFU);
#   - one-token decode: 9.3, 11.3 and 9.6 ms, and in a second set of three runs 9.5, 16.4 and
#     16.7 ms (one token per step of an eager model: launch-bound by nature; it measures the
#     host, and a CUDA-graph decode would be needed to measure the GPU);
#   - DataLoader worker throughput: up to +65% (workers compete with everything else on the host).
# and between two recordings on one H200 (2026-11-21), under the 2% default tolerance:
#   - gpt-full step time: +4.1%, with a 10.8% spread (IQR/median) within the run;
#   - 256 MiB copy from pageable host memory: +6.4% (staged through a host buffer by the CPU);
#   - the misaligned/aligned SwiGLU GEMM ratio: +2.3% (it carries the noise of two GEMMs).
# Their tolerances sit just above that spread: such a gate still catches what matters there
# (recomputation or a fused path lost, workers gone to 0, decode 2x slower), not 5% drifts.
HOST_BOUND_TOLERANCE: dict[str, float] = {
    "llama-full": 0.5,
    "gpt-full": 0.15,
    "decode": 1.0,
    "dataloader_workers": 0.7,
    "h2d_pageable": 0.15,
    "gemm_ratio": 0.05,
}

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

# Inference of the Llama-style model in bf16. Prefill: 4 x 2048 tokens, 5.8 TFLOP (causal, with
# the output layer), ~10-15 ms on an H100. Decode: 8 sequences with 2048 tokens of context each, a
# 384 MiB KV cache; a step reads 1.0 GB (0.6 GB of weights, 0.4 GB of cache), 0.3 ms at the
# H100's 3.35 TB/s, though an eager decode step is bound by kernel launches at a few ms.
PREFILL = TransformerWorkload(LLAMA_STYLE, batch_size=4, seq_len=2048)
DECODE_BATCH = 8
DECODE_CONTEXT = 2047  # the token decoded at position 2047 is the 2048th: the cache is full
DECODE_CACHE = TransformerWorkload(LLAMA_STYLE, batch_size=DECODE_BATCH, seq_len=2048)


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
    loss.backward()
    optimizer.step()


def release_cuda_memory() -> None:
    """Free what earlier work left behind (unreachable tensors, cached allocator blocks) and
    start a new peak, so one measurement's memory never shows in the next."""
    release_cached_memory()
    if torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def make_optimizer(model: nn.Module, *, fused: bool) -> torch.optim.AdamW:
    """AdamW as large-model training uses it (two fp32 states per parameter); `fused` picks the
    single-kernel CUDA implementation, which needs the parameters on the GPU."""
    return torch.optim.AdamW(model.parameters(), lr=TRAINING_LR, fused=fused)


def decode_weight_bytes(cfg: TransformerConfig, bytes_per_param: int = 2) -> int:
    """Bytes of weights one decode step must read: every parameter except the input embedding
    table and learned positions, of which a step reads only one row per sequence (a tied table
    is read in full by the output layer, so it counts)."""
    parts = param_breakdown(cfg)
    skipped = parts["position"] + (0 if cfg.tied_embeddings else parts["embedding"])
    return (cfg.num_params() - skipped) * bytes_per_param


# --------------------------------------------------------------------------------------------
# KV cache and a KV-cached forward using the harness model's own weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer in one contiguous tensor of shape
    (layers, 2, batch, kv_heads, capacity, head_dim); `keys(i)`/`values(i)` are views."""

    storage: torch.Tensor

    @property
    def capacity(self) -> int:
        """Tokens per sequence the cache can hold."""
        return int(self.storage.shape[4])

    @property
    def nbytes(self) -> int:
        """Bytes of the whole cache."""
        return self.storage.numel() * self.storage.element_size()

    def keys(self, layer: int) -> torch.Tensor:
        """Keys of one layer, (batch, kv_heads, capacity, head_dim), a view."""
        return self.storage[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        """Values of one layer, (batch, kv_heads, capacity, head_dim), a view."""
        return self.storage[layer, 1]


def allocate_kv_cache(cfg: TransformerConfig, batch_size: int, capacity: int, *,
                      device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> KVCache:
    """An uninitialised KV cache for `batch_size` sequences of up to `capacity` tokens.

    One allocation rather than 2 per layer: the caching allocator then counts exactly
    numel * element_size (a multiple of 512 bytes here), so the allocated-memory delta can be
    compared with `kv_cache_bytes` to the byte.
    """
    for name, value in (("batch_size", batch_size), ("capacity", capacity)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    storage = torch.empty(cfg.num_layers, 2, batch_size, cfg.kv_heads, capacity, cfg.head_dim,
                          dtype=dtype, device=device)
    return KVCache(storage)


def _rope_tables(positions: torch.Tensor, head_dim: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles at absolute `positions`, (n, head_dim) each, with the
    same frequencies, channel layout and precision as harness.model.apply_rope."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=positions.device,
                                                  dtype=torch.float32) / head_dim))
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (batch, heads, n, head_dim): channel i pairs with i + head_dim/2."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def forward_with_cache(model: DecoderLM, input_ids: torch.Tensor, cache: KVCache,
                       start: int) -> torch.Tensor:
    """Logits of the last position, (batch, vocab), for `input_ids` placed at positions
    start..start+n-1, writing their keys and values into `cache` and attending to positions
    0..start+n-1.

    Two cases, as serving does them: a prefill (start == 0, any n; causal attention within the
    prompt) and a decode step (n == 1 at any start; the token attends to every cached position).
    Grouped-query heads attend to their shared KV head by reshaping the queries, so a decode
    step reads the cache once and never copies it. Supports RoPE and learned positions (not
    ALiBi); dropout is off, as in inference.
    """
    cfg = model.config
    if cfg.position == "alibi":
        raise ValueError("forward_with_cache supports RoPE and learned positions; "
                         f"{cfg.name!r} uses ALiBi")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, n) tensor of token ids, got {input_ids!r}")
    batch, new = input_ids.shape
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative integer position, got {start!r}")
    if start > 0 and new != 1:
        raise ValueError(f"start={start} with {new} new tokens: only a prefill (start=0) or a "
                         f"one-token decode step is supported")
    end = start + new
    if end > cache.capacity:
        raise ValueError(f"positions up to {end} do not fit a cache of capacity "
                         f"{cache.capacity}")
    if cache.storage.shape[2] != batch:
        raise ValueError(f"the cache holds {cache.storage.shape[2]} sequences, input_ids "
                         f"has {batch}")
    positions = torch.arange(start, end, device=input_ids.device)
    x = model.embed_tokens(input_ids)
    if model.embed_positions is not None:
        x = x + model.embed_positions(positions)
    if model.embed_norm is not None:
        x = model.embed_norm(x)
    heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    groups = heads // kv_heads
    if cfg.position == "rope":
        cos, sin = _rope_tables(positions, head_dim, x.dtype)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = block.attn_norm(x)
        q = attn.q_proj(h).view(batch, new, heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(batch, new, kv_heads, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(batch, new, kv_heads, head_dim).transpose(1, 2)
        if cfg.position == "rope":
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        cache.keys(layer)[:, :, start:end] = k
        cache.values(layer)[:, :, start:end] = v
        keys = cache.keys(layer)[:, :, :end]
        values = cache.values(layer)[:, :, :end]
        if new == 1:
            # Query head j uses KV head j // groups (repeat_interleave in the model), so the
            # queries of one KV head are consecutive: (batch, kv_heads, groups, head_dim).
            grouped = q.reshape(batch, kv_heads, groups, head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values)
            out = out.reshape(batch, heads, 1, head_dim)
        else:
            if groups > 1:
                keys = keys.repeat_interleave(groups, dim=1)
                values = values.repeat_interleave(groups, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, new, heads * head_dim))
        x = x + block.mlp(block.mlp_norm(x))
    return model.lm_head(model.final_norm(x[:, -1]))


# --------------------------------------------------------------------------------------------
# Input pipeline: a synthetic image dataset, loaders, and a small model that consumes them
# --------------------------------------------------------------------------------------------

# An ImageNet-style sample: 3 x 224 x 224 float32 (588 KiB) and a label among 1000 classes.
IMAGE_SHAPE: tuple[int, int, int] = (3, 224, 224)
NUM_CLASSES = 1000
# ImageNet channel statistics (torchvision's Normalize defaults), used by the transform.
IMAGE_MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
IMAGE_STD = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1)

# 32 images per batch (19 MB as float32) at ~1 ms of CPU work each: ~30 ms per batch in one
# process, so workers visibly help, and 16 batches per measurement take well under 1 s.
LOADER_BATCH_SIZE = 32
LOADER_STEPS = 16
# measure_dataloader needs steps + 1 batches (one warm-up batch starts the workers).
LOADER_LENGTH = (LOADER_STEPS + 1) * LOADER_BATCH_SIZE
LOADER_WORKER_COUNTS: tuple[int, ...] = (0, 2, 4)
# Two batches in flight per worker: torch's default prefetch_factor, stated so it is visible.
LOADER_PREFETCH = 2


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block, as DataLoader workers always do (they call
    torch.set_num_threads(1)); the previous thread count is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SyntheticImages(torch.utils.data.Dataset):
    """Map-style dataset of deterministic images: item i is the same tensor on every call and in
    every worker, and costs a fixed amount of single-threaded CPU work (~1 ms at 224 x 224),
    like the decode and normalisation of a real pipeline.

    The "decode" is SHAKE-128 of the index (single-threaded C), the transform torch ops on one
    thread: the work per item is then the same in the main process (num_workers=0) as in a
    worker, so more workers measure real parallelism, not a change of thread count.
    """

    def __init__(self, length: int, shape: tuple[int, int, int] = IMAGE_SHAPE) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if len(shape) != 3 or shape[0] != 3 or min(shape) <= 0:
            raise ValueError(f"shape must be (3, height, width) with positive sizes, "
                             f"got {shape!r}")
        self.length = length
        self.shape = shape

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        # "Decode": 8-bit pixels, a deterministic pseudo-random stream seeded by the index.
        raw = hashlib.shake_128(index.to_bytes(8, "little")).digest(math.prod(self.shape))
        with _one_thread():
            pixels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(self.shape)
            # The usual transform: scale to [0, 1], normalise per channel, horizontal flip.
            image = ((pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD).flip(-1)
        return image, index % NUM_CLASSES


def image_loader(num_workers: int, *, length: int = LOADER_LENGTH,
                 batch_size: int = LOADER_BATCH_SIZE, pin_memory: bool = True,
                 shape: tuple[int, int, int] = IMAGE_SHAPE) -> torch.utils.data.DataLoader:
    """A DataLoader over `SyntheticImages` as training uses one: pinned batches, and with
    workers, persistent workers with two batches prefetched each."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    worker_options: dict[str, object] = {}
    if num_workers > 0:
        worker_options = {"persistent_workers": True, "prefetch_factor": LOADER_PREFETCH}
    return torch.utils.data.DataLoader(SyntheticImages(length, shape), batch_size=batch_size,
                                       shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, drop_last=True, **worker_options)


class SmallConvNet(nn.Module):
    """A small image classifier (patchify stem, four 3x3 conv blocks, pooled linear head): a
    few milliseconds of GPU work per 32-image batch, the consumer of the data-wait test."""

    def __init__(self, width: int = 64, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        # 4x4 stride-4 patches: 224 -> 56 pixels, as ConvNeXt's stem.
        layers: list[nn.Module] = [nn.Conv2d(3, width, kernel_size=4, stride=4), nn.GELU()]
        for _ in range(4):
            layers += [nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GELU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


# Steps of the data-wait measurement: 24 batches of 32 images with 2 workers take ~0.5 s.
DATA_WAIT_STEPS = 24
DATA_WAIT_LENGTH = (DATA_WAIT_STEPS + 1) * LOADER_BATCH_SIZE


def data_wait_fractions(model: nn.Module, loader: torch.utils.data.DataLoader,
                        optimizer: torch.optim.Optimizer, *, steps: int,
                        device: str) -> list[float]:
    """Train `model` on `steps` batches of `loader` and return, per step, the fraction of the
    step's wall time spent blocked waiting for the batch.

    A step is: wait for the batch (host), copy it with non_blocking=True, forward under bf16
    autocast on CUDA, cross-entropy, backward, optimizer step, then synchronise so the step's
    wall time includes its GPU work (as a loop that logs its loss every step does). One
    untimed first step starts the workers and pays one-time costs.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if len(loader) < steps + 1:
        raise ValueError(f"the loader has {len(loader)} batches, but steps={steps} needs "
                         f"{steps + 1} (one untimed first step plus {steps})")
    device_type = torch.device(device).type

    def train_on(images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                    if device_type == "cuda" else contextlib.nullcontext())
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if device_type == "cuda":
            torch.cuda.synchronize(device)

    iterator = iter(loader)
    train_on(*next(iterator))
    fractions: list[float] = []
    for _ in range(steps):
        started = time.perf_counter()
        images, labels = next(iterator)
        waited = time.perf_counter() - started
        train_on(images, labels)
        fractions.append(waited / (time.perf_counter() - started))
    return fractions


# --------------------------------------------------------------------------------------------
# Host-to-device copies
# --------------------------------------------------------------------------------------------

# 256 MiB per copy: ~5 ms over PCIe Gen5 from pinned memory, long enough that launch and event
# overhead vanish, small enough to pin without straining the host.
H2D_BYTES = 256 * 2**20


# Random bytes are drawn for one 1 MiB block and tiled: drawing all 256 MiB with torch's serial
# CPU generator takes seconds, copying the block takes milliseconds, and every page is touched
# either way.
RANDOM_BLOCK_BYTES = 2**20


def host_buffer(nbytes: int, *, pinned: bool, seed: int = 0) -> torch.Tensor:
    """A host byte buffer filled with random bytes, pinned (page-locked) or pageable. Real
    content makes every page resident: untouched pages of a fresh allocation are all mapped to
    the kernel's shared zero page and would not measure a real copy."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"nbytes must be a positive integer, got {nbytes!r}")
    generator = torch.Generator().manual_seed(seed)
    block = torch.randint(0, 256, (min(nbytes, RANDOM_BLOCK_BYTES),), dtype=torch.uint8,
                          generator=generator)
    buffer = block.repeat(math.ceil(nbytes / block.numel()))[:nbytes].clone()
    return buffer.pin_memory() if pinned else buffer
