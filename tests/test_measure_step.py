"""A step the user owns (`measure_step`, `perf.step`), models as they come (Hugging Face inputs
and outputs, no parameters), a diverged loss, and `Measurement` as a read-only mapping. CPU
only, with the fake clock where numbers must be exact; the plugin through `pytester`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from harness.gate.results import Measurement, Metric
from harness.measure.sampling import TimingPolicy
from harness.measure.step import MeasurementError, measure_step, require_no_argument_callable
from harness.measure.train_step import measure_train_step, model_output
from harness.model import build_model, lm_loss, random_batch
from harness.testing import FakeClock
from harness.theory.config import TransformerConfig
from harness.theory.flops import flop_counter_flops, train_flops
from harness.theory.hardware import gpu_spec

POLICY = TimingPolicy(warmup_seconds=0.0, budget_seconds=1e9, min_samples=4, max_samples=4,
                      min_sample_seconds=1e-6)
TINY_LLAMA = TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                               vocab_size=64, mlp="swiglu", tied_embeddings=False, bias=False,
                               norm="rmsnorm", position="rope", max_position_embeddings=32,
                               name="tiny-llama")


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# a step the test owns


def accumulating_step(micro_batches: int) -> tuple[Callable[[], torch.Tensor], nn.Module]:
    """A step with gradient accumulation and clipping, as a training loop writes it."""
    torch.manual_seed(0)
    model = build_model(TINY_LLAMA, device="cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [random_batch(TINY_LLAMA, 2, 16) for _ in range(micro_batches)]

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for tokens, targets in batches:
            loss = lm_loss(model(tokens), targets) / micro_batches
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return total

    return step, model


def test_an_accumulating_step_reports_tokens_flops_and_mfu_of_every_micro_batch() -> None:
    step, _ = accumulating_step(micro_batches=3)
    gpu = gpu_spec("H100")
    metrics = measure_step(step, clock=FakeClock(0, 0.05, 0.0), policy=POLICY,
                           device="cpu", batch_size=2, seq_len=16, micro_batches=3,
                           config=TINY_LLAMA, gpu=gpu)
    assert metrics["tokens_per_s"].median == pytest.approx(3 * 2 * 16 / 0.05)
    # Three micro-batches of what FlopCounterMode counts for one (the CPU flash kernel too).
    assert metrics["flops_per_step"].median == 3 * flop_counter_flops(TINY_LLAMA, 2, 16)
    assert metrics["flops_per_step"].theory == 3 * train_flops(TINY_LLAMA, 2, 16).hardware
    assert metrics["mfu"].median == pytest.approx(
        3 * train_flops(TINY_LLAMA, 2, 16).model / 0.05 / gpu.peak_flops("bf16"))


def test_a_step_without_shape_reports_time_and_counted_flops_only() -> None:
    step, _ = accumulating_step(micro_batches=1)
    metrics = measure_step(step, clock=FakeClock(0, 0.05, 0.0), policy=POLICY,
                           device="cpu")
    assert set(metrics) == {"step_time", "tflops", "flops_per_step"}


@pytest.mark.parametrize(("arguments", "message"), [
    ({"batch_size": 2}, "batch_size and seq_len go together"),
    ({"config": TINY_LLAMA}, "a config's FLOPs and memory need the step's shape"),
    ({"batch_size": 2, "seq_len": 16, "micro_batches": 0},
     "micro_batches must be a positive integer, got 0"),
    ({"batch_size": 2, "seq_len": 16, "gpu": gpu_spec("H100")}, "gpu is only used for MFU/HFU"),
])
def test_step_settings_are_checked_before_any_step(arguments: dict[str, object],
                                                   message: str) -> None:
    calls: list[int] = []
    with pytest.raises(ValueError, match=message):
        measure_step(lambda: calls.append(1), clock=FakeClock(0, 0.01), policy=POLICY,
                     device="cpu", **arguments)
    assert calls == []


def test_a_function_that_needs_arguments_is_named_with_the_fix() -> None:
    def train(model: nn.Module, lr: float, steps: int = 1) -> None:
        pass

    with pytest.raises(ValueError, match="fn must be a callable taking no arguments, but "
                                         "'.*train' needs model, lr; bind them first, e.g. "
                                         "lambda: f\\(x\\) or functools.partial\\(f, x\\)"):
        require_no_argument_callable("fn", train)
    bound = functools.partial(train, nn.Linear(1, 1), 0.1)
    assert require_no_argument_callable("fn", bound) is bound
    assert require_no_argument_callable("fn", torch.cuda.is_available) is torch.cuda.is_available


# a diverged loss


def test_a_nan_loss_at_the_first_step_fails_naming_the_step_and_the_loss() -> None:
    with pytest.raises(MeasurementError, match="the training loss is nan at step 1 \\(the "
                                               "first, untimed step\\)"):
        measure_step(lambda: torch.tensor(math.nan), clock=FakeClock(0, 0.01), policy=POLICY,
                     device="cpu")


def test_a_loss_that_diverges_during_the_samples_fails_after_them() -> None:
    calls = iter(range(10**6))

    def diverging() -> float:
        return math.inf if next(calls) >= 4 else 1.0

    clock = FakeClock(0, 0.01)
    with pytest.raises(MeasurementError, match="the training loss is inf at step (\\d+) \\(the "
                                               "last timed step\\)") as raised:
        measure_step(diverging, clock=clock, policy=POLICY, device="cpu")
    # Two untimed steps, then every call the clock timed: the last is the one named.
    assert f"at step {2 + clock.calls} " in str(raised.value)


def test_a_train_step_whose_loss_is_nan_is_not_measured() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = (torch.randn(8, 4), torch.full((8, 1), math.nan))
    with pytest.raises(MeasurementError, match="loss is nan at step 1"):
        measure_train_step(model, inputs, nn.functional.mse_loss, optimizer,
                           clock=FakeClock(0, 0.01), policy=POLICY, device="cpu",
                           autocast_dtype=None)


# models as they come


def test_a_hugging_face_model_trains_from_a_dict_of_inputs_and_its_output_object() -> None:
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    from harness.theory.hf import config_from_hf

    settings = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 64, "max_position_embeddings": 32}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings, use_cache=False))
    cfg = config_from_hf(settings)
    tokens, targets = random_batch(cfg, 2, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics = measure_train_step(
        model, ({"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}, targets),
        lm_loss, optimizer, clock=FakeClock(0, 0.01), policy=POLICY, device="cpu",
        config=cfg, autocast_dtype=None)
    assert metrics["tokens_per_s"].median == pytest.approx(2 * 16 / 0.01, rel=0.05)
    assert metrics["flops_per_step"].median > 0


def test_an_output_object_with_logits_reaches_the_loss_as_its_logits() -> None:
    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(nn.Module):
        def forward(self, x: torch.Tensor) -> Output:
            return Output(x * 2)

    x = torch.ones(2)
    assert torch.equal(model_output(Wrapped(), x), x * 2)
    assert torch.equal(model_output(nn.Identity(), {"input": x}), x)


# Measurement


def test_a_measurement_is_a_read_only_mapping_of_its_metrics() -> None:
    time = Metric(name="time", unit="s", better="lower", samples=(1.0, 2.0))
    flops = Metric(name="tflops", unit="TFLOP/s", better="higher", samples=(3.0,))
    measurement = Measurement(metrics={"time": time, "tflops": flops})
    assert list(measurement) == ["time", "tflops"]
    assert dict(measurement.items()) == {"time": time, "tflops": flops}
    assert len(measurement) == 2 and "time" in measurement and "x" not in measurement
    assert measurement.get("x") is None
    with pytest.raises(KeyError, match="no metric 'x' in this measurement; it has time, tflops"):
        measurement["x"]
    with pytest.raises(TypeError):
        measurement.metrics["x"] = time  # type: ignore[index]


# the plugin: bad input is a short, plain failure


CONFTEST = """
import pytest

from harness.testing import FakeClock, FakeGpuMonitor


@pytest.fixture
def perf_clock():
    return FakeClock(seed=0, base_seconds=1e-3)


@pytest.fixture
def perf_gpu_monitor():
    return FakeGpuMonitor()
"""


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
              test_body: str) -> pytest.RunResult:
    from harness.measure import environment

    monkeypatch.setattr(environment, "cuda_available", lambda: False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=test_body)
    return pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                              "--perf-device", "cpu", "--perf-confirm-delay", "0")


@pytest.mark.parametrize(("body", "message"), [
    ("perf.time(lambda x: x)",
     "E*ValueError: fn must be a callable taking no arguments, but '*<lambda>' needs x; "
     "bind them first*"),
    ("perf.train_step(torch.nn.ReLU(), (torch.ones(2), torch.ones(2)), "
     "torch.nn.functional.mse_loss, torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1))",
     "E*ValueError: model (ReLU) has no parameters that require gradients, so a training "
     "step has nothing to train; pass the model whose parameters the optimizer updates*"),
    ("perf.step(lambda: torch.tensor(float('nan')))",
     "step: the training loss is nan at step 1 (the first, untimed step): a diverged step is "
     "not a measurement of training*"),
])
def test_bad_input_to_perf_fails_the_test_with_a_short_plain_message(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, body: str,
        message: str) -> None:
    result = run_inner(pytester, monkeypatch,
                       f"import torch\n\n\ndef test_bad(perf):\n    {body}\n")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    # Not a deep traceback: no frame of the harness is shown, only the test's own line.
    assert "harness/" not in result.stdout.str()


def test_perf_step_records_the_metrics_of_a_step_the_test_owns(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, """
import torch


def test_owned_step(perf):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 16), torch.randn(8, 4)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    measured = perf.step(step, batch_size=8, seq_len=1, name_prefix="owned_")
    assert set(measured) == {"owned_step_time", "owned_tflops", "owned_flops_per_step",
                             "owned_tokens_per_s"}
    assert measured["owned_flops_per_step"].median == 2 * (2 * 8 * 16 * 4)
""")
    result.assert_outcomes(skipped=1)  # measured, with no baseline to judge against yet
