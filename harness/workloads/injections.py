"""Regressions injected on purpose into the suite's training steps, to check on a GPU that the
kernel diff of a regression names its cause (`harness.gate.kernel_diff`).

Set PERF_INJECT before running the measured training tests against a baseline of the unchanged
code, e.g. `PERF_INJECT=extra_gemm pytest -m gpu perf_tests/test_training.py`:

- `extra_gemm`: EXTRA_GEMMS more bf16 GEMMs of 4096^3 in the forward of every step: the diff
  should name a GEMM line and the anatomy move to the contractions. They are wasted work, not
  the model's: hidden from FlopCounterMode (any active dispatch mode), so the step's FLOP count,
  MFU and HFU stay the model's and only its time moves;
- `foreach_adamw`: AdamW's for-loop implementation (foreach=False, fused=False) in place of the
  fused kernel: the diff should name new element-wise kernels in the optimizer phase and the
  fused optimizer kernel vanished;
- `host_overhead`: HOST_OVERHEAD_SECONDS of Python work (arithmetic, not a sleep) at the start
  of every forward, while the GPU has little queued: the diff should name the GPU's idle time
  as the cause and blame no kernel.

Unset (or empty), nothing is injected.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from harness.checks import require_choice

INJECT_VARIABLE = "PERF_INJECT"
INJECTIONS: tuple[str, ...] = ("extra_gemm", "foreach_adamw", "host_overhead")

# 24 GEMMs of 4096^3 in bf16 are 3.3 TFLOP: about 5 ms at the ~670 TFLOP/s an H200 sustains,
# 6-7% of the suite's 70-80 ms training steps, three times the 2% default tolerance. Their
# operands take 96 MiB, under 1% of the steps' 16 GiB peak: no memory regression with it.
EXTRA_GEMMS = 24
EXTRA_GEMM_SIZE = 4096
# 35 ms of Python per step: 30% of the host-bound Llama-style 336M step (117 ms on an H200,
# GPU idle 43% of it; a fresh machine's baseline, 2026-12-02), a third of the gpt2-medium one.
HOST_OVERHEAD_SECONDS = 0.035


def injection() -> str | None:
    """The injection PERF_INJECT asks for, or None; a ValueError naming the variable and the
    choices for any other value."""
    value = os.environ.get(INJECT_VARIABLE, "").strip()
    if not value:
        return None
    return require_choice(f"environment variable {INJECT_VARIABLE}", value, INJECTIONS)


def adamw_options(*, fused: bool) -> dict[str, Any]:
    """AdamW's implementation options: fused as asked, or the for-loop one under
    PERF_INJECT=foreach_adamw."""
    if injection() == "foreach_adamw":
        return {"fused": False, "foreach": False}
    return {"fused": fused}


def inject(model: torch.nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
           device: str) -> Callable[[Any, Any], torch.Tensor]:
    """The loss function a step should use under PERF_INJECT: for extra_gemm `loss_fn` with
    the GEMMs run before it (in the step's forward phase, out of sight of the FLOP counter);
    for host_overhead `loss_fn`, with the Python work registered as a forward pre-hook of
    `model`; else `loss_fn` itself."""
    chosen = injection()
    if chosen == "extra_gemm":
        generator = torch.Generator(device=device).manual_seed(0)
        a, b = (torch.randn(EXTRA_GEMM_SIZE, EXTRA_GEMM_SIZE, device=device,
                            dtype=torch.bfloat16, generator=generator) for _ in range(2))

        hide = _dispatch_mode_hider()

        def with_gemms(output: Any, target: Any) -> torch.Tensor:
            with hide():
                for _ in range(EXTRA_GEMMS):
                    torch.mm(a, b)
            return loss_fn(output, target)

        return with_gemms
    if chosen == "host_overhead":
        def before_forward(module: torch.nn.Module, args: Any) -> None:
            python_work(HOST_OVERHEAD_SECONDS)

        model.register_forward_pre_hook(before_forward)
    return loss_fn


def _dispatch_mode_hider() -> Callable[[], contextlib.AbstractContextManager[object]]:
    """A context manager factory that runs its block with no TorchDispatchMode active, so the
    FLOP counter of the step (a dispatch mode) does not see the injected GEMMs.

    torch has no public way to step outside the active dispatch modes;
    `torch.utils._python_dispatch._disable_current_modes` (private, present from torch 2.0
    through 2.13) is what torch's own tracing uses for it. Should a torch lack it, the GEMMs
    run visibly, with a warning that the step's FLOP count will include them."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:
        warnings.warn(
            f"{INJECT_VARIABLE}=extra_gemm: this torch ({torch.__version__}) lacks "
            f"torch.utils._python_dispatch._disable_current_modes, so FlopCounterMode counts "
            f"the injected GEMMs and the step's FLOP count and MFU include them", stacklevel=3)
        return contextlib.nullcontext
    hider: Callable[[], contextlib.AbstractContextManager[object]] = _disable_current_modes
    return hider


def python_work(seconds: float) -> int:
    """Keep the interpreter busy with arithmetic for `seconds` (host work, not a sleep: the
    thread holds the CPU and the GIL as slow Python code does)."""
    deadline = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < deadline:
        total += sum(range(1000))
    return total
