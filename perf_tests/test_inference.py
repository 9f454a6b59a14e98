"""Inference of the Llama-style model in bf16: prefill against the compute bound (FLOPs / peak)
and KV-cached decode against the memory-bandwidth bound (bytes read per step / bandwidth).

Prefill runs the model's own forward; decode runs `harness.workloads.inference.forward_with_cache`,
a KV-cached forward over the model's own weights (checked against the full forward on CPU by
tests/test_suite_workloads.py).
"""

from __future__ import annotations

import pytest
import torch

from harness.model import build_model, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.flops import forward_flops
from harness.theory.memory.inference import kv_cache_bytes
from harness.workloads.bounds import memory_bandwidth_of, peak_flops_of
from harness.workloads.inference import (
    DECODE_BATCH,
    DECODE_CONTEXT,
    PREFILL,
    allocate_kv_cache,
    decode_weight_bytes,
    forward_with_cache,
)
from harness.workloads.models import LLAMA_STYLE
from harness.workloads.tolerances import HOST_BOUND_TOLERANCE

pytestmark = pytest.mark.gpu


def _assert_fraction_of_bound(fractions: list[float], what: str) -> None:
    assert min(fractions) > 0, f"{what}: a throughput of zero or less is a broken measurement"
    assert max(fractions) <= 1.0, (
        f"{what} reached {max(fractions):.3f} of its bound: faster than the hardware allows, so "
        f"the bound's inputs (FLOPs, bytes, peak table) or the clock are wrong")


def _prefill_fractions(perf: Perf, peak: float) -> list[float]:
    """Fraction of the bf16 peak per sample of PREFILL's forward. The model and its tokens live
    only in this function, so a failing assertion cannot keep them on the GPU."""
    workload = PREFILL
    cfg = workload.config
    model = build_model(cfg, device=perf.device, dtype=torch.bfloat16).eval()
    generator = torch.Generator(device=perf.device).manual_seed(0)
    tokens, _ = random_batch(cfg, workload.batch_size, workload.seq_len, device=perf.device,
                             generator=generator)
    # Causal FLOPs: the flash kernel skips the masked half of the scores, so this is the work
    # the GPU must at least do, and FLOPs / peak a true lower bound on the time.
    flops = forward_flops(cfg, workload.batch_size, workload.seq_len, causal=True)

    def prefill() -> torch.Tensor:
        with torch.inference_mode():
            return model(tokens)

    measured = perf.time(prefill, name="prefill", flops=flops)
    fractions = [tflops * 1e12 / peak for tflops in measured["prefill_tflops"].samples]
    perf.metric("prefill_of_peak", fractions, unit="ratio", better="higher", kind="throughput")
    return fractions


def test_prefill_stays_below_the_compute_bound(perf: Perf, released_memory: None) -> None:
    peak = peak_flops_of(perf.gpu, "bf16")
    fractions = _prefill_fractions(perf, peak)
    _assert_fraction_of_bound(fractions, f"prefill of {PREFILL.batch_size} x "
                                         f"{PREFILL.seq_len} tokens")


def _decode_fractions(perf: Perf, bandwidth: float) -> list[float]:
    """Fraction of the bandwidth bound per sample of one decode step of DECODE_BATCH sequences
    at DECODE_CONTEXT. The model and its cache live only in this function, so a failing
    assertion cannot keep them on the GPU."""
    cfg = LLAMA_STYLE
    batch, context = DECODE_BATCH, DECODE_CONTEXT
    model = build_model(cfg, device=perf.device, dtype=torch.bfloat16).eval()
    cache = allocate_kv_cache(cfg, batch, context + 1, device=perf.device,
                              dtype=torch.bfloat16)
    generator = torch.Generator(device=perf.device).manual_seed(0)
    prompt, _ = random_batch(cfg, batch, context, device=perf.device, generator=generator)
    with torch.inference_mode():
        forward_with_cache(model, prompt, cache, start=0)
    next_token = prompt[:, -1:]

    def decode_step() -> torch.Tensor:
        # Every call decodes the token at the same position, so each does the same work.
        with torch.inference_mode():
            return forward_with_cache(model, next_token, cache, start=context)

    # A step reads every weight it multiplies with once, and the keys and values of all
    # context + 1 positions: less than this cannot be read, so bandwidth / bytes bounds it.
    bytes_per_step = decode_weight_bytes(cfg, bytes_per_param=2) + kv_cache_bytes(
        cfg, batch, context + 1, bytes_per_element=2)
    tolerance = HOST_BOUND_TOLERANCE["decode"]
    measured = perf.time(decode_step, name="decode_step", bytes=bytes_per_step,
                         tolerance=tolerance)
    seconds = measured["decode_step"].samples
    perf.metric("decode_tokens_per_s", [batch / s for s in seconds], unit="tokens/s",
                better="higher", kind="throughput", tolerance=tolerance)
    fractions = [bytes_per_step / s / bandwidth for s in seconds]
    perf.metric("decode_of_bandwidth_bound", fractions, unit="ratio", better="higher",
                kind="throughput", tolerance=tolerance)
    return fractions


def test_decode_stays_below_the_bandwidth_bound(perf: Perf, released_memory: None) -> None:
    bandwidth = memory_bandwidth_of(perf.gpu)
    fractions = _decode_fractions(perf, bandwidth)
    _assert_fraction_of_bound(fractions, f"decode of {DECODE_BATCH} sequences at context "
                                         f"{DECODE_CONTEXT}")
