"""What a model should cost before it runs, as one typed `Estimate`: parameters, FLOPs, training
memory and whether it fits, the parallel layout and what each kind of parallelism does to per-GPU
memory, step time at an assumed MFU, the communication of a step and its time bounds, serving
memory and speed bounds, and the sizing rules.

Arithmetic only: every number comes from the formulas of `harness.theory`. `Estimate.to_dict()`
is the JSON `python -m harness estimate --json` prints; `harness.cli.estimate` draws the tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from harness.checks import (
    require_choice,
    require_positive,
    require_positive_fraction,
    require_positive_int,
)
from harness.theory.comm import StepCommunication, step_communication
from harness.theory.config import TransformerConfig, require_config
from harness.theory.flops import RECOMPUTE_KINDS, decode_flops, forward_flops, six_nd, train_flops
from harness.theory.hardware import gpu_spec
from harness.theory.memory.breakdown import (
    CUDA_CONTEXT_BYTES_RANGE,
    DISTRIBUTED_BUFFER_BYTES_RANGE,
    device_reserve_bytes,
)
from harness.theory.memory.inference import (
    inference_memory,
    kv_cache_bytes,
    max_concurrent_requests,
)
from harness.theory.memory.states import OPTIMIZERS, TRAINING_PRECISIONS, ZERO_STAGES
from harness.theory.memory.training import (
    ImpossibleLayout,
    LayoutMemory,
    memory_by_layout,
    training_memory,
)
from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    data_parallel_size,
    global_batch_size,
    tokens_per_step,
)
from harness.theory.params import (
    active_params,
    approx_params_gpt,
    non_embedding_params,
    param_breakdown,
)
from harness.theory.sizing import Finding, sizing_findings

# Assumed model FLOPs utilisation for time estimates. Source 001: Megatron-LM's published A100
# runs reach 41.5% (22B) to 56.3% (1T) MFU, and its H100 example achieves 400 of 989 TFLOP/s
# (40%). Well-tuned large runs land at 35-55%; 40% is a realistic middle, not a best case.
DEFAULT_MFU = 0.4
DEFAULT_GPU = "H100"
# Without a sequence length: the model's context, capped at 2048 tokens (GPT-3's training length,
# a common pre-training sequence) so that long-context models are not estimated at 32k by default.
DEFAULT_MAX_SEQ = 2048

# The matrix-unit dtype each training precision runs its GEMMs in, for the peak FLOP/s. "fp32"
# is a true fp32 GEMM: PyTorch leaves TF32 off for matmuls by default
# (torch.backends.cuda.matmul.allow_tf32 = False since 1.12).
PEAK_DTYPE: dict[str, str] = {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16",
                              "bf16": "bf16", "bf16-autocast": "bf16", "fp16-autocast": "fp16"}
# Bytes of each weight and KV-cache element when serving: 16-bit unless training is in fp32.
SERVING_BYTES: dict[str, int] = {"fp32": 4, "bf16-mixed": 2, "fp16-mixed": 2, "bf16": 2,
                                 "bf16-autocast": 2, "fp16-autocast": 2}

# GPUs of one HGX/DGX node: beyond it data parallelism crosses the network, several times slower
# than NVLink (400 Gb/s InfiniBand is 50 GB/s per GPU and direction).
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Workload:
    """What is estimated: micro-batch per GPU, sequence, GPUs and the training recipe."""

    micro_batch_size: int
    seq_len: int
    gpu: str
    num_gpus: int
    precision: str
    optimizer: str
    recompute: str
    causal: bool
    assumed_mfu: float


@dataclass(frozen=True)
class ParameterCounts:
    """The exact count (every expert), the parameters one token uses (`active`: top_k routed
    experts; the total for a dense model), Kaplan's non-embedding N, the textbook estimate and
    the exact parts."""

    total: int
    active: int
    non_embedding: int
    textbook_estimate: int
    breakdown: Mapping[str, int]


@dataclass(frozen=True)
class FlopCounts:
    """FLOPs per token, per micro-batch on one replica and per optimizer step on all of them;
    "model" excludes recomputation (MFU), "hardware" includes it (HFU)."""

    forward_per_token: float
    model_per_token: float
    hardware_per_token: float
    six_nd_per_token: float
    model_per_micro_batch: int
    hardware_per_micro_batch: int
    forward_per_step: int
    model_per_step: int
    hardware_per_step: int
    six_nd_per_step: int
    six_nd_relative_error: float


@dataclass(frozen=True)
class TrainingMemory:
    """Training memory of the busiest GPU, the reserve beside it, and whether both fit."""

    parts: Mapping[str, int]
    total_bytes: int
    reserve_bytes: int
    cuda_context_bytes_range: tuple[int, int]
    distributed_buffer_bytes_range: tuple[int, int] | None
    needed_bytes: int
    gpu_memory_bytes: int
    fits: bool


@dataclass(frozen=True)
class ParallelLayout:
    """How the GPUs are split (DP = GPUs / (TP*PP)) and the batch they make (GBS = MBS*DP*GAS)."""

    num_gpus: int
    tp: int
    pp: int
    dp: int
    sp: bool
    zero_stage: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    tokens_per_step: int


@dataclass(frozen=True)
class TrainingSpeed:
    """Step time and throughput at the assumed MFU, and the HFU that MFU implies."""

    peak_dtype: str
    peak_flops_per_gpu: float
    assumed_mfu: float
    implied_hfu: float
    step_seconds: float
    tokens_per_second: float
    tokens_per_second_per_gpu: float


@dataclass(frozen=True)
class Serving:
    """Serving on one GPU at a context of `context_len` tokens: memory, requests that fit, and
    lower bounds on time (prefill) and upper bounds on speed (decode)."""

    bytes_per_element: int
    context_len: int
    memory_parts: Mapping[str, int]
    memory_bytes_one_request: int
    kv_cache_bytes_per_token: int
    kv_cache_bytes_per_request: int
    max_concurrent_requests: int
    prefill_flops: int
    prefill_seconds_lower_bound: float
    decode_flops_per_token: int
    decode_bytes_per_token: int
    decode_tokens_per_second_bandwidth_bound: float
    decode_tokens_per_second_compute_bound: float
    decode_tokens_per_second_upper_bound: float


@dataclass(frozen=True)
class Estimate:
    """Everything `python -m harness estimate` reports, section by section."""

    model: TransformerConfig
    workload: Workload
    parameters: ParameterCounts
    flops: FlopCounts
    training_memory: TrainingMemory
    parallel: ParallelLayout
    parallel_memory: tuple[LayoutMemory | ImpossibleLayout, ...]
    communication: StepCommunication
    time: TrainingSpeed
    inference: Serving
    sizing: tuple[Finding, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, the sections in this order (what `--json` prints)."""
        return {
            "model": self.model.to_dict(),
            "workload": asdict(self.workload),
            "parameters": asdict(self.parameters),
            "flops": asdict(self.flops),
            "training_memory": asdict(self.training_memory),
            "parallel": asdict(self.parallel),
            "parallel_memory": [asdict(row) for row in self.parallel_memory],
            "communication": asdict(self.communication),
            "time": asdict(self.time),
            "inference": asdict(self.inference),
            "sizing": [asdict(finding) for finding in self.sizing],
            "notes": list(self.notes),
        }


def architecture_notes(cfg: TransformerConfig, seq_len: int) -> list[str]:
    """What the estimate of this architecture assumes beyond the classic dense block."""
    notes = []
    if cfg.moe is not None:
        moe = cfg.moe
        notes.append(
            f"mixture of experts: {cfg.num_moe_layers} of {cfg.num_layers} layers route each "
            f"token to {moe.top_k} of {moe.num_experts} experts"
            + (f" plus {moe.num_shared_experts} shared" if moe.num_shared_experts else "")
            + "; model FLOPs and 6ND count active parameters (Megatron-LM / torchtitan "
              "convention), memory counts every expert; expert-parallel all-to-all traffic "
              "is not modelled")
    if cfg.mla is not None:
        notes.append(f"multi-head latent attention: the KV cache holds the compressed latent "
                     f"({cfg.mla.cached_width} elements per token and layer); decode FLOPs "
                     f"use the absorbed form")
    windows = {w: n for w, n in cfg.window_counts().items() if w is not None}
    if windows:
        spans = ", ".join(f"{n} layers attend to the last {w:,} tokens" for w, n in windows.items())
        full = cfg.window_counts().get(None, 0)
        notes.append(f"sliding windows: {spans}, {full} to the whole context; attention FLOPs "
                     f"and the KV cache count only the window"
                     + ("" if min(windows) < seq_len else
                        f" (at sequence {seq_len:,} no window is reached yet)"))
    return notes


def default_seq_len(cfg: TransformerConfig) -> int:
    """The sequence length used when none is given: the model's context, at most 2048."""
    return min(cfg.max_position_embeddings, DEFAULT_MAX_SEQ)


def estimate(cfg: TransformerConfig, *, batch_size: int = 1, seq_len: int | None = None,
             gpu: str = DEFAULT_GPU, num_gpus: int = 1, tp: int = 1, pp: int = 1,
             sp: bool = False, zero_stage: int = 0, grad_accum_steps: int = 1,
             recompute: str = "none", precision: str = "bf16-mixed", optimizer: str = "adamw",
             assumed_mfu: float = DEFAULT_MFU, causal: bool = False,
             link_bandwidth: float | None = None) -> Estimate:
    """Everything `python -m harness estimate` reports.

    batch_size is the micro-batch per GPU (per model replica); one optimizer step consumes
    batch_size * dp * grad_accum_steps sequences. Training memory is that of the busiest GPU;
    inference figures are for serving on a single GPU of the same kind. `link_bandwidth` is the
    one-way GPU-to-GPU bandwidth in bytes/s for the communication bounds (default: the GPU's
    `interconnect_bandwidth_bytes_per_s`, i.e. within one node). A ValueError names any
    argument that is out of range or does not divide the model.
    """
    cfg = require_config(cfg)
    seq = default_seq_len(cfg) if seq_len is None else require_positive_int("seq_len", seq_len)
    require_positive_int("batch_size", batch_size)
    require_positive_int("grad_accum_steps", grad_accum_steps)
    require_choice("precision", precision, TRAINING_PRECISIONS)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    require_choice("recompute", recompute, RECOMPUTE_KINDS)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    mfu = require_positive_fraction("assumed_mfu", assumed_mfu)
    if link_bandwidth is not None:
        require_positive("link_bandwidth", link_bandwidth)
    if cfg.position == "learned" and seq > cfg.max_position_embeddings:
        raise ValueError(f"seq_len={seq} exceeds the {cfg.max_position_embeddings} learned "
                         f"positions of {cfg.name}; use seq_len <= {cfg.max_position_embeddings}")
    spec = gpu_spec(gpu)
    if PEAK_DTYPE[precision] not in spec.dtypes:
        runnable = [p for p in TRAINING_PRECISIONS if PEAK_DTYPE[p] in spec.dtypes]
        raise ValueError(f"{spec.name} has no {PEAK_DTYPE[precision]} matrix units for "
                         f"precision={precision!r}; precisions it runs: {', '.join(runnable)}")
    dp = data_parallel_size(num_gpus, tp, pp)
    check_tensor_parallel(cfg, tp)
    check_pipeline_parallel(cfg, pp)
    notes: list[str] = []
    if seq > cfg.max_position_embeddings:
        notes.append(f"seq_len {seq} is beyond the {cfg.max_position_embeddings} positions "
                     f"{cfg.name} was trained for ({cfg.position} positions extrapolate)")

    # Parameters: all of them, and those one token uses (6ND counts those).
    breakdown = param_breakdown(cfg)
    total_params = sum(breakdown.values())
    active = active_params(cfg)
    notes += architecture_notes(cfg, seq)

    # FLOPs: per micro-batch on one replica, per optimizer step on all of them.
    gbs = global_batch_size(batch_size, dp, grad_accum_steps)
    step_tokens = tokens_per_step(gbs, seq)
    micro = train_flops(cfg, batch_size, seq, recompute, causal)
    step = train_flops(cfg, gbs, seq, recompute, causal)
    forward_step = forward_flops(cfg, gbs, seq, causal)
    rule = six_nd(active, step_tokens)

    # Training memory of the busiest GPU and whether it fits beside the CUDA context (and
    # NCCL's buffers when GPUs talk).
    memory = training_memory(cfg, batch_size, seq, precision, optimizer, recompute, tp, pp, sp,
                             flash_attention=True, zero_stage=zero_stage, dp=dp)
    reserve = device_reserve_bytes(num_gpus)
    needed = memory.total + reserve

    # Time at the assumed MFU.
    peak = spec.peak_flops(PEAK_DTYPE[precision])
    step_seconds = step.model / (num_gpus * peak * mfu)

    # Communication of a step, bounded by the link bandwidth.
    link = (link_bandwidth if link_bandwidth is not None
            else spec.interconnect_bandwidth_bytes_per_s)
    if link_bandwidth is not None:
        link_source = "--link-bandwidth"
    elif link is not None:
        link_source = f"{spec.name} GPU-to-GPU bandwidth (GPUSpec)"
    else:
        link_source = f"{spec.name} has no GPU-to-GPU bandwidth in the table"
    communication = step_communication(
        cfg, batch_size=batch_size, seq_len=seq, dp=dp, tp=tp, pp=pp, sp=sp,
        zero_stage=zero_stage, grad_accum_steps=grad_accum_steps, recompute=recompute,
        precision=precision, compute_seconds=step_seconds, link_bandwidth=link,
        link_source=link_source)
    if num_gpus > GPUS_PER_NODE and link_bandwidth is None:
        notes.append(f"{num_gpus} GPUs span more than one {GPUS_PER_NODE}-GPU node: traffic "
                     f"between nodes runs at the network's speed, not NVLink's; pass "
                     f"--link-bandwidth (e.g. 50 for 400 Gb/s InfiniBand per GPU) to bound it")

    # Serving on one GPU: batch 1 at a context of seq tokens.
    element_bytes = SERVING_BYTES[precision]
    serving = inference_memory(cfg, 1, seq, element_bytes, element_bytes)
    kv_request = kv_cache_bytes(cfg, 1, seq, element_bytes)
    prefill = forward_flops(cfg, 1, seq, causal)
    # One request's token reads the weights it multiplies by: with experts, only its top_k.
    bytes_per_decoded_token = math.ceil(active * element_bytes) + kv_request
    decode = decode_flops(cfg, 1, seq)
    bandwidth_bound = spec.memory_bandwidth_bytes_per_s / bytes_per_decoded_token
    compute_bound = peak / decode
    serving_capacity = spec.memory_bytes - CUDA_CONTEXT_BYTES_RANGE[1]

    return Estimate(
        model=cfg,
        workload=Workload(
            micro_batch_size=batch_size, seq_len=seq, gpu=spec.name, num_gpus=num_gpus,
            precision=precision, optimizer=optimizer, recompute=recompute, causal=causal,
            assumed_mfu=mfu),
        parameters=ParameterCounts(
            total=total_params, active=active, non_embedding=non_embedding_params(cfg),
            textbook_estimate=approx_params_gpt(cfg), breakdown=breakdown),
        flops=FlopCounts(
            forward_per_token=forward_step / step_tokens,
            model_per_token=step.model / step_tokens,
            hardware_per_token=step.hardware / step_tokens,
            six_nd_per_token=rule / step_tokens,
            model_per_micro_batch=micro.model, hardware_per_micro_batch=micro.hardware,
            forward_per_step=forward_step, model_per_step=step.model,
            hardware_per_step=step.hardware, six_nd_per_step=rule,
            six_nd_relative_error=(rule - step.model) / step.model),
        training_memory=TrainingMemory(
            parts=dict(memory.parts), total_bytes=memory.total, reserve_bytes=reserve,
            cuda_context_bytes_range=CUDA_CONTEXT_BYTES_RANGE,
            distributed_buffer_bytes_range=(DISTRIBUTED_BUFFER_BYTES_RANGE if num_gpus > 1
                                            else None),
            needed_bytes=needed, gpu_memory_bytes=spec.memory_bytes,
            fits=needed <= spec.memory_bytes),
        parallel=ParallelLayout(
            num_gpus=num_gpus, tp=tp, pp=pp, dp=dp, sp=sp, zero_stage=zero_stage,
            micro_batch_size=batch_size, grad_accum_steps=grad_accum_steps,
            global_batch_size=gbs, tokens_per_step=step_tokens),
        parallel_memory=memory_by_layout(
            cfg, batch_size=batch_size, seq_len=seq, num_gpus=num_gpus, tp=tp, pp=pp, sp=sp,
            zero_stage=zero_stage, recompute=recompute, precision=precision,
            optimizer=optimizer, gpu_memory_bytes=spec.memory_bytes),
        communication=communication,
        time=TrainingSpeed(
            peak_dtype=PEAK_DTYPE[precision], peak_flops_per_gpu=peak, assumed_mfu=mfu,
            implied_hfu=mfu * step.hardware / step.model, step_seconds=step_seconds,
            tokens_per_second=step_tokens / step_seconds,
            tokens_per_second_per_gpu=step_tokens / step_seconds / num_gpus),
        inference=Serving(
            bytes_per_element=element_bytes, context_len=seq,
            memory_parts=dict(serving.parts), memory_bytes_one_request=serving.total,
            kv_cache_bytes_per_token=kv_cache_bytes(cfg, 1, 1, element_bytes),
            kv_cache_bytes_per_request=kv_request,
            max_concurrent_requests=max_concurrent_requests(cfg, seq, element_bytes,
                                                            serving_capacity),
            prefill_flops=prefill, prefill_seconds_lower_bound=prefill / peak,
            decode_flops_per_token=decode, decode_bytes_per_token=bytes_per_decoded_token,
            decode_tokens_per_second_bandwidth_bound=bandwidth_bound,
            decode_tokens_per_second_compute_bound=compute_bound,
            decode_tokens_per_second_upper_bound=min(bandwidth_bound, compute_bound)),
        sizing=tuple(sizing_findings(cfg, batch_size, seq, tp)),
        notes=tuple(notes),
    )
