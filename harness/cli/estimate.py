"""`python -m harness estimate`: what a model should cost before it runs, as tables or JSON.

The arithmetic is `harness.theory.estimate.estimate`; this module reads the flags, checks them
under the names the user typed, and renders the `Estimate` (`--json`: `Estimate.to_dict()`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence

from tabulate import tabulate

from harness.checks import (
    require_choice,
    require_positive_fraction,
    require_positive_int,
)
from harness.gate.formatting import format_bytes, format_count, format_flops, format_seconds
from harness.theory.config import TransformerConfig
from harness.theory.estimate import DEFAULT_GPU, DEFAULT_MAX_SEQ, DEFAULT_MFU, Estimate, estimate
from harness.theory.flops import RECOMPUTE_KINDS
from harness.theory.hf import load_hf_config
from harness.theory.memory.states import OPTIMIZERS, TRAINING_PRECISIONS, ZERO_STAGES
from harness.theory.memory.training import ImpossibleLayout
from harness.theory.zoo import get_model


def _section(title: str, rows: Sequence[Sequence[object]], headers: tuple[str, ...] = ()) -> str:
    table = tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True)
    return f"{title}\n{table}"


def _parameters_section(result: Estimate) -> str:
    p = result.parameters
    rows = [["total", format_count(p.total), f"{p.total:,}"],
            ["active per token" + (" (top-k experts)" if p.active != p.total else ""),
             format_count(p.active), f"{p.active:,}"],
            ["non-embedding", format_count(p.non_embedding), f"{p.non_embedding:,}"]]
    rows += [[f"  {part}", format_count(count), f"{count:,}"]
             for part, count in p.breakdown.items() if count]
    rows.append(["textbook l(12h^2+13h)+2Vh", format_count(p.textbook_estimate),
                 f"{p.textbook_estimate:,}"])
    return _section("Parameters", rows, ("", "count", "exact"))


def _flops_section(result: Estimate) -> str:
    f, w = result.flops, result.workload
    rows = [
        ["forward", format_flops(f.forward_per_token), format_flops(f.forward_per_step)],
        ["training, model (for MFU)", format_flops(f.model_per_token),
         format_flops(f.model_per_step)],
        [f"training, hardware (recompute {w.recompute}, for HFU)",
         format_flops(f.hardware_per_token), format_flops(f.hardware_per_step)],
        ["6ND rule", format_flops(f.six_nd_per_token), format_flops(f.six_nd_per_step)],
    ]
    attention = ("causal attention halved" if w.causal
                 else "non-causal attention, as Megatron-LM and PaLM count it")
    if result.parameters.active != result.parameters.total:
        attention += "; active parameters only"
    error = f.six_nd_relative_error
    title = (f"FLOPs (a multiply-add is 2; {attention}): 6ND is {abs(error):.1%} "
             f"{'above' if error > 0 else 'below'} the model FLOPs")
    return _section(title, rows, ("", "per token", "per optimizer step"))


def _memory_section(result: Estimate) -> str:
    m, w = result.training_memory, result.workload
    rows = [[part, format_bytes(size)] for part, size in m.parts.items() if size]
    rows.append(["total (torch allocations)", format_bytes(m.total_bytes)])
    low, high = m.cuda_context_bytes_range
    reserve = f"CUDA context ({format_bytes(low)} to {format_bytes(high)}; upper end)"
    if m.distributed_buffer_bytes_range is not None:
        reserve = "CUDA context + NCCL buffers (upper ends)"
    rows.append([reserve, format_bytes(m.reserve_bytes)])
    rows.append(["needed per GPU", format_bytes(m.needed_bytes)])
    rows.append([f"{w.gpu} memory", format_bytes(m.gpu_memory_bytes)])
    free = m.gpu_memory_bytes - m.needed_bytes
    verdict = (f"fits, {format_bytes(free)} to spare" if m.fits
               else f"does NOT fit: short by {format_bytes(-free)}")
    title = (f"Training memory per GPU ({w.precision}, {w.optimizer}, recompute "
             f"{w.recompute}, flash attention): {verdict}")
    return _section(title, rows, ("part", "bytes"))


def _parallel_section(result: Estimate) -> str:
    p = result.parallel
    rows: list[tuple[str, object]] = [
        ("GPUs", p.num_gpus), ("tensor parallel (TP)", p.tp),
        ("pipeline parallel (PP)", p.pp), ("data parallel (DP = GPUs / (TP*PP))", p.dp),
        ("sequence parallel", "on" if p.sp else "off"), ("ZeRO stage", p.zero_stage),
        ("micro batch (MBS)", p.micro_batch_size),
        ("gradient accumulation (GAS)", p.grad_accum_steps),
        ("global batch (GBS = MBS*DP*GAS)", p.global_batch_size),
        ("tokens per step", f"{p.tokens_per_step:,}")]
    return _section("Parallel layout", [[k, str(v)] for k, v in rows], ("", "value"))


def _time_section(result: Estimate) -> str:
    t, w = result.time, result.workload
    rows = [[f"peak per GPU ({t.peak_dtype}, dense)",
             f"{t.peak_flops_per_gpu / 1e12:,.1f} TFLOP/s"],
            ["assumed MFU", f"{t.assumed_mfu:.0%}"],
            ["implied HFU", f"{t.implied_hfu:.1%}"],
            ["step time", format_seconds(t.step_seconds)],
            ["tokens/s", f"{t.tokens_per_second:,.0f}"],
            ["tokens/s per GPU", f"{t.tokens_per_second_per_gpu:,.0f}"]]
    return _section(f"Training speed at the assumed MFU on {w.num_gpus} x {w.gpu}", rows,
                    ("", "value"))


def _parallel_memory_section(result: Estimate) -> str:
    rows = []
    for row in result.parallel_memory:
        if isinstance(row, ImpossibleLayout):
            rows.append([row.layout, "-", "-", "-", f"not possible: {row.not_possible}"])
            continue
        rows.append([row.layout, format_bytes(row.model_state_bytes),
                     format_bytes(row.activation_bytes), format_bytes(row.total_bytes),
                     "fits" if row.fits else "does NOT fit"])
    return _section("Per-GPU training memory by parallelism (same micro-batch; ZeRO shards "
                    "model states over DP, TP splits weights and activations, PP the weights)",
                    rows, ("layout", "model states", "activations", "total", "with reserve"))


def _bound(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def _communication_section(result: Estimate) -> str:
    c = result.communication
    d = c.data_parallel
    payload = ", ".join(f"{op.replace('_', '-')} {format_bytes(size)}"
                        for op, size in d.payload_bytes.items() if size)
    rows = [[f"data parallel over {d.ranks} (ZeRO {d.zero_stage}, "
             f"{format_count(d.params_per_gpu)} params)", payload,
             format_bytes(d.bytes_sent_per_gpu), _bound(d.seconds_lower_bound)]]
    rows.append(["  per micro-step", format_bytes(d.payload_bytes_per_micro_step), "", ""])
    t = c.tensor_parallel
    if t is not None:
        rows.append([f"tensor parallel over {t.ranks} (activations)",
                     f"all-reduce {format_bytes(t.payload_bytes['all_reduce'])}",
                     format_bytes(t.bytes_sent_per_gpu), _bound(t.seconds_lower_bound)])
    p = c.pipeline_parallel
    if p is not None:
        rows.append([f"pipeline over {p.stages} stages (point to point)", "-",
                     format_bytes(p.bytes_sent_per_gpu), _bound(p.seconds_lower_bound)])
    rows.append(["total", "", "", _bound(c.seconds_lower_bound)])
    rows.append(["step at the assumed MFU", "", "", format_seconds(c.compute_seconds)])
    share = c.share_without_overlap
    link = c.link_bandwidth_bytes_per_s
    where = ("no link bandwidth known: pass --link-bandwidth" if link is None
             else f"{link / 1e9:,.0f} GB/s per direction, {c.link_source}")
    title = (f"Communication per optimizer step, bandwidth bounds ({where})"
             + ("" if share is None else f": {share:.1%} of the step if none of it overlaps"))
    return _section(title, rows, ("", "payload per step", "sent per GPU", "time >="))


def _inference_section(result: Estimate) -> str:
    i, w = result.inference, result.workload
    rows = [[f"weights ({i.bytes_per_element} bytes each)",
             format_bytes(i.memory_parts["weights"])],
            ["KV cache per token", format_bytes(i.kv_cache_bytes_per_token)],
            [f"KV cache per request ({i.context_len:,} tokens)",
             format_bytes(i.kv_cache_bytes_per_request)],
            ["memory for one request", format_bytes(i.memory_bytes_one_request)],
            ["concurrent requests that fit", f"{i.max_concurrent_requests:,}"],
            ["prefill time, lower bound (FLOPs / peak)",
             format_seconds(i.prefill_seconds_lower_bound)],
            ["decode tokens/s, bandwidth bound ((weights + KV) / bandwidth)",
             f"{i.decode_tokens_per_second_bandwidth_bound:,.1f}"],
            ["decode tokens/s, compute bound (peak / FLOPs)",
             f"{i.decode_tokens_per_second_compute_bound:,.1f}"],
            ["decode tokens/s, upper bound", f"{i.decode_tokens_per_second_upper_bound:,.1f}"]]
    return _section(f"Inference on one {w.gpu} (batch 1, context {i.context_len:,})", rows,
                    ("", "value"))


def _sizing_section(result: Estimate) -> str:
    rows = [[finding.rule, "ok" if finding.ok else "CHECK",
             finding.detail + (f" -> {finding.suggestion}" if finding.suggestion else "")]
            for finding in result.sizing]
    return _section("Sizing rules (source 001, after Anthony et al. 2024)", rows,
                    ("rule", "status", "detail"))


def render_estimate(result: Estimate) -> str:
    """The tables `python -m harness estimate` prints for an `Estimate`."""
    w = result.workload
    header = (f"{result.model.name} on {w.num_gpus} x {w.gpu}: micro-batch "
              f"{w.micro_batch_size}, sequence {w.seq_len:,}, {w.precision}, {w.optimizer}, "
              f"recompute {w.recompute}")
    sections = [header, _parameters_section(result), _flops_section(result),
                _memory_section(result), _parallel_section(result),
                _parallel_memory_section(result), _time_section(result),
                _communication_section(result), _inference_section(result),
                _sizing_section(result)]
    sections += [f"note: {note}" for note in result.notes]
    return "\n\n".join(sections)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `estimate` command's options."""
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a model of the zoo (e.g. llama-2-7b, gpt2); or use --config")
    parser.add_argument("--config", metavar="PATH",
                        help="a Hugging Face model directory or its config.json instead of a "
                             "zoo name")
    parser.add_argument("--ignore-key", action="append", default=[], metavar="KEY",
                        help="a config.json key that changes neither parameters nor FLOPs but "
                             "is unknown to the loader (repeatable)")
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
                        help=f"activation recomputation: {', '.join(RECOMPUTE_KINDS)}")
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


def _model_from(args: argparse.Namespace) -> TransformerConfig:
    if args.model and args.config:
        raise ValueError(f"give either a model name or --config, not both "
                         f"(got {args.model!r} and --config {args.config!r})")
    if args.ignore_key and not args.config:
        raise ValueError("--ignore-key applies to --config; pass --config PATH as well")
    if args.config:
        return load_hf_config(args.config, ignore_keys=args.ignore_key)
    if not args.model:
        raise ValueError("name a model (e.g. llama-2-7b) or pass --config with a model "
                         "directory or its config.json")
    return get_model(args.model)


def _link_bandwidth_from(args: argparse.Namespace) -> float | None:
    """--link-bandwidth in bytes/s; checked in the GB/s the user typed."""
    gb_per_s: float | None = args.link_bandwidth
    if gb_per_s is None:
        return None
    if not math.isfinite(gb_per_s) or gb_per_s <= 0:
        raise ValueError(f"--link-bandwidth must be a positive number of GB/s, got {gb_per_s!r}")
    return gb_per_s * 1e9


def run(args: argparse.Namespace) -> int:
    """Print the estimate as tables, or as JSON with --json; 0 on success."""
    cfg = _model_from(args)
    # Checked here first so that an error names the flag the user typed, not the Python argument.
    for flag, value in (("--batch", args.batch), ("--num-gpus", args.num_gpus), ("--tp", args.tp),
                        ("--pp", args.pp), ("--grad-accum", args.grad_accum)):
        require_positive_int(flag, value)
    if args.seq is not None:
        require_positive_int("--seq", args.seq)
    require_positive_fraction("--mfu", args.mfu)
    require_choice("--recompute", args.recompute, RECOMPUTE_KINDS)
    require_choice("--precision", args.precision, TRAINING_PRECISIONS)
    require_choice("--optimizer", args.optimizer, OPTIMIZERS)
    require_choice("--zero", args.zero, ZERO_STAGES)
    result = estimate(cfg, batch_size=args.batch, seq_len=args.seq, gpu=args.gpu,
                      num_gpus=args.num_gpus, tp=args.tp, pp=args.pp, sp=args.sp,
                      zero_stage=args.zero, grad_accum_steps=args.grad_accum,
                      recompute=args.recompute, precision=args.precision,
                      optimizer=args.optimizer, assumed_mfu=args.mfu, causal=args.causal,
                      link_bandwidth=_link_bandwidth_from(args))
    print(json.dumps(result.to_dict(), indent=2) if args.json else render_estimate(result))
    return 0
