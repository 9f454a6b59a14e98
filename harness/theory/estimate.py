"""`python -m harness estimate`: what a model should cost before it runs - parameters, FLOPs,
training memory and whether it fits, parallel layout and what each kind of parallelism does to
per-GPU memory, step time at an assumed MFU, the communication of a step and its time bound,
serving memory and speed bounds, and the sizing rules.

`estimate` does the arithmetic (pure, returns plain data, the same numbers `--json` prints);
`render_estimate` turns it into tables. Every number comes from `harness.formulas`.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from tabulate import tabulate

from harness.gate.formatting import format_bytes, format_count, format_flops, format_seconds
from harness.theory.comm import (
    StepTraffic,
    communication_share,
    data_parallel_traffic,
    pipeline_parallel_bytes,
    tensor_parallel_traffic,
)
from harness.theory.config import TransformerConfig, get_model, load_hf_config
from harness.theory.flops import decode_flops, forward_flops, six_nd, train_flops
from harness.theory.hardware import GPUSpec, gpu_spec
from harness.theory.memory import (
    CUDA_CONTEXT_BYTES_RANGE,
    DISTRIBUTED_BUFFER_BYTES_RANGE,
    OPTIMIZERS,
    RECOMPUTE_CHOICES,
    TRAINING_PRECISIONS,
    ZERO_STAGES,
    inference_memory,
    kv_cache_bytes,
    training_memory,
)
from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    data_parallel_size,
    global_batch_size,
    params_per_rank,
    tokens_per_step,
)
from harness.theory.params import approx_params_gpt, non_embedding_params, param_breakdown
from harness.theory.sizing import sizing_findings

# Assumed model FLOPs utilisation for time estimates. Source 001: Megatron-LM's published A100
# runs reach 41.5% (22B) to 56.3% (1T) MFU, and its H100 example achieves 400 of 989 TFLOP/s
# (40%). Well-tuned large runs land at 35-55%; 40% is a realistic middle, not a best case.
DEFAULT_MFU = 0.4
DEFAULT_GPU = "H100"
# Without --seq: the model's context, capped at 2048 tokens (GPT-3's training length, a common
# pre-training sequence) so that long-context models are not estimated at 32k by default.
DEFAULT_MAX_SEQ = 2048

# The matrix-unit dtype each training precision runs its GEMMs in, for the peak FLOP/s. "fp32"
# is a true fp32 GEMM: PyTorch leaves TF32 off for matmuls by default
# (torch.backends.cuda.matmul.allow_tf32 = False since 1.12).
PEAK_DTYPE: dict[str, str] = {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16",
                              "bf16": "bf16", "bf16-autocast": "bf16", "fp16-autocast": "fp16"}
# Bytes of each weight and KV-cache element when serving: 16-bit unless training is in fp32.
SERVING_BYTES: dict[str, int] = {"fp32": 4, "bf16-mixed": 2, "fp16-mixed": 2, "bf16": 2,
                                 "bf16-autocast": 2, "fp16-autocast": 2}


# Model-state parts of a training_memory breakdown; every other part is activations or working
# memory of the step.
MODEL_STATE_PARTS: tuple[str, ...] = ("weights", "master_weights", "gradients",
                                      "optimizer_states")
# GPUs of one HGX/DGX node: beyond it data parallelism crosses the network, several times slower
# than NVLink (400 Gb/s InfiniBand is 50 GB/s per GPU and direction).
GPUS_PER_NODE = 8


def _require_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _require_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1], e.g. 0.4 for 40%, got {value!r}")
    return float(value)


def _require_choice(name: str, value: object, choices: tuple[Any, ...]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def default_seq_len(cfg: TransformerConfig) -> int:
    """The sequence length used when none is given: the model's context, at most 2048."""
    return min(cfg.max_position_embeddings, DEFAULT_MAX_SEQ)


def _max_concurrent_requests(cfg: TransformerConfig, seq_len: int, bytes_per_element: int,
                             capacity: int) -> int:
    """Most requests of seq_len tokens whose weights, KV caches and working set fit in
    `capacity` bytes (inference memory grows strictly with the batch: bisect on it)."""

    def needed(requests: int) -> int:
        return inference_memory(cfg, requests, seq_len, bytes_per_element,
                                bytes_per_element).total

    if needed(1) > capacity:
        return 0
    low, high = 1, 2
    while needed(high) <= capacity:
        low, high = high, 2 * high
    while high - low > 1:  # needed(low) fits, needed(high) does not
        middle = (low + high) // 2
        low, high = (middle, high) if needed(middle) <= capacity else (low, middle)
    return low


def estimate(cfg: TransformerConfig, *, batch_size: int = 1, seq_len: int | None = None,
             gpu: str = DEFAULT_GPU, num_gpus: int = 1, tp: int = 1, pp: int = 1,
             sp: bool = False, zero_stage: int = 0, grad_accum_steps: int = 1,
             recompute: str = "none", precision: str = "bf16-mixed", optimizer: str = "adamw",
             assumed_mfu: float = DEFAULT_MFU, causal: bool = False,
             link_bandwidth: float | None = None) -> dict[str, Any]:
    """Everything `python -m harness estimate` reports, as plain JSON-ready data.

    batch_size is the micro-batch per GPU (per model replica); one optimizer step consumes
    batch_size * dp * grad_accum_steps sequences. Training memory is that of the busiest GPU;
    inference figures are for serving on a single GPU of the same kind. `link_bandwidth` is the
    one-way GPU-to-GPU bandwidth in bytes/s for the communication bounds (default: the GPU's
    `interconnect_bandwidth_bytes_per_s`, i.e. within one node). A ValueError names any
    argument that is out of range or does not divide the model.
    """
    if not isinstance(cfg, TransformerConfig):
        raise ValueError(f"cfg must be a harness.TransformerConfig, got {type(cfg).__name__}")
    seq = default_seq_len(cfg) if seq_len is None else _require_positive_int("seq_len", seq_len)
    _require_positive_int("batch_size", batch_size)
    _require_positive_int("grad_accum_steps", grad_accum_steps)
    _require_choice("precision", precision, TRAINING_PRECISIONS)
    _require_choice("optimizer", optimizer, OPTIMIZERS)
    _require_choice("recompute", recompute, RECOMPUTE_CHOICES)
    _require_choice("zero_stage", zero_stage, ZERO_STAGES)
    mfu = _require_fraction("assumed_mfu", assumed_mfu)
    if link_bandwidth is not None and (isinstance(link_bandwidth, bool)
                                       or not isinstance(link_bandwidth, (int, float))
                                       or not math.isfinite(link_bandwidth)
                                       or link_bandwidth <= 0):
        raise ValueError(f"link_bandwidth must be a positive number of bytes/s per direction, "
                         f"e.g. 50e9 for 400 Gb/s InfiniBand, got {link_bandwidth!r}")
    if cfg.position == "learned" and seq > cfg.max_position_embeddings:
        raise ValueError(f"seq_len={seq} exceeds the {cfg.max_position_embeddings} learned "
                         f"positions of {cfg.name}; use seq_len <= {cfg.max_position_embeddings}")
    spec: GPUSpec = gpu_spec(gpu)
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

    # Parameters.
    breakdown = param_breakdown(cfg)
    total_params = sum(breakdown.values())

    # FLOPs: per micro-batch on one replica, per optimizer step on all of them.
    gbs = global_batch_size(batch_size, dp, grad_accum_steps)
    step_tokens = tokens_per_step(gbs, seq)
    micro = train_flops(cfg, batch_size, seq, recompute, causal)
    step = train_flops(cfg, gbs, seq, recompute, causal)
    forward_step = forward_flops(cfg, gbs, seq, causal)
    rule = six_nd(total_params, step_tokens)

    # Training memory of the busiest GPU and whether it fits.
    memory = training_memory(cfg, batch_size, seq, precision, optimizer, recompute, tp, pp, sp,
                             flash_attention=True, zero_stage=zero_stage, dp=dp)
    # The CUDA context's upper end, plus NCCL's buffers when GPUs talk (source 001 ranges).
    reserve = CUDA_CONTEXT_BYTES_RANGE[1] + (DISTRIBUTED_BUFFER_BYTES_RANGE[1]
                                             if num_gpus > 1 else 0)
    needed = memory.total + reserve

    # Time at the assumed MFU.
    peak = spec.peak_flops(PEAK_DTYPE[precision])
    step_seconds = step.model / (num_gpus * peak * mfu)

    # Communication of a step, bounded by the link bandwidth.
    communication = _communication(cfg, spec, link_bandwidth, batch_size=batch_size, seq=seq,
                                   dp=dp, tp=tp, pp=pp, sp=sp, zero_stage=zero_stage,
                                   grad_accum_steps=grad_accum_steps, recompute=recompute,
                                   precision=precision, compute_seconds=step_seconds)
    if num_gpus > GPUS_PER_NODE and link_bandwidth is None:
        notes.append(f"{num_gpus} GPUs span more than one {GPUS_PER_NODE}-GPU node: traffic "
                     f"between nodes runs at the network's speed, not NVLink's; pass "
                     f"--link-bandwidth (e.g. 50 for 400 Gb/s InfiniBand per GPU) to bound it")

    # Serving on one GPU: batch 1 at a context of seq tokens.
    element_bytes = SERVING_BYTES[precision]
    serving = inference_memory(cfg, 1, seq, element_bytes, element_bytes)
    kv_request = kv_cache_bytes(cfg, 1, seq, element_bytes)
    prefill = forward_flops(cfg, 1, seq, causal)
    bytes_per_decoded_token = serving.parts["weights"] + kv_request
    decode = decode_flops(cfg, 1, seq)
    bandwidth_bound = spec.memory_bandwidth_bytes_per_s / bytes_per_decoded_token
    compute_bound = peak / decode
    serving_capacity = spec.memory_bytes - CUDA_CONTEXT_BYTES_RANGE[1]

    return {
        "model": cfg.to_dict(),
        "workload": {
            "micro_batch_size": batch_size, "seq_len": seq, "gpu": spec.name,
            "num_gpus": num_gpus, "precision": precision, "optimizer": optimizer,
            "recompute": recompute, "causal": causal, "assumed_mfu": mfu,
        },
        "parameters": {
            "total": total_params,
            "non_embedding": non_embedding_params(cfg),
            "textbook_estimate": approx_params_gpt(cfg),
            "breakdown": breakdown,
        },
        "flops": {
            "forward_per_token": forward_step / step_tokens,
            "model_per_token": step.model / step_tokens,
            "hardware_per_token": step.hardware / step_tokens,
            "six_nd_per_token": rule / step_tokens,
            "model_per_micro_batch": micro.model,
            "hardware_per_micro_batch": micro.hardware,
            "forward_per_step": forward_step,
            "model_per_step": step.model,
            "hardware_per_step": step.hardware,
            "six_nd_per_step": rule,
            "six_nd_relative_error": (rule - step.model) / step.model,
        },
        "training_memory": {
            "parts": dict(memory.parts),
            "total_bytes": memory.total,
            "reserve_bytes": reserve,
            "cuda_context_bytes_range": list(CUDA_CONTEXT_BYTES_RANGE),
            "distributed_buffer_bytes_range": (list(DISTRIBUTED_BUFFER_BYTES_RANGE)
                                               if num_gpus > 1 else None),
            "needed_bytes": needed,
            "gpu_memory_bytes": spec.memory_bytes,
            "fits": needed <= spec.memory_bytes,
        },
        "parallel": {
            "num_gpus": num_gpus, "tp": tp, "pp": pp, "dp": dp, "sp": sp,
            "zero_stage": zero_stage, "micro_batch_size": batch_size,
            "grad_accum_steps": grad_accum_steps, "global_batch_size": gbs,
            "tokens_per_step": step_tokens,
        },
        "parallel_memory": _parallel_memory(
            cfg, batch_size=batch_size, seq=seq, num_gpus=num_gpus, tp=tp, pp=pp, sp=sp,
            zero_stage=zero_stage, recompute=recompute, precision=precision,
            optimizer=optimizer, gpu_memory_bytes=spec.memory_bytes),
        "communication": communication,
        "time": {
            "peak_dtype": PEAK_DTYPE[precision],
            "peak_flops_per_gpu": peak,
            "assumed_mfu": mfu,
            "implied_hfu": mfu * step.hardware / step.model,
            "step_seconds": step_seconds,
            "tokens_per_second": step_tokens / step_seconds,
            "tokens_per_second_per_gpu": step_tokens / step_seconds / num_gpus,
        },
        "inference": {
            "bytes_per_element": element_bytes,
            "context_len": seq,
            "memory_parts": dict(serving.parts),
            "memory_bytes_one_request": serving.total,
            "kv_cache_bytes_per_token": kv_cache_bytes(cfg, 1, 1, element_bytes),
            "kv_cache_bytes_per_request": kv_request,
            "max_concurrent_requests": _max_concurrent_requests(cfg, seq, element_bytes,
                                                                serving_capacity),
            "prefill_flops": prefill,
            "prefill_seconds_lower_bound": prefill / peak,
            "decode_flops_per_token": decode,
            "decode_bytes_per_token": bytes_per_decoded_token,
            "decode_tokens_per_second_bandwidth_bound": bandwidth_bound,
            "decode_tokens_per_second_compute_bound": compute_bound,
            "decode_tokens_per_second_upper_bound": min(bandwidth_bound, compute_bound),
        },
        "sizing": [
            {"rule": f.rule, "ok": f.ok, "detail": f.detail, "suggestion": f.suggestion}
            for f in sizing_findings(cfg, batch_size, seq, tp)
        ],
        "notes": notes,
    }


def _activation_bytes_per_element(precision: str) -> int:
    """Bytes of an activation crossing GPUs: 4 in fp32 training, 2 otherwise, the convention of
    training_memory's activations."""
    return 4 if precision == "fp32" else 2


def _communication(cfg: TransformerConfig, spec: GPUSpec, link_bandwidth: float | None, *,
                   batch_size: int, seq: int, dp: int, tp: int, pp: int, sp: bool,
                   zero_stage: int, grad_accum_steps: int, recompute: str, precision: str,
                   compute_seconds: float) -> dict[str, Any]:
    """Bytes each kind of parallelism moves per optimizer step on the busiest GPU, their time
    lower bounds at the link bandwidth, and the share of the step they would take unoverlapped.

    Data parallelism reduces the gradients of the parameters one GPU holds (`params_per_rank`,
    first pipeline stage) over dp ranks (`data_parallel_traffic`); tensor parallelism
    all-reduces activations over tp ranks; pipeline parallelism sends activations and their
    gradients between stages. Latency is left out: these are bandwidth bounds.
    """
    link = link_bandwidth if link_bandwidth is not None else spec.interconnect_bandwidth_bytes_per_s
    source = ("--link-bandwidth" if link_bandwidth is not None
              else f"{spec.name} GPU-to-GPU bandwidth (GPUSpec)")
    element = _activation_bytes_per_element(precision)

    def seconds(traffic: StepTraffic, ranks: int) -> float | None:
        return None if link is None else traffic.time_lower_bound(ranks, link)

    held = params_per_rank(cfg, tp, pp)
    dp_traffic = data_parallel_traffic(held, zero_stage=zero_stage,
                                       grad_accum_steps=grad_accum_steps, precision=precision)
    parts: dict[str, dict[str, Any] | None] = {
        "data_parallel": {
            "ranks": dp, "params_per_gpu": held, "zero_stage": zero_stage,
            "payload_bytes": dp_traffic.payloads(),
            "payload_bytes_per_micro_step": dp_traffic.total_bytes / grad_accum_steps,
            "bytes_sent_per_gpu": dp_traffic.bytes_sent_per_rank(dp),
            "seconds_lower_bound": seconds(dp_traffic, dp),
        },
        "tensor_parallel": None,
        "pipeline_parallel": None,
    }
    if tp > 1:
        tp_traffic = tensor_parallel_traffic(cfg, batch_size, seq, layers=cfg.num_layers // pp,
                                             recompute=recompute, bytes_per_element=element,
                                             grad_accum_steps=grad_accum_steps)
        parts["tensor_parallel"] = {
            "ranks": tp, "payload_bytes": tp_traffic.payloads(),
            "bytes_sent_per_gpu": tp_traffic.bytes_sent_per_rank(tp),
            "seconds_lower_bound": seconds(tp_traffic, tp),
        }
    if pp > 1:
        sent = pipeline_parallel_bytes(cfg, batch_size, seq, bytes_per_element=element,
                                       grad_accum_steps=grad_accum_steps, tp=tp, sp=sp)
        parts["pipeline_parallel"] = {
            "stages": pp, "bytes_sent_per_gpu": sent,
            "seconds_lower_bound": None if link is None else sent / link,
        }
    bounds = [part["seconds_lower_bound"] for part in parts.values() if part is not None]
    total = None if link is None else sum(bounds)
    return {
        "link_bandwidth_bytes_per_s": link,
        "link_source": source if link is not None else f"{spec.name} has no GPU-to-GPU "
                                                       f"bandwidth in the table",
        **parts,
        "seconds_lower_bound": total,
        "compute_seconds": compute_seconds,
        "share_without_overlap": (None if total is None
                                  else communication_share(total, compute_seconds)),
    }


def _parallel_memory(cfg: TransformerConfig, *, batch_size: int, seq: int, num_gpus: int,
                     tp: int, pp: int, sp: bool, zero_stage: int, recompute: str,
                     precision: str, optimizer: str,
                     gpu_memory_bytes: int) -> list[dict[str, Any]]:
    """Per-GPU training memory of the same micro-batch on one GPU and with all num_gpus GPUs
    spent on one kind of parallelism (DP with the chosen ZeRO stage, TP, PP), then the chosen
    layout: what each kind divides. DP alone divides nothing unless ZeRO shards the model
    states; TP divides weights and most activations; PP divides the weights, not the first
    stage's activations (1F1B keeps pp micro-batches in flight). A layout the model cannot
    take has its reason instead of numbers. "fits" adds the CUDA context and, with more than one
    GPU, NCCL's buffers, as the training memory section does."""
    layouts = [("1 GPU", 1, 1, 1, 0)]
    if num_gpus > 1:
        layouts += [(f"DP={num_gpus}, ZeRO {zero_stage}", num_gpus, 1, 1, zero_stage),
                    (f"TP={num_gpus}", 1, num_gpus, 1, 0),
                    (f"PP={num_gpus}", 1, 1, num_gpus, 0)]
    chosen = (f"chosen: DP={num_gpus // (tp * pp)}, TP={tp}, PP={pp}, ZeRO {zero_stage}",
              num_gpus // (tp * pp), tp, pp, zero_stage)
    shapes = [layout[1:] for layout in layouts]
    if chosen[1:] in shapes:
        index = shapes.index(chosen[1:])
        layouts[index] = (f"{layouts[index][0]} (chosen)", *layouts[index][1:])
    else:
        layouts.append(chosen)
    rows: list[dict[str, Any]] = []
    for label, dp, t, p, zero in layouts:
        row: dict[str, Any] = {"layout": label, "dp": dp, "tp": t, "pp": p, "zero_stage": zero}
        try:
            memory = training_memory(cfg, batch_size, seq, precision, optimizer, recompute, t, p,
                                     sp and t > 1, flash_attention=True, zero_stage=zero, dp=dp)
        except ValueError as exc:
            row["not_possible"] = str(exc)
            rows.append(row)
            continue
        states = sum(memory.parts.get(name, 0) for name in MODEL_STATE_PARTS)
        reserve = CUDA_CONTEXT_BYTES_RANGE[1] + (DISTRIBUTED_BUFFER_BYTES_RANGE[1]
                                                 if dp * t * p > 1 else 0)
        row.update(model_state_bytes=states, activation_bytes=memory.total - states,
                   total_bytes=memory.total,
                   fits=memory.total + reserve <= gpu_memory_bytes)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Rendering


def _section(title: str, rows: list[list[Any]], headers: tuple[str, ...] = ()) -> str:
    table = tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True)
    return f"{title}\n{table}"


def _parameters_section(result: dict[str, Any]) -> str:
    p = result["parameters"]
    rows = [["total", format_count(p["total"]), f"{p['total']:,}"],
            ["non-embedding", format_count(p["non_embedding"]), f"{p['non_embedding']:,}"]]
    rows += [[f"  {part}", format_count(count), f"{count:,}"]
             for part, count in p["breakdown"].items() if count]
    rows.append(["textbook l(12h^2+13h)+2Vh", format_count(p["textbook_estimate"]),
                 f"{p['textbook_estimate']:,}"])
    return _section("Parameters", rows, ("", "count", "exact"))


def _flops_section(result: dict[str, Any]) -> str:
    f, w = result["flops"], result["workload"]
    rows = [
        ["forward", format_flops(f["forward_per_token"]), format_flops(f["forward_per_step"])],
        ["training, model (for MFU)", format_flops(f["model_per_token"]),
         format_flops(f["model_per_step"])],
        [f"training, hardware (recompute {w['recompute']}, for HFU)",
         format_flops(f["hardware_per_token"]), format_flops(f["hardware_per_step"])],
        ["6ND rule", format_flops(f["six_nd_per_token"]), format_flops(f["six_nd_per_step"])],
    ]
    attention = "causal attention halved" if w["causal"] else "non-causal attention, as " \
                                                               "Megatron-LM and PaLM count it"
    error = f["six_nd_relative_error"]
    title = (f"FLOPs (a multiply-add is 2; {attention}): 6ND is {abs(error):.1%} "
             f"{'above' if error > 0 else 'below'} the model FLOPs")
    return _section(title, rows, ("", "per token", "per optimizer step"))


def _memory_section(result: dict[str, Any]) -> str:
    m, w = result["training_memory"], result["workload"]
    rows = [[part, format_bytes(size)] for part, size in m["parts"].items() if size]
    rows.append(["total (torch allocations)", format_bytes(m["total_bytes"])])
    low, high = m["cuda_context_bytes_range"]
    reserve = f"CUDA context ({format_bytes(low)} to {format_bytes(high)}; upper end)"
    if m["distributed_buffer_bytes_range"] is not None:
        reserve = "CUDA context + NCCL buffers (upper ends)"
    rows.append([reserve, format_bytes(m["reserve_bytes"])])
    rows.append(["needed per GPU", format_bytes(m["needed_bytes"])])
    rows.append([f"{w['gpu']} memory", format_bytes(m["gpu_memory_bytes"])])
    free = m["gpu_memory_bytes"] - m["needed_bytes"]
    verdict = (f"fits, {format_bytes(free)} to spare" if m["fits"]
               else f"does NOT fit: short by {format_bytes(-free)}")
    title = (f"Training memory per GPU ({w['precision']}, {w['optimizer']}, recompute "
             f"{w['recompute']}, flash attention): {verdict}")
    return _section(title, rows, ("part", "bytes"))


def _parallel_section(result: dict[str, Any]) -> str:
    p = result["parallel"]
    rows = [["GPUs", p["num_gpus"]], ["tensor parallel (TP)", p["tp"]],
            ["pipeline parallel (PP)", p["pp"]], ["data parallel (DP = GPUs / (TP*PP))", p["dp"]],
            ["sequence parallel", "on" if p["sp"] else "off"], ["ZeRO stage", p["zero_stage"]],
            ["micro batch (MBS)", p["micro_batch_size"]],
            ["gradient accumulation (GAS)", p["grad_accum_steps"]],
            ["global batch (GBS = MBS*DP*GAS)", p["global_batch_size"]],
            ["tokens per step", f"{p['tokens_per_step']:,}"]]
    return _section("Parallel layout", [[k, str(v)] for k, v in rows], ("", "value"))


def _time_section(result: dict[str, Any]) -> str:
    t, w = result["time"], result["workload"]
    rows = [[f"peak per GPU ({t['peak_dtype']}, dense)", f"{t['peak_flops_per_gpu'] / 1e12:,.1f} "
                                                         f"TFLOP/s"],
            ["assumed MFU", f"{t['assumed_mfu']:.0%}"],
            ["implied HFU", f"{t['implied_hfu']:.1%}"],
            ["step time", format_seconds(t["step_seconds"])],
            ["tokens/s", f"{t['tokens_per_second']:,.0f}"],
            ["tokens/s per GPU", f"{t['tokens_per_second_per_gpu']:,.0f}"]]
    return _section(f"Training speed at the assumed MFU on {w['num_gpus']} x {w['gpu']}", rows,
                    ("", "value"))


def _parallel_memory_section(result: dict[str, Any]) -> str:
    rows = []
    for row in result["parallel_memory"]:
        if "not_possible" in row:
            rows.append([row["layout"], "-", "-", "-", f"not possible: {row['not_possible']}"])
            continue
        rows.append([row["layout"], format_bytes(row["model_state_bytes"]),
                     format_bytes(row["activation_bytes"]), format_bytes(row["total_bytes"]),
                     "fits" if row["fits"] else "does NOT fit"])
    return _section("Per-GPU training memory by parallelism (same micro-batch; ZeRO shards "
                    "model states over DP, TP splits weights and activations, PP the weights)",
                    rows, ("layout", "model states", "activations", "total", "with reserve"))


def _communication_section(result: dict[str, Any]) -> str:
    c = result["communication"]

    def bound(seconds: float | None) -> str:
        return "-" if seconds is None else format_seconds(seconds)

    d = c["data_parallel"]
    payload = ", ".join(f"{op.replace('_', '-')} {format_bytes(size)}"
                        for op, size in d["payload_bytes"].items() if size)
    rows = [[f"data parallel over {d['ranks']} (ZeRO {d['zero_stage']}, "
             f"{format_count(d['params_per_gpu'])} params)", payload,
             format_bytes(d["bytes_sent_per_gpu"]), bound(d["seconds_lower_bound"])]]
    rows.append(["  per micro-step", format_bytes(d["payload_bytes_per_micro_step"]), "", ""])
    t = c["tensor_parallel"]
    if t is not None:
        rows.append([f"tensor parallel over {t['ranks']} (activations)",
                     f"all-reduce {format_bytes(t['payload_bytes']['all_reduce'])}",
                     format_bytes(t["bytes_sent_per_gpu"]), bound(t["seconds_lower_bound"])])
    p = c["pipeline_parallel"]
    if p is not None:
        rows.append([f"pipeline over {p['stages']} stages (point to point)", "-",
                     format_bytes(p["bytes_sent_per_gpu"]), bound(p["seconds_lower_bound"])])
    rows.append(["total", "", "", bound(c["seconds_lower_bound"])])
    rows.append(["step at the assumed MFU", "", "", format_seconds(c["compute_seconds"])])
    share = c["share_without_overlap"]
    link = c["link_bandwidth_bytes_per_s"]
    where = ("no link bandwidth known: pass --link-bandwidth" if link is None
             else f"{link / 1e9:,.0f} GB/s per direction, {c['link_source']}")
    title = (f"Communication per optimizer step, bandwidth bounds ({where})"
             + ("" if share is None else f": {share:.1%} of the step if none of it overlaps"))
    return _section(title, rows, ("", "payload per step", "sent per GPU", "time >="))


def _inference_section(result: dict[str, Any]) -> str:
    i, w = result["inference"], result["workload"]
    e = i["bytes_per_element"]
    rows = [[f"weights ({e} bytes each)", format_bytes(i["memory_parts"]["weights"])],
            ["KV cache per token", format_bytes(i["kv_cache_bytes_per_token"])],
            [f"KV cache per request ({i['context_len']:,} tokens)",
             format_bytes(i["kv_cache_bytes_per_request"])],
            ["memory for one request", format_bytes(i["memory_bytes_one_request"])],
            ["concurrent requests that fit", f"{i['max_concurrent_requests']:,}"],
            ["prefill time, lower bound (FLOPs / peak)",
             format_seconds(i["prefill_seconds_lower_bound"])],
            ["decode tokens/s, bandwidth bound ((weights + KV) / bandwidth)",
             f"{i['decode_tokens_per_second_bandwidth_bound']:,.1f}"],
            ["decode tokens/s, compute bound (peak / FLOPs)",
             f"{i['decode_tokens_per_second_compute_bound']:,.1f}"],
            ["decode tokens/s, upper bound", f"{i['decode_tokens_per_second_upper_bound']:,.1f}"]]
    return _section(f"Inference on one {w['gpu']} (batch 1, context {i['context_len']:,})", rows,
                    ("", "value"))


def _sizing_section(result: dict[str, Any]) -> str:
    rows = [[finding["rule"], "ok" if finding["ok"] else "CHECK",
             finding["detail"] + (f" -> {finding['suggestion']}" if finding["suggestion"] else "")]
            for finding in result["sizing"]]
    return _section("Sizing rules (source 001, after Anthony et al. 2024)", rows,
                    ("rule", "status", "detail"))


def render_estimate(result: dict[str, Any]) -> str:
    """The tables `python -m harness estimate` prints for an `estimate(...)` result."""
    w, m = result["workload"], result["model"]
    header = (f"{m['name']} on {w['num_gpus']} x {w['gpu']}: micro-batch {w['micro_batch_size']}, "
              f"sequence {w['seq_len']:,}, {w['precision']}, {w['optimizer']}, "
              f"recompute {w['recompute']}")
    sections = [header, _parameters_section(result), _flops_section(result),
                _memory_section(result), _parallel_section(result),
                _parallel_memory_section(result), _time_section(result),
                _communication_section(result), _inference_section(result),
                _sizing_section(result)]
    sections += [f"note: {note}" for note in result["notes"]]
    return "\n\n".join(sections)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `estimate` command's options."""
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a model of the zoo (e.g. llama-2-7b, gpt2); or use --config")
    parser.add_argument("--config", metavar="PATH",
                        help="a Hugging Face style config.json instead of a zoo name")
    parser.add_argument("--batch", type=int, default=1,
                        help="micro-batch size per GPU (default 1)")
    parser.add_argument("--seq", type=int, default=None,
                        help=f"sequence length (default: the model's context, at most "
                             f"{DEFAULT_MAX_SEQ})")
    parser.add_argument("--gpu", default=DEFAULT_GPU,
                        help=f"GPU name or alias, e.g. H100, A100, H200 (default {DEFAULT_GPU})")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs in total (default 1)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    parser.add_argument("--sp", action="store_true", help="sequence parallelism (with --tp)")
    parser.add_argument("--zero", type=int, default=0, help="ZeRO stage 0-3 (default 0)")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="gradient accumulation steps (default 1)")
    parser.add_argument("--recompute", default="none",
                        help=f"activation recomputation: {', '.join(RECOMPUTE_CHOICES)}")
    parser.add_argument("--precision", default="bf16-mixed",
                        help=f"training precision: {', '.join(TRAINING_PRECISIONS)} "
                             f"(default bf16-mixed)")
    parser.add_argument("--optimizer", default="adamw",
                        help=f"optimizer: {', '.join(OPTIMIZERS)} (default adamw)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"assumed MFU for time estimates (default {DEFAULT_MFU}: "
                             f"well-tuned large runs land at 35-55%%)")
    parser.add_argument("--causal", action="store_true",
                        help="count causal attention as half (default: Megatron/PaLM, full)")
    parser.add_argument("--link-bandwidth", type=float, default=None, metavar="GB/S",
                        help="one-way GPU-to-GPU bandwidth in GB/s for the communication "
                             "bounds (default: the GPU's NVLink or PCIe figure; e.g. 50 for "
                             "400 Gb/s InfiniBand between nodes)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


# Command-line spelling of each estimate() argument.
_FLAGS: dict[str, str] = {
    "batch_size": "--batch", "seq_len": "--seq", "num_gpus": "--num-gpus", "tp": "--tp",
    "pp": "--pp", "zero_stage": "--zero", "grad_accum_steps": "--grad-accum",
    "recompute": "--recompute", "precision": "--precision", "optimizer": "--optimizer",
    "assumed_mfu": "--mfu",
}


def _model_from(args: argparse.Namespace) -> TransformerConfig:
    if args.model and args.config:
        raise ValueError(f"give either a model name or --config, not both "
                         f"(got {args.model!r} and --config {args.config!r})")
    if args.config:
        return load_hf_config(args.config)
    if not args.model:
        raise ValueError("name a model (e.g. llama-2-7b) or pass --config path/config.json")
    return get_model(args.model)


def run(args: argparse.Namespace) -> int:
    """Print the estimate as tables, or as JSON with --json; 0 on success."""
    cfg = _model_from(args)
    workload = {"batch_size": args.batch, "seq_len": args.seq, "num_gpus": args.num_gpus,
                "tp": args.tp, "pp": args.pp, "zero_stage": args.zero,
                "grad_accum_steps": args.grad_accum, "recompute": args.recompute,
                "precision": args.precision, "optimizer": args.optimizer,
                "assumed_mfu": args.mfu}
    # Checked here too so that an error names the flag the user typed, not the Python argument.
    for name in ("batch_size", "num_gpus", "tp", "pp", "grad_accum_steps"):
        _require_positive_int(_FLAGS[name], workload[name])
    if args.seq is not None:
        _require_positive_int(_FLAGS["seq_len"], args.seq)
    _require_fraction(_FLAGS["assumed_mfu"], args.mfu)
    for name, choices in (("recompute", RECOMPUTE_CHOICES), ("precision", TRAINING_PRECISIONS),
                          ("optimizer", OPTIMIZERS), ("zero_stage", ZERO_STAGES)):
        _require_choice(_FLAGS[name], workload[name], choices)
    link = None
    if args.link_bandwidth is not None:
        if not math.isfinite(args.link_bandwidth) or args.link_bandwidth <= 0:
            raise ValueError(f"--link-bandwidth must be a positive number of GB/s, got "
                             f"{args.link_bandwidth!r}")
        link = args.link_bandwidth * 1e9
    result = estimate(cfg, gpu=args.gpu, sp=args.sp, causal=args.causal, link_bandwidth=link,
                      **workload)
    print(json.dumps(result, indent=2) if args.json else render_estimate(result))
    return 0
