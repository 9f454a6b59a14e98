"""What is measured: a train step (time, counted and analytic FLOPs, MFU/HFU), a data loader,
device memory helpers. CPU only, with the fake clock where the numbers must be exact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from harness.measure.clocks import HostClock
from harness.measure.dataloader import batch_tensors, measure_dataloader, window_size
from harness.measure.memory import (
    cuda_context_bytes,
    device_memory_usage,
    device_memory_used_bytes,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
)
from harness.measure.sampling import TimingPolicy
from harness.measure.train_step import measure_train_step
from harness.testing import FakeClock
from harness.theory.config import TransformerConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Enough samples for a median and no more: these tests check the bookkeeping, not the noise.
POLICY = TimingPolicy(warmup_seconds=0.0, budget_seconds=1e9, min_samples=5, max_samples=5,
                      min_sample_seconds=1e-6)
# Small enough that a CPU step takes milliseconds; fp32 on the CPU (autocast_dtype=None), where
# bf16 autocast is emulated and many times slower.
TINY_GPT = TransformerConfig(num_layers=2, hidden_size=32, num_heads=2, vocab_size=64,
                             max_position_embeddings=32, name="tiny-gpt")


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """Tiny models on one thread: intra-op threads only add synchronisation to millisecond ops,
    and on a loaded 2-core runner their spin-waits make a step 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    inputs = (torch.randn(16, 32), torch.randn(16, 8))
    return model, inputs, torch.optim.SGD(model.parameters(), lr=0.01)


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(output, target)


# train step


def test_train_step_on_cpu_reports_time_and_counted_flops_only() -> None:
    model, inputs, optimizer = tiny_mlp()
    metrics = measure_train_step(model, inputs, mse, optimizer, clock=FakeClock(0, 0.01, 0.0),
                                 policy=POLICY, device="cpu", autocast_dtype=None)
    assert set(metrics) == {"step_time", "tflops", "flops_per_step"}
    assert metrics["step_time"].samples == (0.01,) * 5
    assert metrics["step_time"].unit == "s"


def test_flops_per_step_is_the_matmul_count_of_forward_and_backward() -> None:
    model, inputs, optimizer = tiny_mlp()
    metrics = measure_train_step(model, inputs, mse, optimizer, clock=FakeClock(0, 0.01, 0.0),
                                 policy=POLICY, device="cpu", autocast_dtype=None)
    # Batch 16, layers 32->64->8, 2 FLOPs per multiply-add. Forward: 2*16*(32*64 + 64*8).
    # Backward: grad of input and weight of the second layer, grad of weight of the first
    # (the input needs no grad): 2*16*64*8 * 2 + 2*16*32*64.
    forward = 2 * 16 * (32 * 64 + 64 * 8)
    backward = 2 * (2 * 16 * 64 * 8) + 2 * 16 * 32 * 64
    assert metrics["flops_per_step"].samples == (float(forward + backward),)
    assert metrics["flops_per_step"].kind == "other"
    assert metrics["flops_per_step"].better == "lower"
    assert metrics["tflops"].samples == pytest.approx(
        [(forward + backward) / 0.01 / 1e12] * 5, rel=1e-12)


def test_flops_per_step_equals_flop_counter_mode_on_the_same_step() -> None:
    model, inputs, optimizer = tiny_mlp()
    counter = FlopCounterMode(display=False)
    with counter:
        mse(model(inputs[0]), inputs[1]).backward()
    expected = counter.get_total_flops()
    model, inputs, optimizer = tiny_mlp()
    metrics = measure_train_step(model, inputs, mse, optimizer, clock=FakeClock(0, 0.01),
                                 policy=POLICY, device="cpu", autocast_dtype=None)
    assert metrics["flops_per_step"].median == expected


def test_train_step_takes_real_optimizer_steps_once_per_call() -> None:
    model, inputs, optimizer = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    losses: list[float] = []

    def counting_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = mse(output, target)
        losses.append(loss.item())
        return loss

    clock = FakeClock(0, 0.01, 0.0)
    measure_train_step(model, inputs, counting_mse, optimizer, clock=clock, policy=POLICY,
                       device="cpu", autocast_dtype=None)
    # One checked first step and one counted step, then every call the clock timed.
    assert len(losses) == 2 + clock.calls
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert losses[-1] < losses[0]  # it trained


def test_train_step_with_a_host_clock_measures_real_time() -> None:
    model, inputs, optimizer = tiny_mlp()
    policy = TimingPolicy(warmup_seconds=0.01, budget_seconds=0.05, min_samples=5,
                          max_samples=20)
    metrics = measure_train_step(model, inputs, mse, optimizer, clock=HostClock(),
                                 policy=policy, device="cpu", autocast_dtype=None)
    step = metrics["step_time"]
    assert 5 <= step.count <= 20
    # Real, positive durations; how long they are is a benchmark's business, not a unit test's
    # (a loaded 2-core CI machine is no stopwatch).
    assert all(s > 0 for s in step.samples)
    assert metrics["tflops"].median > 0


def test_tiny_gpt_with_config_and_gpu_reports_tokens_and_mfu_below_hfu() -> None:
    from harness.model import build_model, lm_loss, random_batch
    from harness.theory.flops import train_flops
    from harness.theory.hardware import gpu_spec

    torch.manual_seed(0)
    model = build_model(TINY_GPT, device="cpu")
    inputs = random_batch(TINY_GPT, 2, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gpu = gpu_spec("H100")
    metrics = measure_train_step(model, inputs, lm_loss, optimizer, clock=FakeClock(0, 0.02, 0.0),
                                 policy=POLICY, device="cpu", config=TINY_GPT, gpu=gpu,
                                 autocast_dtype=None)
    assert set(metrics) == {"step_time", "tflops", "flops_per_step", "tokens_per_s", "mfu",
                            "hfu"}  # and no memory metrics on a CPU
    assert metrics["tokens_per_s"].median == pytest.approx(2 * 32 / 0.02)
    analytic = train_flops(TINY_GPT, 2, 32, recompute="none", causal=False)
    assert metrics["flops_per_step"].theory == analytic.hardware
    peak = gpu.peak_flops("bf16")
    assert metrics["mfu"].median == pytest.approx(analytic.model / 0.02 / peak)
    assert 0 < metrics["mfu"].median <= metrics["hfu"].median < 1


def test_full_recompute_counts_more_flops_and_keeps_mfu_below_hfu() -> None:
    from harness.model import build_model, lm_loss, random_batch
    from harness.theory.flops import train_flops
    from harness.theory.hardware import gpu_spec

    torch.manual_seed(0)
    plain = build_model(TINY_GPT, device="cpu")
    recomputed = build_model(TINY_GPT, device="cpu", checkpoint_activations=True)
    inputs = random_batch(TINY_GPT, 2, 32)
    gpu = gpu_spec("H100")
    measured = {}
    for model, recompute in ((plain, "none"), (recomputed, "full")):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        measured[recompute] = measure_train_step(
            model, inputs, lm_loss, optimizer, clock=FakeClock(0, 0.02, 0.0), policy=POLICY,
            device="cpu", config=TINY_GPT, gpu=gpu, recompute=recompute, autocast_dtype=None)
        assert measured[recompute]["flops_per_step"].theory == train_flops(
            TINY_GPT, 2, 32, recompute=recompute).hardware
    plain_metrics, full_metrics = measured["none"], measured["full"]
    assert full_metrics["flops_per_step"].median > plain_metrics["flops_per_step"].median
    assert plain_metrics["mfu"].median == pytest.approx(plain_metrics["hfu"].median)
    assert full_metrics["mfu"].median < full_metrics["hfu"].median
    # Same step time, same model FLOPs: recomputation raises HFU, never MFU.
    assert full_metrics["mfu"].median == pytest.approx(plain_metrics["mfu"].median)


def test_train_step_on_cpu_with_bf16_autocast_counts_the_same_flops() -> None:
    model, inputs, optimizer = tiny_mlp()
    plain = measure_train_step(model, inputs, mse, optimizer, clock=FakeClock(0, 0.01),
                               policy=POLICY, device="cpu", autocast_dtype=None)
    model, inputs, optimizer = tiny_mlp()
    bf16 = measure_train_step(model, inputs, mse, optimizer, clock=FakeClock(0, 0.01),
                              policy=POLICY, device="cpu", autocast_dtype=torch.bfloat16)
    assert bf16["flops_per_step"].median == plain["flops_per_step"].median


@pytest.mark.parametrize("changes, message", [
    ({"inputs": (torch.randn(16, 32),)}, "inputs must be a pair"),
    ({"recompute": "some"}, "recompute must be one of none, selective, full; got 'some'"),
    ({"autocast_dtype": "bf16"}, "autocast_dtype must be a torch.dtype"),
    ({"gpu": object()}, "pass config="),
    ({"device": "cuda"}, "model has parameters on cpu, but device='cuda'"),
    ({"device": "tpu"}, "device must be 'cpu', 'cuda'"),
    ({"config": TINY_GPT}, "inputs\\[0\\] must be integer token ids of shape \\(batch, seq\\); "
                          "got a torch.float32 tensor of shape \\(16, 32\\)"),
    ({"loss_fn": lambda output, target: output}, "loss_fn must return a scalar tensor"),
])
def test_train_step_rejects_bad_arguments_with_a_clear_message(changes: dict,
                                                                message: str) -> None:
    model, inputs, optimizer = tiny_mlp()
    arguments: dict[str, Any] = {"model": model, "inputs": inputs, "loss_fn": mse,
                                 "optimizer": optimizer, "clock": FakeClock(0, 0.01),
                                 "policy": POLICY, "device": "cpu", "autocast_dtype": None}
    arguments.update(changes)
    with pytest.raises(ValueError, match=message):
        measure_train_step(**arguments)


@pytest.mark.parametrize("changes, message", [
    ({"peak_dtype": "int3"}, "dtype 'int3' is not one of"),
    ({"precision": "fp12"}, "precision='fp12'.*precision must be one of"),
    ({"optimizer_name": "lion-9000"}, "optimizer_name='lion-9000'.*must be one of"),
])
def test_bad_analytic_settings_fail_before_any_step(changes: dict, message: str) -> None:
    from harness.model import build_model, random_batch
    from harness.theory.hardware import gpu_spec

    model = build_model(TINY_GPT, device="cpu")
    calls: list[int] = []

    def never_called(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        raise AssertionError("a step ran before the settings were checked")

    with pytest.raises(ValueError, match=message):
        measure_train_step(model, random_batch(TINY_GPT, 2, 16), never_called,
                           torch.optim.SGD(model.parameters(), lr=0.1), clock=FakeClock(0, 0.01),
                           policy=POLICY, device="cpu", config=TINY_GPT, gpu=gpu_spec("H100"),
                           autocast_dtype=None, **changes)
    assert calls == []


def test_train_step_input_on_another_device_names_it() -> None:
    model, inputs, optimizer = tiny_mlp()
    with pytest.raises(ValueError, match="inputs\\[1\\] is on meta"):
        measure_train_step(model, (inputs[0], torch.empty(16, 8, device="meta")), mse,
                           optimizer, clock=FakeClock(0, 0.01), policy=POLICY, device="cpu",
                           autocast_dtype=None)


# data loader


def loader_of(batches: int, batch_size: int = 4, **kwargs: Any) -> DataLoader:
    data = TensorDataset(torch.randn(batches * batch_size, 3), torch.arange(batches * batch_size))
    return DataLoader(data, batch_size=batch_size, num_workers=0, **kwargs)


def test_dataloader_on_cpu_reports_wait_time_and_batches_per_second() -> None:
    metrics = measure_dataloader(loader_of(8), device="cpu", steps=5)
    assert set(metrics) == {"wait_time", "batches_per_s"}  # no copy on a CPU
    assert metrics["wait_time"].count == 5
    assert all(s > 0 for s in metrics["wait_time"].samples)
    assert metrics["batches_per_s"].median > 0
    assert "no batch tensor was in pinned memory" in metrics["wait_time"].note


def test_dataloader_wait_time_comes_from_the_given_clock() -> None:
    metrics = measure_dataloader(loader_of(8), device="cpu", steps=4,
                                 clock=FakeClock(0, 0.003, noise_cv=0.0))
    assert metrics["wait_time"].samples == (0.003,) * 4


def test_dataloader_samples_are_means_over_windows_of_whole_worker_cycles() -> None:
    # 32 steps without workers: windows of 4 batches, 8 samples, each the mean of its window.
    assert window_size(32, 0) == 4
    assert window_size(16, 2) == 2 and window_size(16, 4) == 4 and window_size(3, 8) == 8
    metrics = measure_dataloader(loader_of(40), device="cpu", steps=32,
                                 clock=FakeClock(0, 0.002, noise_cv=0.0))
    assert metrics["wait_time"].samples == pytest.approx((0.002,) * 8)
    assert metrics["batches_per_s"].count == 8


def test_dataloader_takes_one_warmup_batch_then_steps_batches() -> None:
    seen: list[int] = []

    class Counting(IterableDataset):
        def __iter__(self) -> Iterator[torch.Tensor]:
            for i in range(100):
                seen.append(i)
                yield torch.full((2,), i)

    measure_dataloader(Counting(), device="cpu", steps=6)
    assert seen == list(range(7))


def test_dataloader_shorter_than_steps_plus_one_names_the_sizes() -> None:
    with pytest.raises(ValueError, match="the loader has 8 batch\\(es\\), but steps=8 needs 9"):
        measure_dataloader(loader_of(8), device="cpu", steps=8)


def test_dataloader_without_length_that_runs_out_names_the_sizes() -> None:
    batches = iter([torch.ones(2)] * 3)
    with pytest.raises(ValueError, match="ran out after 3 batch\\(es\\), but steps=5 needs 6"):
        measure_dataloader(batches, device="cpu", steps=5)


def test_dataloader_that_yields_no_tensors_is_an_error() -> None:
    with pytest.raises(ValueError, match="must yield tensors.*first batch is a str"):
        measure_dataloader(["a", "b", "c"], device="cpu", steps=2)


@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_dataloader_steps_must_be_a_positive_integer(steps: object) -> None:
    with pytest.raises(ValueError, match=f"steps must be a positive integer, got {steps!r}"):
        measure_dataloader(loader_of(4), device="cpu", steps=steps)  # type: ignore[arg-type]


def test_batch_tensors_finds_tensors_in_nested_containers() -> None:
    a, b, c = torch.ones(1), torch.ones(2), torch.ones(3)
    assert batch_tensors({"x": (a, [b]), "meta": "name", "y": {"z": c}}) == [a, b, c]


# memory helpers


@pytest.mark.parametrize("helper", [reset_peak_memory, peak_memory])
def test_peak_memory_on_cpu_is_an_error_naming_the_device(helper: Any) -> None:
    with pytest.raises(ValueError, match="got device='cpu'"):
        helper("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("helper", [device_memory_usage, device_memory_used_bytes,
                                    cuda_context_bytes])
def test_device_memory_without_cuda_says_so(helper: Any) -> None:
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
        helper(0)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.is_initialized(),
                    reason="checks that CUDA is left uninitialised")
def test_releasing_cached_memory_leaves_uninitialised_cuda_alone() -> None:
    release_cached_memory()
    assert not torch.cuda.is_initialized()


# On a GPU machine


@needs_cuda
def test_releasing_cached_memory_returns_freed_blocks_to_the_driver() -> None:
    release_cached_memory()
    before = torch.cuda.memory_reserved()
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    del block
    assert torch.cuda.memory_reserved() >= before + 64 * 2**20
    release_cached_memory()
    assert torch.cuda.memory_reserved() <= before


@needs_cuda
def test_cuda_train_step_reports_memory_beside_its_estimate() -> None:
    from harness.measure.clocks import CudaEventClock
    from harness.model import build_model, lm_loss, random_batch
    from harness.theory.hardware import gpu_spec

    torch.manual_seed(0)
    model = build_model(TINY_GPT, device="cuda")
    inputs = random_batch(TINY_GPT, 4, 32, device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics = measure_train_step(model, inputs, lm_loss, optimizer, clock=CudaEventClock(),
                                 policy=POLICY, device="cuda", config=TINY_GPT,
                                 gpu=gpu_spec(torch.cuda.get_device_name()))
    allocated = metrics["peak_allocated_bytes"].median
    assert 0 < allocated <= metrics["peak_reserved_bytes"].median
    assert metrics["device_memory_bytes"].median > metrics["peak_reserved_bytes"].median
    assert metrics["memory_vs_estimate"].theory == 1.0
    assert metrics["memory_vs_estimate"].median > 0
    assert 0 < metrics["mfu"].median <= metrics["hfu"].median < 1


@needs_cuda
def test_cuda_context_is_what_torch_does_not_see() -> None:
    torch.ones(1, device="cuda")
    context = cuda_context_bytes(0)
    usage = device_memory_usage(0)
    if usage.per_process:
        assert context is not None and context > 0
    else:
        assert context is None


@needs_cuda
def test_pinned_loader_reports_copy_time_and_bandwidth() -> None:
    metrics = measure_dataloader(loader_of(6, batch_size=256, pin_memory=True), device="cuda",
                                 steps=5)
    assert {"h2d_time", "h2d_bandwidth"} <= set(metrics)
    assert metrics["h2d_time"].count == 5
    assert metrics["h2d_bandwidth"].median > 0
    assert "all batch tensors were in pinned memory" in metrics["h2d_time"].note
