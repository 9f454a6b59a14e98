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
    LEAK_THRESHOLD_BYTES,
    Leak,
    MemoryLedger,
    MemoryStart,
    cuda_context_bytes,
    device_memory_usage,
    device_memory_used_bytes,
    held_memory,
    peak_memory,
    release_cached_memory,
    reset_peak_memory,
    run_memory_ledger,
    state_bytes_held,
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
    ({"recompute": "some"}, "recompute must be one of 'none', 'selective', 'full'; got 'some'"),
    ({"autocast_dtype": "bf16"}, "autocast_dtype must be a torch.dtype"),
    ({"gpu": object()}, "pass config="),
    ({"device": "cuda"}, "model has parameters on cpu, but device='cuda'"),
    ({"device": "tpu"}, "device must be 'cpu', 'cuda'"),
    ({"config": TINY_GPT}, "inputs\\[0\\] must be integer token ids of shape \\(batch, seq\\), "
                          "or a dict with them as 'input_ids'; got a torch.float32 tensor of "
                          "shape \\(16, 32\\)"),
    ({"loss_fn": lambda output, target: output}, "loss_fn must return a scalar tensor"),
    ({"model": nn.ReLU()}, "model \\(ReLU\\) has no parameters that require gradients, so a "
                           "training step has nothing to train; pass the model whose parameters "
                           "the optimizer updates"),
    ({"optimizer": torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)},
     "the optimizer updates none of the parameters of model \\(Sequential\\); build it from "
     "them"),
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


class FakeDevice:
    """What a ledger reads: allocated bytes set by the test, reserved twice that."""

    def __init__(self) -> None:
        self.allocated = 0

    def read(self) -> tuple[int, int]:
        return self.allocated, 2 * self.allocated


GIB = 2**30


def test_memory_held_when_a_test_begins_is_its_starting_point() -> None:
    device = FakeDevice()
    ledger = MemoryLedger(device.read)
    device.allocated = 3 * GIB  # the process's own, before any test
    start = ledger.begin("t.py::first")
    assert start == MemoryStart(allocated_bytes=3 * GIB, reserved_bytes=6 * GIB, leaks=())
    device.allocated = 5 * GIB  # the test's model, still alive while it runs
    device.allocated = 3 * GIB  # and freed at its end
    assert ledger.end("t.py::first") is None


def test_memory_a_test_leaves_behind_is_a_leak_named_to_the_tests_after_it() -> None:
    device = FakeDevice()
    ledger = MemoryLedger(device.read)
    ledger.begin("t.py::failing")
    device.allocated = 6 * GIB  # a failed test's model, kept alive past its end
    leak = ledger.end("t.py::failing")
    assert leak == Leak(nodeid="t.py::failing", bytes=6 * GIB)
    start = ledger.begin("t.py::next")
    assert start.allocated_bytes == 6 * GIB  # subtracted from this test's peaks
    assert start.leaks == (leak,)
    assert "leaked by earlier tests: t.py::failing (6.00 GiB)" in start.describe()
    ledger.end("t.py::next")
    device.allocated = 0  # the leaked model is freed at last
    assert ledger.begin("t.py::later").leaks == ()


def test_allocator_rounding_left_after_a_test_is_no_leak() -> None:
    device = FakeDevice()
    ledger = MemoryLedger(device.read)
    ledger.begin("t.py::a")
    device.allocated = LEAK_THRESHOLD_BYTES
    assert ledger.end("t.py::a") is None


def test_a_test_that_never_began_cannot_end() -> None:
    with pytest.raises(ValueError, match="test 't.py::x' ended without having begun"):
        MemoryLedger(FakeDevice().read).end("t.py::x")


def test_memory_metrics_subtract_what_was_held_and_show_both_breakdowns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import step
    from harness.measure.memory import DeviceMemoryUsage
    from harness.theory.memory.breakdown import MemoryBreakdown

    # The CUDA readings as a GPU would give them: 10 GiB peak allocated, 12 GiB reserved.
    monkeypatch.setattr(step, "peak_memory", lambda device: (10 * GIB, 12 * GIB))
    monkeypatch.setattr(step, "device_memory_usage",
                        lambda index: DeviceMemoryUsage(used_bytes=13 * GIB, per_process=True))
    start = MemoryStart(allocated_bytes=2 * GIB, reserved_bytes=3 * GIB,
                        leaks=(Leak("t.py::failed", 2 * GIB),))
    estimate = MemoryBreakdown({"weights": 2 * GIB, "optimizer_states": 4 * GIB,
                                "layer_activations": GIB, "gradients": 0}, phase="loss_backward")
    states = {"parameters": 2 * GIB, "gradients": 2 * GIB, "optimizer_states": 4 * GIB}
    metrics = step.memory_metrics("cuda:0", estimate, "bf16-autocast, adamw", start, states)
    assert metrics["peak_allocated_bytes"].median == 8 * GIB
    assert metrics["peak_reserved_bytes"].median == 9 * GIB
    assert metrics["device_memory_bytes"].median == 10 * GIB
    assert "leaked by earlier tests: t.py::failed (2.00 GiB)" in metrics[
        "peak_allocated_bytes"].note
    ratio = metrics["memory_vs_estimate"]
    assert ratio.median == 8 / 7
    assert ("estimate at its peak phase 'loss_backward': optimizer_states 4.00 GiB, weights "
            "2.00 GiB, layer_activations 1.00 GiB; measured: optimizer_states 4.00 GiB, "
            "parameters 2.00 GiB, gradients 2.00 GiB, the rest of the peak (activations, "
            "logits, working memory) 0.00 B") in ratio.note


def test_a_run_keeps_one_ledger_on_cuda_and_none_on_cpu() -> None:
    class Run:
        pass

    run = Run()
    assert run_memory_ledger(run, "cpu") is None
    ledger = run_memory_ledger(run, "cuda")
    assert isinstance(ledger, MemoryLedger)
    assert run_memory_ledger(run, "cuda") is ledger
    assert run_memory_ledger(Run(), "cuda") is not ledger


def test_held_memory_needs_a_cuda_device() -> None:
    with pytest.raises(ValueError, match="got device='cpu'"):
        held_memory("cpu")


def test_model_states_held_count_parameters_gradients_and_optimizer_states() -> None:
    model, inputs, _ = tiny_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    parameters = sum(p.numel() for p in model.parameters()) * 4  # fp32
    assert state_bytes_held(model, optimizer) == {
        "parameters": parameters, "gradients": 0, "optimizer_states": 0}
    mse(model(inputs[0]), inputs[1]).backward()
    optimizer.step()
    held = state_bytes_held(model, optimizer)
    assert held["gradients"] == parameters
    # Two fp32 moments per parameter and one step counter (a 0-d fp32 tensor) per tensor.
    assert held["optimizer_states"] == 2 * parameters + 4 * len(list(model.parameters()))


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


@needs_cuda
def test_memory_left_by_an_earlier_test_never_moves_the_next_tests_peak() -> None:
    from harness.measure.clocks import CudaEventClock
    from harness.model import build_model, lm_loss, random_batch

    ledger = MemoryLedger(lambda: held_memory("cuda"))
    peaks = []
    leftover = []
    for name in ("first", "after_a_leak"):
        start = ledger.begin(f"t.py::{name}")
        torch.manual_seed(0)
        model = build_model(TINY_GPT, device="cuda")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        metrics = measure_train_step(model, random_batch(TINY_GPT, 4, 32, device="cuda"),
                                     lm_loss, optimizer, clock=CudaEventClock(), policy=POLICY,
                                     device="cuda", memory_start=start)
        peaks.append(metrics["peak_allocated_bytes"].median)
        leftover.append(torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda"))  # a leak
        del model, optimizer
        ledger.end(f"t.py::{name}")
    assert peaks[1] == peaks[0], (
        f"a 256 MiB tensor left by the first test moved the second's peak: {peaks}")
    assert "t.py::first" in metrics["peak_allocated_bytes"].note
