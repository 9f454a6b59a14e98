"""The regressions PERF_INJECT injects move the step's time, not its FLOP count: the extra
GEMMs run, yet the FLOP counter of the step (a dispatch mode) never sees them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.measure.flop_count import count_flops
from harness.workloads import injections

SIZE = 8  # small GEMMs for the CPU: 2 * 8^3 = 1024 FLOPs each, plain to spot in a count


def _model() -> torch.nn.Linear:
    return torch.nn.Linear(16, 4, bias=False)


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(output, target)


def _step_flops(model: torch.nn.Module, loss_fn: Any) -> int:
    """FLOPs FlopCounterMode counts for one forward + backward through `loss_fn`."""
    inputs, target = torch.ones(2, 16), torch.zeros(2, 4)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(inputs), target).backward()
    return int(counter.get_total_flops())


@pytest.fixture
def counted_mm(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The shapes of the products every torch.mm call returns (the real torch.mm still runs)."""
    shapes: list[tuple[int, ...]] = []
    real_mm = torch.mm

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        product = real_mm(a, b)
        shapes.append(tuple(product.shape))
        return product

    monkeypatch.setattr(torch, "mm", mm)
    return shapes


def test_extra_gemms_run_but_flop_counter_does_not_count_them(
        monkeypatch: pytest.MonkeyPatch, counted_mm: list[tuple[int, ...]]) -> None:
    monkeypatch.setattr(injections, "EXTRA_GEMM_SIZE", SIZE)
    model = _model()
    monkeypatch.delenv(injections.INJECT_VARIABLE, raising=False)
    plain = _step_flops(model, injections.inject(model, _loss, "cpu"))
    assert plain > 0 and not counted_mm

    monkeypatch.setenv(injections.INJECT_VARIABLE, "extra_gemm")
    injected = _step_flops(model, injections.inject(model, _loss, "cpu"))

    assert counted_mm == [(SIZE, SIZE)] * injections.EXTRA_GEMMS
    assert injected == plain, (
        f"the injected GEMMs are wasted work, not model FLOPs: FlopCounterMode counted "
        f"{injected} with them, {plain} without")


def test_extra_gemms_are_hidden_from_the_harness_step_counter(
        monkeypatch: pytest.MonkeyPatch, counted_mm: list[tuple[int, ...]]) -> None:
    monkeypatch.setattr(injections, "EXTRA_GEMM_SIZE", SIZE)
    monkeypatch.setenv(injections.INJECT_VARIABLE, "extra_gemm")
    model = _model()
    loss_fn = injections.inject(model, _loss, "cpu")
    inputs, target = torch.ones(2, 16), torch.zeros(2, 4)

    _, count = count_flops(lambda: loss_fn(model(inputs), target).backward())

    assert len(counted_mm) == injections.EXTRA_GEMMS
    assert count.complete and count.total == _step_flops(model, _loss)


def test_dispatch_modes_are_active_again_after_the_extra_gemms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(injections, "EXTRA_GEMM_SIZE", SIZE)
    monkeypatch.setenv(injections.INJECT_VARIABLE, "extra_gemm")
    model = _model()
    loss_fn = injections.inject(model, _loss, "cpu")
    inputs, target = torch.ones(2, 16), torch.zeros(2, 4)

    with FlopCounterMode(display=False) as counter:
        loss_fn(model(inputs), target)
        torch.mm(torch.ones(SIZE, SIZE), torch.ones(SIZE, SIZE))  # after: counted again

    # 2*2*16*4 for the forward linear, 2*8^3 for the GEMM run after the injected ones.
    assert counter.get_total_flops() == 2 * 2 * 16 * 4 + 2 * SIZE ** 3


def test_a_torch_without_the_mode_hider_warns_that_the_gemms_are_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils._python_dispatch as python_dispatch

    monkeypatch.delattr(python_dispatch, "_disable_current_modes")
    monkeypatch.setattr(injections, "EXTRA_GEMM_SIZE", SIZE)
    monkeypatch.setenv(injections.INJECT_VARIABLE, "extra_gemm")
    model = _model()
    with pytest.warns(UserWarning, match="counts the injected GEMMs"):
        loss_fn = injections.inject(model, _loss, "cpu")

    # The fallback still runs the GEMMs (visibly): the step is slower, as asked.
    injected = _step_flops(model, loss_fn)
    assert injected == _step_flops(model, _loss) + injections.EXTRA_GEMMS * 2 * SIZE ** 3
