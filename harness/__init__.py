"""perf-harness: keep the training performance of PyTorch models from silently getting worse.

The theory (configs, formulas, GPU table) imports no torch; `build_model` and the measurement
functions do, lazily, when they are first used.
"""

from __future__ import annotations

from typing import Any

from harness.gate.results import Measurement, Metric, RunResults
from harness.theory.config import TransformerConfig
from harness.theory.flops import (
    Flops,
    achieved_tflops,
    decode_flops,
    forward_flops,
    hfu,
    mfu,
    prefill_flops,
    quick_tflops_estimate,
    six_nd,
    train_flops,
    two_n,
)
from harness.theory.hardware import GPUSpec, fingerprint, gpu_spec, register_gpu
from harness.theory.hf import config_from_hf, load_hf_config
from harness.theory.memory.breakdown import MemoryBreakdown
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.states import bytes_per_param
from harness.theory.memory.training import training_memory
from harness.theory.parallel import (
    data_parallel_size,
    global_batch_size,
    grad_accum_steps,
    tokens_per_step,
)
from harness.theory.params import non_embedding_params, num_params, param_breakdown
from harness.theory.sizing import gemm_quantization, sizing_findings
from harness.theory.zoo import get_model, list_models

# Names that need torch, resolved on first use so `import harness` stays light.
_LAZY: dict[str, str] = {
    "build_model": "harness.model",
    "lm_loss": "harness.model",
    "random_batch": "harness.model",
    "TimingPolicy": "harness.measure.sampling",
    "measure_time": "harness.measure.sampling",
    "measure_train_step": "harness.measure.train_step",
    "measure_dataloader": "harness.measure.dataloader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


__all__ = [
    "Flops", "GPUSpec", "Measurement", "MemoryBreakdown", "Metric", "RunResults",
    "TransformerConfig", "achieved_tflops", "bytes_per_param", "config_from_hf",
    "data_parallel_size", "decode_flops", "fingerprint", "forward_flops", "gemm_quantization",
    "get_model", "global_batch_size", "gpu_spec", "grad_accum_steps", "hfu", "inference_memory",
    "kv_cache_bytes", "list_models", "load_hf_config", "mfu", "non_embedding_params",
    "num_params", "param_breakdown", "prefill_flops", "quick_tflops_estimate", "register_gpu",
    "six_nd", "sizing_findings", "tokens_per_step", "train_flops", "training_memory", "two_n",
    *_LAZY,
]
