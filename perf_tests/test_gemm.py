"""GEMM throughput against the GPU's dense peak: square probes in every precision, the GEMMs of a
Llama-2-7B layer, FP8 through `torch._scaled_mm`, and the cost of a misaligned SwiGLU width.

Every throughput is also recorded as a fraction of the datasheet dense peak for its precision; a
fraction above 1 is impossible, so it means a wrong peak table or a broken clock, and fails.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pytest
import torch

from harness.gate.results import Measurement
from harness.pytest_plugin.fixture import Perf
from harness.workloads.bounds import peak_flops_of
from harness.workloads.gemm import (
    FP32_SQUARE_GEMM,
    GEMM_DTYPES,
    LLAMA_7B_LAYER_GEMMS,
    SQUARE_GEMM,
    SWIGLU_ALIGNED,
    SWIGLU_ALIGNED_FFN,
    SWIGLU_ALIGNED_NOISE_MARGIN,
    SWIGLU_MISALIGNED,
    SWIGLU_MISALIGNED_FFN,
    GemmShape,
    fp8_matmul,
    fp8_operands,
    fp8_unavailable_reason,
    gemm_operands,
    tf32_matmul,
)
from harness.workloads.tolerances import HOST_BOUND_TOLERANCE

pytestmark = pytest.mark.gpu


def _time_gemm(perf: Perf, shape: GemmShape, fn: Callable[[], object], *, name: str,
               peak_dtype: str) -> list[float]:
    """Time `fn` as `name` with the GEMM's FLOPs, record `<name>_of_peak`, and return that
    fraction per sample."""
    peak = peak_flops_of(perf.gpu, peak_dtype)
    measured: Measurement = perf.time(fn, name=name, flops=shape.flops)
    fractions = [tflops * 1e12 / peak for tflops in measured[f"{name}_tflops"].samples]
    perf.metric(f"{name}_of_peak", fractions, unit="ratio", better="higher", kind="throughput")
    return fractions


def _assert_fraction_of_peak(fractions: list[float], what: str) -> None:
    assert min(fractions) > 0, f"{what}: a throughput of zero or less is a broken measurement"
    assert max(fractions) <= 1.0, (
        f"{what} reached {max(fractions):.3f} of the datasheet dense peak: more than the "
        f"hardware can do, so the peak table or the clock is wrong")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32", "fp32"])
def test_square_gemm_stays_below_the_dense_peak(perf: Perf, precision: str) -> None:
    shape = FP32_SQUARE_GEMM if precision == "fp32" else SQUARE_GEMM
    a, b = gemm_operands(shape, GEMM_DTYPES[precision], perf.device)
    out = torch.empty(shape.m, shape.n, dtype=a.dtype, device=perf.device)
    # tf32 and fp32 store the same fp32 tensors; only cuBLAS's permission to use TF32 tensor
    # cores differs, set for the measurement and restored afterwards.
    with tf32_matmul(precision == "tf32"):
        fractions = _time_gemm(perf, shape, lambda: torch.matmul(a, b, out=out), name="gemm",
                               peak_dtype=precision)
    _assert_fraction_of_peak(fractions, f"{precision} GEMM {shape.m}x{shape.n}x{shape.k}")


@pytest.mark.parametrize("shape", LLAMA_7B_LAYER_GEMMS, ids=lambda s: s.name)
def test_llama_7b_layer_gemm_stays_below_the_dense_peak(perf: Perf, shape: GemmShape) -> None:
    a, b = gemm_operands(shape, torch.bfloat16, perf.device)
    out = torch.empty(shape.m, shape.n, dtype=a.dtype, device=perf.device)
    fractions = _time_gemm(perf, shape, lambda: torch.matmul(a, b, out=out), name="gemm",
                           peak_dtype="bf16")
    _assert_fraction_of_peak(fractions, f"bf16 {shape.name} GEMM {shape.m}x{shape.n}x{shape.k}")


def test_fp8_gemm_stays_below_the_dense_peak(perf: Perf) -> None:
    reason = fp8_unavailable_reason(torch.cuda.get_device_capability(perf.device))
    if reason is not None:
        pytest.skip(reason)
    shape = SQUARE_GEMM
    operands = fp8_operands(shape, perf.device)
    fractions = _time_gemm(perf, shape, lambda: fp8_matmul(operands), name="gemm",
                           peak_dtype="fp8")
    _assert_fraction_of_peak(fractions, f"fp8 (e4m3) GEMM {shape.m}x{shape.n}x{shape.k}")


def _swiglu_up_fractions(perf: Perf, shape: GemmShape) -> list[float]:
    """Fraction of the bf16 peak per sample of the SwiGLU up GEMM with d_ff = shape.n."""
    a, b = gemm_operands(shape, torch.bfloat16, perf.device)
    out = torch.empty(shape.m, shape.n, dtype=a.dtype, device=perf.device)
    fractions = _time_gemm(perf, shape, lambda: torch.matmul(a, b, out=out),
                           name=f"ffn_{shape.n}", peak_dtype="bf16")
    _assert_fraction_of_peak(fractions, f"bf16 SwiGLU up GEMM with d_ff={shape.n}")
    return fractions


def test_aligned_swiglu_width_is_not_slower_than_eight_thirds(perf: Perf) -> None:
    misaligned = _swiglu_up_fractions(perf, SWIGLU_MISALIGNED)
    aligned = _swiglu_up_fractions(perf, SWIGLU_ALIGNED)
    # Throughput (fraction of the same peak), not time: the aligned GEMM is 22 columns wider.
    # The two sample sets are independent, so pairing them in order gives ratios whose spread
    # carries the noise of both measurements; each stops on its own time budget, so the pairs
    # end with the shorter.
    ratios = [mis / ali for mis, ali in zip(misaligned, aligned, strict=False)]
    perf.metric("misaligned_over_aligned", ratios, unit="ratio", better="higher",
                kind="throughput", tolerance=HOST_BOUND_TOLERANCE["gemm_ratio"])
    assert statistics.median(aligned) >= (
        SWIGLU_ALIGNED_NOISE_MARGIN * statistics.median(misaligned)), (
        f"d_ff={SWIGLU_ALIGNED_FFN} ran at {statistics.median(aligned):.3f} of peak but the "
        f"misaligned d_ff={SWIGLU_MISALIGNED_FFN} at {statistics.median(misaligned):.3f}: "
        f"the aligned width should never be slower (source 001 measured 398 vs 273 TFLOP/s "
        f"on an H100)")
