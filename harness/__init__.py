"""perf-harness: keep the training performance of PyTorch models from silently getting worse.

Every name here is imported on first use (PEP 562 `__getattr__`), so `import harness`, which the
pytest plugin does in every project that has perf-harness installed, costs next to nothing; the
theory (configs, formulas, GPU table) imports no torch, `build_model` and the measurement
functions do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.gate.results import Measurement, Metric, RunResults
    from harness.measure.dataloader import measure_dataloader
    from harness.measure.sampling import TimingPolicy, measure_time
    from harness.measure.train_step import measure_train_step
    from harness.model import build_model, lm_loss, random_batch
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
    from harness.theory.mla import MLA
    from harness.theory.moe import MoE
    from harness.theory.parallel import (
        data_parallel_size,
        global_batch_size,
        grad_accum_steps,
        tokens_per_step,
    )
    from harness.theory.params import (
        active_params,
        non_embedding_params,
        num_params,
        param_breakdown,
    )
    from harness.theory.sizing import gemm_quantization, sizing_findings
    from harness.theory.zoo import get_model, list_models

# Where each public name lives.
_LAZY: dict[str, str] = {
    "Measurement": "harness.gate.results",
    "Metric": "harness.gate.results",
    "RunResults": "harness.gate.results",
    "TransformerConfig": "harness.theory.config",
    "Flops": "harness.theory.flops",
    "achieved_tflops": "harness.theory.flops",
    "decode_flops": "harness.theory.flops",
    "forward_flops": "harness.theory.flops",
    "hfu": "harness.theory.flops",
    "mfu": "harness.theory.flops",
    "prefill_flops": "harness.theory.flops",
    "quick_tflops_estimate": "harness.theory.flops",
    "six_nd": "harness.theory.flops",
    "train_flops": "harness.theory.flops",
    "two_n": "harness.theory.flops",
    "GPUSpec": "harness.theory.hardware",
    "fingerprint": "harness.theory.hardware",
    "gpu_spec": "harness.theory.hardware",
    "register_gpu": "harness.theory.hardware",
    "config_from_hf": "harness.theory.hf",
    "load_hf_config": "harness.theory.hf",
    "MemoryBreakdown": "harness.theory.memory.breakdown",
    "inference_memory": "harness.theory.memory.inference",
    "kv_cache_bytes": "harness.theory.memory.inference",
    "bytes_per_param": "harness.theory.memory.states",
    "training_memory": "harness.theory.memory.training",
    "MLA": "harness.theory.mla",
    "MoE": "harness.theory.moe",
    "data_parallel_size": "harness.theory.parallel",
    "global_batch_size": "harness.theory.parallel",
    "grad_accum_steps": "harness.theory.parallel",
    "tokens_per_step": "harness.theory.parallel",
    "active_params": "harness.theory.params",
    "non_embedding_params": "harness.theory.params",
    "num_params": "harness.theory.params",
    "param_breakdown": "harness.theory.params",
    "gemm_quantization": "harness.theory.sizing",
    "sizing_findings": "harness.theory.sizing",
    "get_model": "harness.theory.zoo",
    "list_models": "harness.theory.zoo",
    # These need torch.
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
    "TimingPolicy", "build_model", "lm_loss", "measure_dataloader", "measure_time",
    "measure_train_step", "random_batch", "MLA", "MoE", "active_params",
]
