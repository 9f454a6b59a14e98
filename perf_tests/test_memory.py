"""GPU memory against the memory model: the CUDA context torch does not see, the peak of a
training step across batch sizes, and a KV cache allocated to the byte.

No timing here: each number is read once from the allocator or from NVML and recorded with
`perf.metric`, with its formula as the metric's theory where there is one.
"""

from __future__ import annotations

import pytest
import torch

from harness.measure.memory import cuda_context_bytes
from harness.model import build_model, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.memory.breakdown import CUDA_CONTEXT_BYTES_RANGE
from harness.theory.memory.inference import kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.workloads.inference import DECODE_CACHE, allocate_kv_cache
from harness.workloads.models import TransformerWorkload
from harness.workloads.training import (
    MEMORY_ESTIMATE_BAND,
    MEMORY_SWEEP,
    MEMORY_SWEEP_BATCHES,
    TRAINING_PRECISION,
    make_optimizer,
    release_cuda_memory,
    training_step,
)

pytestmark = pytest.mark.gpu


def test_cuda_context_fits_the_reserve_the_memory_model_sets_aside(perf: Perf) -> None:
    index = torch.cuda.current_device()
    context = cuda_context_bytes(index)
    if context is None:
        pytest.skip("NVML cannot attribute device memory to this process (MIG, or a container "
                    "that hides host PIDs), so the context size cannot be told apart")
    perf.metric("cuda_context_bytes", context, unit="B", better="lower", kind="memory")
    # formulas.memory.fits() reserves the top of CUDA_CONTEXT_BYTES_RANGE for the context, so a
    # larger context makes "fits" wrong. The bottom of the range is one measurement on another
    # GPU and torch version (source 001): a smaller context is no error, only recorded.
    reserve = CUDA_CONTEXT_BYTES_RANGE[1]
    assert 0 < context <= reserve, (
        f"this process's CUDA context (NVML device memory minus torch.cuda.memory_reserved) is "
        f"{context / 2**20:.0f} MiB; formulas.memory reserves {reserve / 2**20:.0f} MiB for it")


def _training_peaks(device: str, workload: TransformerWorkload,
                    batches: tuple[int, ...]) -> dict[int, int]:
    """Peak allocated bytes of one training step at each batch size, over what was allocated
    before the model existed. Each batch size runs one step first, so AdamW's states exist and
    the measured step is a steady-state step, the one `training_memory` describes."""
    cfg = workload.config
    before = torch.cuda.memory_allocated(device)
    model = build_model(cfg, device=device, dtype=torch.float32)
    optimizer = make_optimizer(model, fused=True)
    generator = torch.Generator(device=device).manual_seed(0)
    peaks: dict[int, int] = {}
    for batch in batches:
        inputs = random_batch(cfg, batch, workload.seq_len, device=device, generator=generator)
        training_step(model, optimizer, inputs)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        training_step(model, optimizer, inputs)
        torch.cuda.synchronize(device)
        peaks[batch] = torch.cuda.max_memory_allocated(device) - before
        del inputs
    del model, optimizer
    release_cuda_memory()
    return peaks


def test_training_peak_memory_grows_with_batch_and_matches_the_estimate(
        perf: Perf, released_memory: None) -> None:
    workload = MEMORY_SWEEP
    cfg = workload.config
    peaks = _training_peaks(perf.device, workload, MEMORY_SWEEP_BATCHES)
    # build_model's default dropout is 0.0, at which torch keeps no dropout masks.
    estimates = {batch: training_memory(cfg, batch, workload.seq_len,
                                        precision=TRAINING_PRECISION, optimizer="adamw",
                                        recompute="none", dropout=False).total
                 for batch in peaks}
    for batch, peak in peaks.items():
        perf.metric(f"peak_allocated_batch{batch}", peak, unit="B", better="lower",
                    kind="memory", theory=estimates[batch])

    ordered = [peaks[batch] for batch in MEMORY_SWEEP_BATCHES]
    assert ordered == sorted(ordered), (
        f"peak memory must not fall as the batch grows: {peaks}")
    band = MEMORY_ESTIMATE_BAND
    outside = {batch: round(peaks[batch] / estimates[batch], 3) for batch in peaks
               if not 1 - band <= peaks[batch] / estimates[batch] <= 1 + band}
    assert not outside, (
        f"measured peak / training_memory estimate outside 1 +- {band} for {cfg.name} at "
        f"seq {workload.seq_len} (precision={TRAINING_PRECISION!r}), by batch size: {outside}")


def test_kv_cache_allocation_matches_kv_cache_bytes_exactly(perf: Perf,
                                                             released_memory: None) -> None:
    workload = DECODE_CACHE
    cfg = workload.config
    expected = kv_cache_bytes(cfg, workload.batch_size, workload.seq_len, bytes_per_element=2)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    # One bf16 tensor whose size is a multiple of 512 bytes: the caching allocator rounds every
    # request up to 512 bytes and splits cached blocks larger than 1 MiB beyond the request, and
    # release_cuda_memory() emptied the cache, so the allocated delta is the tensor's size.
    cache = allocate_kv_cache(cfg, workload.batch_size, workload.seq_len, device=perf.device,
                              dtype=torch.bfloat16)
    delta = torch.cuda.memory_allocated() - before
    perf.metric("kv_cache_bytes", delta, unit="B", better="lower", kind="memory",
                theory=expected)
    assert cache.nbytes == expected, (
        f"a cache of {cfg.num_layers} layers x K,V x batch {workload.batch_size} x "
        f"{cfg.kv_heads} KV heads x {workload.seq_len} tokens x {cfg.head_dim} channels in bf16 "
        f"is {cache.nbytes} B, but kv_cache_bytes says {expected} B")
    assert delta == expected, (
        f"allocating the KV cache raised torch.cuda.memory_allocated by {delta} B; "
        f"kv_cache_bytes says {expected} B")
