"""GEMM shapes of the suite (square peak probes, Llama-2-7B layer GEMMs, a misaligned SwiGLU
width) and their operands: random bf16/fp16/fp32 matrices, TF32 on demand, FP8 with scales."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from harness.checks import require_bool, require_positive_int
from harness.theory.zoo import get_model


@dataclass(frozen=True)
class GemmShape:
    """A matrix product C = A @ B with A of m x k and B of k x n (BLAS naming)."""

    name: str
    m: int
    n: int
    k: int

    def __post_init__(self) -> None:
        for field in ("m", "n", "k"):
            require_positive_int(f"GemmShape {self.name!r}: {field}", getattr(self, field))

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
    require_bool("enabled", enabled)
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
