"""CPU checks of harness/workloads/: the sizes the GPU suite measures, and every builder it
uses that can run without a GPU (GEMM operands, FP8 quantisation, the KV-cached decode, the
synthetic image pipeline, the data-wait loop)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.model import build_model, random_batch
from harness.theory.config import TransformerConfig
from harness.theory.flops import train_flops
from harness.theory.hardware import gpu_spec
from harness.theory.memory.breakdown import CUDA_CONTEXT_BYTES_RANGE
from harness.theory.memory.inference import kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.theory.zoo import get_model
from harness.workloads.bounds import memory_bandwidth_of, peak_flops_of
from harness.workloads.dataloader import (
    H2D_BYTES,
    IMAGE_MEAN,
    IMAGE_SHAPE,
    IMAGE_STD,
    LOADER_PREFETCH,
    LOADER_STEPS,
    NUM_CLASSES,
    RANDOM_BLOCK_BYTES,
    SmallConvNet,
    SyntheticImages,
    data_wait_fractions,
    host_buffer,
    image_loader,
)
from harness.workloads.gemm import (
    E4M3_MAX,
    FP32_SQUARE_GEMM,
    LLAMA_7B_LAYER_GEMMS,
    SQUARE_GEMM,
    SWIGLU_ALIGNED,
    SWIGLU_ALIGNED_FFN,
    SWIGLU_HIDDEN,
    SWIGLU_MISALIGNED,
    SWIGLU_MISALIGNED_FFN,
    SWIGLU_TOKENS,
    GemmShape,
    fp8_matmul,
    fp8_operands,
    fp8_unavailable_reason,
    gemm_operands,
    tf32_matmul,
)
from harness.workloads.inference import (
    DECODE_BATCH,
    DECODE_CACHE,
    DECODE_CONTEXT,
    allocate_kv_cache,
    decode_weight_bytes,
    forward_with_cache,
)
from harness.workloads.models import GPT_STYLE, LLAMA_STYLE, TransformerWorkload
from harness.workloads.training import (
    GPT_TRAINING,
    GPU_BOUND_TRAINING,
    LLAMA_TRAINING,
    MEMORY_SWEEP,
    MEMORY_SWEEP_BATCHES,
    RECOMPUTE_CASES,
    TRAINING_PRECISION,
    TRAINING_WORKLOADS,
    make_optimizer,
    release_cuda_memory,
    training_step,
)

# The 80 GB H100 the suite is sized for, by the spec table.
H100 = gpu_spec("H100")

TINY_LLAMA = TransformerConfig(num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=2,
                               vocab_size=101, mlp="swiglu", tied_embeddings=False, bias=False,
                               norm="rmsnorm", position="rope", max_position_embeddings=32,
                               name="tiny-llama")
TINY_GPT = TransformerConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=101,
                             max_position_embeddings=32, name="tiny-gpt")
TINY_MHA_ROPE = TINY_LLAMA.replace(num_kv_heads=8, name="tiny-mha-rope")
SMALL_IMAGE = (3, 16, 16)


# --- GEMMs -----------------------------------------------------------------------------------


def test_gemm_flops_count_a_multiply_add_as_two() -> None:
    assert GemmShape("g", m=2, n=3, k=5).flops == 2 * 2 * 3 * 5


@pytest.mark.parametrize("field", ["m", "n", "k"])
@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_gemm_shape_rejects_a_non_positive_size_naming_it(field: str, bad: object) -> None:
    sizes = {"m": 8, "n": 8, "k": 8, field: bad}
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got {bad!r}"):
        GemmShape("g", **sizes)  # type: ignore[arg-type]


def test_llama_7b_layer_gemms_have_the_published_layer_shapes() -> None:
    shapes = {shape.name: (shape.m, shape.k, shape.n) for shape in LLAMA_7B_LAYER_GEMMS}
    # tokens x input width x output width, from Llama-2-7B's h=4096 and d_ff=11008 (MHA).
    assert shapes == {"qkv": (4096, 4096, 12288), "mlp_up": (4096, 4096, 11008),
                      "mlp_down": (4096, 11008, 4096)}


def test_swiglu_pair_is_eight_thirds_and_its_nearest_aligned_width() -> None:
    assert SWIGLU_MISALIGNED_FFN == 10922 == math.floor(8 * 4096 / 3)
    assert SWIGLU_MISALIGNED_FFN % 64 != 0
    assert SWIGLU_ALIGNED_FFN % 64 == 0
    assert SWIGLU_ALIGNED_FFN - SWIGLU_MISALIGNED_FFN == 22
    for shape in (SWIGLU_MISALIGNED, SWIGLU_ALIGNED):
        assert (shape.m, shape.k) == (SWIGLU_TOKENS, SWIGLU_HIDDEN)


def test_square_gemms_fit_an_80_gb_gpu_many_times_over() -> None:
    for shape, dtype in ((SQUARE_GEMM, torch.float32), (FP32_SQUARE_GEMM, torch.float32)):
        element = torch.tensor([], dtype=dtype).element_size()
        operands_and_output = (shape.m * shape.k + shape.k * shape.n + shape.m * shape.n) * element
        assert operands_and_output < H100.memory_bytes / 10


def test_gemm_operands_are_seeded_random_normal_not_zeros() -> None:
    shape = GemmShape("g", m=64, n=48, k=32)
    a, b = gemm_operands(shape, torch.float32, "cpu", seed=3)
    assert a.shape == (64, 32) and b.shape == (32, 48)
    assert a.dtype == b.dtype == torch.float32
    assert 0.8 < a.std().item() < 1.2 and abs(a.mean().item()) < 0.2
    assert not torch.equal(a[:32, :32], b[:32, :32])
    again, _ = gemm_operands(shape, torch.float32, "cpu", seed=3)
    assert torch.equal(a, again)
    other, _ = gemm_operands(shape, torch.float32, "cpu", seed=4)
    assert not torch.equal(a, other)


def test_gemm_operands_reject_an_integer_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        gemm_operands(GemmShape("g", 4, 4, 4), torch.int32, "cpu")


def test_tf32_matmul_restores_the_previous_setting_even_on_error() -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with tf32_matmul(True):
            assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cuda.matmul.allow_tf32 is False
        with pytest.raises(RuntimeError, match="inside"):
            with tf32_matmul(True):
                raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_tf32_matmul_rejects_a_non_boolean() -> None:
    with pytest.raises(ValueError, match="enabled must be True or False, got 1"):
        with tf32_matmul(1):  # type: ignore[arg-type]
            pass


def test_fp8_operands_are_e4m3_with_a_column_major_second_operand() -> None:
    shape = GemmShape("g", m=32, n=48, k=64)
    ops = fp8_operands(shape, "cpu")
    assert ops.a.dtype == ops.b.dtype == torch.float8_e4m3fn
    assert ops.a.shape == (32, 64) and ops.b.shape == (64, 48)
    assert ops.a.is_contiguous()
    assert ops.b.stride() == (1, 64)  # column-major k x n, as _scaled_mm requires
    assert ops.scale_a.dtype == ops.scale_b.dtype == torch.float32
    assert ops.scale_a.dim() == ops.scale_b.dim() == 0
    # Scaled to use the format's range: the largest magnitude lands on e4m3's maximum.
    assert ops.a.float().abs().max().item() == pytest.approx(E4M3_MAX, rel=0.07)


def test_fp8_matmul_matches_the_product_of_the_dequantised_operands() -> None:
    ops = fp8_operands(GemmShape("g", m=32, n=48, k=64), "cpu")
    result = fp8_matmul(ops)
    expected = (ops.a.float() * ops.scale_a) @ (ops.b.float() * ops.scale_b)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("capability,available", [((8, 0), False), ((8, 6), False),
                                                  ((8, 9), True), ((9, 0), True),
                                                  ((10, 0), True)])
def test_fp8_needs_ada_or_hopper(capability: tuple[int, int], available: bool) -> None:
    reason = fp8_unavailable_reason(capability)
    assert (reason is None) == available
    if reason is not None:
        assert f"sm_{capability[0]}{capability[1]}" in reason and "8.9" in reason


def test_peak_flops_of_reads_the_spec_table() -> None:
    assert peak_flops_of(H100, "bf16") == pytest.approx(989.4e12)
    assert peak_flops_of(H100, "tf32") < peak_flops_of(H100, "bf16")


def test_an_unknown_gpu_has_no_peak_and_no_bandwidth_and_says_how_to_add_it() -> None:
    with pytest.raises(ValueError, match="register_gpu"):
        peak_flops_of(None, "bf16")
    with pytest.raises(ValueError, match="register_gpu"):
        memory_bandwidth_of(None)


def test_memory_bandwidth_of_reads_the_spec_table() -> None:
    assert memory_bandwidth_of(H100) == pytest.approx(3.35e12)


# --- transformer workloads -------------------------------------------------------------------


def test_the_gpt_workload_is_gpt2_medium_at_its_full_context() -> None:
    assert GPT_TRAINING.config == get_model("gpt2-medium")
    assert GPT_TRAINING.seq_len == GPT_STYLE.max_position_embeddings


def test_the_llama_workload_has_gqa_swiglu_rope_and_rmsnorm() -> None:
    cfg = LLAMA_STYLE
    assert cfg.kv_heads < cfg.num_heads
    assert (cfg.mlp, cfg.position, cfg.norm) == ("swiglu", "rope", "rmsnorm")
    assert not cfg.tied_embeddings and not cfg.bias
    assert 300e6 < cfg.num_params() < 400e6


def test_both_training_workloads_process_the_same_tokens_per_step() -> None:
    assert GPT_TRAINING.tokens == LLAMA_TRAINING.tokens == 8192


@pytest.mark.parametrize("name", list(TRAINING_WORKLOADS))
def test_a_training_step_takes_tens_of_milliseconds_on_an_h100(name: str) -> None:
    workload = TRAINING_WORKLOADS[name]
    flops = train_flops(workload.config, workload.batch_size, workload.seq_len).model
    peak = H100.peak_flops("bf16")
    # Between the 25% and 50% MFU models of this size reach: well above timer resolution, well
    # within the suite's budget.
    for mfu in (0.25, 0.5):
        seconds = flops / (mfu * peak)
        assert 0.03 < seconds < 0.3, f"{name}: {seconds * 1e3:.0f} ms per step at MFU {mfu}"


def test_every_training_workload_fits_an_80_gb_gpu_with_room_to_spare() -> None:
    cases = [(wl, r) for wl in TRAINING_WORKLOADS.values() for r in RECOMPUTE_CASES]
    cases += [(MEMORY_SWEEP.with_batch(max(MEMORY_SWEEP_BATCHES)), "none")]
    for workload, recompute in cases:
        estimate = training_memory(workload.config, workload.batch_size, workload.seq_len,
                                   precision=TRAINING_PRECISION, recompute=recompute).total
        # Half the GPU: eager autocast may keep more than the formula, and the suite must never
        # fail for lack of memory.
        assert estimate + CUDA_CONTEXT_BYTES_RANGE[1] < H100.memory_bytes / 2


def test_the_gpu_bound_workload_is_two_llama_2_7b_layers_that_fit_an_80_gb_gpu() -> None:
    workload = GPU_BOUND_TRAINING
    cfg = workload.config
    assert cfg.num_layers == 2
    assert dataclasses.replace(cfg, num_layers=32, name="llama-2-7b") == get_model("llama-2-7b")
    flops = train_flops(cfg, workload.batch_size, workload.seq_len).model
    for mfu in (0.25, 0.5):  # tens of milliseconds per step on an H100, as above
        assert 0.03 < flops / (mfu * H100.peak_flops("bf16")) < 0.3
    estimate = training_memory(cfg, workload.batch_size, workload.seq_len,
                               precision=TRAINING_PRECISION).total
    assert estimate + CUDA_CONTEXT_BYTES_RANGE[1] < H100.memory_bytes / 2


def test_memory_sweep_batches_grow_and_share_the_sequence_length() -> None:
    assert list(MEMORY_SWEEP_BATCHES) == sorted(set(MEMORY_SWEEP_BATCHES))
    assert MEMORY_SWEEP.with_batch(8).seq_len == MEMORY_SWEEP.seq_len


def test_a_workload_rejects_a_sequence_beyond_the_position_table() -> None:
    with pytest.raises(ValueError, match="seq_len=2048 exceeds max_position_embeddings=1024"):
        TransformerWorkload(get_model("gpt2"), batch_size=1, seq_len=2048)


@pytest.mark.parametrize("field", ["batch_size", "seq_len"])
def test_a_workload_rejects_a_non_positive_size_naming_it(field: str) -> None:
    sizes = {"batch_size": 1, "seq_len": 16, field: 0}
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        TransformerWorkload(TINY_GPT, **sizes)


def test_training_step_updates_every_parameter_on_cpu() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_LLAMA, device="cpu")
    optimizer = make_optimizer(model, fused=False)
    before = [p.detach().clone() for p in model.parameters()]
    inputs = random_batch(TINY_LLAMA, 2, 8, device="cpu")
    training_step(model, optimizer, inputs)
    assert all(p.grad is not None for p in model.parameters())
    after = list(model.parameters())
    changed = [not torch.equal(old, new) for old, new in zip(before, after, strict=True)]
    assert all(changed)
    assert len(optimizer.state) == len(before)  # AdamW keeps state for every parameter


def test_release_cuda_memory_collects_unreachable_cycles_without_cuda() -> None:
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    alive = weakref.ref(a)
    gc.disable()
    try:
        del a, b
        assert alive() is not None
        release_cuda_memory()
        assert alive() is None
    finally:
        gc.enable()


# --- decode ----------------------------------------------------------------------------------


def test_decode_reads_every_weight_but_an_untied_input_embedding() -> None:
    cfg = LLAMA_STYLE
    embedding = cfg.vocab_size * cfg.hidden_size
    assert decode_weight_bytes(cfg, 2) == 2 * (cfg.num_params() - embedding)
    tied = get_model("gpt2")
    positions = tied.max_position_embeddings * tied.hidden_size
    # Tied: the output layer reads the whole table; only the learned positions are skipped.
    assert decode_weight_bytes(tied, 2) == 2 * (tied.num_params() - positions)


def test_kv_cache_holds_kv_cache_bytes_in_one_512_byte_multiple_allocation() -> None:
    workload = DECODE_CACHE
    cfg = workload.config
    cache = allocate_kv_cache(cfg, workload.batch_size, workload.seq_len, device="cpu")
    expected = kv_cache_bytes(cfg, workload.batch_size, workload.seq_len, bytes_per_element=2)
    assert cache.nbytes == expected == 384 * 2**20
    assert expected % 512 == 0  # the caching allocator's rounding unit: no hidden padding
    assert cache.storage.is_contiguous() and cache.storage.dtype == torch.bfloat16
    assert cache.keys(3).shape == (workload.batch_size, cfg.kv_heads, workload.seq_len,
                                   cfg.head_dim)
    assert cache.keys(3).data_ptr() != cache.values(3).data_ptr()
    assert cache.capacity == workload.seq_len


def test_decode_workload_fills_its_cache_exactly() -> None:
    assert DECODE_CONTEXT + 1 == DECODE_CACHE.seq_len
    assert DECODE_BATCH == DECODE_CACHE.batch_size


@pytest.mark.parametrize("cfg", [TINY_LLAMA, TINY_GPT, TINY_MHA_ROPE], ids=lambda c: c.name)
def test_kv_cached_decode_gives_the_full_forward_logits(cfg: TransformerConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu", dtype=torch.float64).eval()
    tokens = torch.randint(0, cfg.vocab_size, (3, 12))
    cache = allocate_kv_cache(cfg, 3, 16, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        full = model(tokens)
        prefill = forward_with_cache(model, tokens[:, :8], cache, start=0)
        torch.testing.assert_close(prefill, full[:, 7], rtol=1e-10, atol=1e-10)
        for position in range(8, 12):
            step = forward_with_cache(model, tokens[:, position:position + 1], cache,
                                      start=position)
            torch.testing.assert_close(step, full[:, position], rtol=1e-10, atol=1e-10)


def test_repeating_a_decode_step_at_one_position_repeats_its_result() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_LLAMA, device="cpu", dtype=torch.float64).eval()
    tokens = torch.randint(0, TINY_LLAMA.vocab_size, (2, 9))
    cache = allocate_kv_cache(TINY_LLAMA, 2, 9, device="cpu", dtype=torch.float64)
    with torch.no_grad():
        forward_with_cache(model, tokens[:, :8], cache, start=0)
        first = forward_with_cache(model, tokens[:, 8:], cache, start=8)
        second = forward_with_cache(model, tokens[:, 8:], cache, start=8)
    assert torch.equal(first, second)


def test_forward_with_cache_refuses_what_it_does_not_implement() -> None:
    model = build_model(TINY_LLAMA, device="cpu").eval()
    cache = allocate_kv_cache(TINY_LLAMA, 1, 8, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, TINY_LLAMA.vocab_size, (1, 4))
    with pytest.raises(ValueError, match="only a prefill"):
        forward_with_cache(model, tokens, cache, start=2)
    with pytest.raises(ValueError, match="do not fit a cache of capacity 8"):
        forward_with_cache(model, tokens[:, :1], cache, start=8)
    with pytest.raises(ValueError, match="start must be a non-negative integer"):
        forward_with_cache(model, tokens, cache, start=-1)
    with pytest.raises(ValueError, match="the cache holds 1 sequences, input_ids has 2"):
        forward_with_cache(model, torch.zeros(2, 1, dtype=torch.long), cache, start=0)
    alibi = TINY_GPT.replace(position="alibi", name="tiny-alibi")
    alibi_cache = allocate_kv_cache(alibi, 1, 8, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="ALiBi"):
        forward_with_cache(build_model(alibi, device="cpu"), tokens, alibi_cache, start=0)


def test_allocate_kv_cache_rejects_a_non_positive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity must be a positive integer, got 0"):
        allocate_kv_cache(TINY_LLAMA, 1, 0, device="cpu")


# --- input pipeline --------------------------------------------------------------------------


def test_synthetic_images_are_deterministic_normalised_and_labelled() -> None:
    dataset = SyntheticImages(length=1001)
    image, label = dataset[5]
    assert image.shape == IMAGE_SHAPE and image.dtype == torch.float32
    assert torch.equal(image, dataset[5][0])
    assert not torch.equal(image, dataset[6][0])
    assert label == 5 and dataset[1000][1] == 1000 % NUM_CLASSES
    # Uniform 8-bit pixels normalised by ImageNet statistics: mean (0.5 - mu) / sigma per channel.
    expected = ((0.5 - IMAGE_MEAN) / IMAGE_STD).reshape(3)
    torch.testing.assert_close(image.mean(dim=(1, 2)), expected, rtol=0, atol=0.05)


def test_synthetic_images_leave_the_thread_count_as_they_found_it() -> None:
    before = torch.get_num_threads()
    SyntheticImages(length=2, shape=SMALL_IMAGE)[1]
    assert torch.get_num_threads() == before


def test_synthetic_images_reject_out_of_range_indices_and_bad_sizes() -> None:
    with pytest.raises(IndexError):
        SyntheticImages(length=3)[3]
    with pytest.raises(ValueError, match="length must be a positive integer, got 0"):
        SyntheticImages(length=0)
    with pytest.raises(ValueError, match=r"shape must be \(3, height, width\)"):
        SyntheticImages(length=1, shape=(1, 8, 8))


@pytest.mark.parametrize("workers", [0, 2])
def test_image_loader_yields_full_batches_with_and_without_workers(workers: int) -> None:
    loader = image_loader(workers, length=10, batch_size=4, pin_memory=False,
                          shape=SMALL_IMAGE)
    batches = list(loader)
    assert len(batches) == 2  # drop_last: 10 images make two full batches of 4
    images, labels = batches[1]
    assert images.shape == (4, *SMALL_IMAGE) and labels.tolist() == [4, 5, 6, 7]
    assert loader.persistent_workers == (workers > 0)
    if workers:
        assert loader.prefetch_factor == LOADER_PREFETCH
    del loader


def test_the_default_loader_has_one_warm_up_batch_more_than_the_measured_steps() -> None:
    assert len(image_loader(0, pin_memory=False)) == LOADER_STEPS + 1


def test_image_loader_rejects_a_negative_worker_count() -> None:
    with pytest.raises(ValueError, match="num_workers must be a non-negative integer, got -1"):
        image_loader(-1)


def test_data_wait_fractions_are_one_per_step_in_the_unit_interval() -> None:
    torch.manual_seed(0)
    model = SmallConvNet(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = image_loader(0, length=16, batch_size=4, pin_memory=False, shape=SMALL_IMAGE)
    before = [p.detach().clone() for p in model.parameters()]
    fractions = data_wait_fractions(model, loader, optimizer, steps=3, device="cpu")
    assert len(fractions) == 3
    assert all(0 < f < 1 for f in fractions)
    assert not torch.equal(before[0], next(model.parameters()))  # the model really trained


def test_data_wait_refuses_a_loader_shorter_than_its_steps() -> None:
    model = SmallConvNet(width=8, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = image_loader(0, length=8, batch_size=4, pin_memory=False, shape=SMALL_IMAGE)
    with pytest.raises(ValueError, match="the loader has 2 batches, but steps=2 needs 3"):
        data_wait_fractions(model, loader, optimizer, steps=2, device="cpu")


def test_small_conv_net_classifies_any_image_size_it_is_given() -> None:
    logits = SmallConvNet(width=8, num_classes=10)(torch.randn(2, *SMALL_IMAGE))
    assert logits.shape == (2, 10)


# --- host-to-device copies -------------------------------------------------------------------


def test_host_buffer_is_random_bytes_of_the_requested_size() -> None:
    buffer = host_buffer(4 << 20, pinned=False, seed=1)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 4 << 20
    assert buffer.is_pinned() is False
    # Every page touched: no 4 KiB page of the buffer is all zeros.
    pages = buffer.view(-1, 4096)
    assert bool((pages != 0).any(dim=1).all())
    assert torch.equal(buffer, host_buffer(4 << 20, pinned=False, seed=1))


def test_host_buffer_of_an_odd_size_has_exactly_that_size() -> None:
    buffer = host_buffer(RANDOM_BLOCK_BYTES + 3, pinned=False)
    assert buffer.numel() == RANDOM_BLOCK_BYTES + 3 and buffer.is_contiguous()
    assert buffer.untyped_storage().nbytes() == RANDOM_BLOCK_BYTES + 3


def test_host_buffer_rejects_a_non_positive_size() -> None:
    with pytest.raises(ValueError, match="nbytes must be a positive integer, got 0"):
        host_buffer(0, pinned=False)


def test_h2d_copy_is_large_enough_to_hide_launch_overhead() -> None:
    # 256 MiB at the ~55 GB/s of pinned PCIe Gen5 is ~5 ms per copy: thousands of times the
    # ~5 us of a launch.
    assert H2D_BYTES == 256 * 2**20
    assert H2D_BYTES / 55e9 > 1e-3
