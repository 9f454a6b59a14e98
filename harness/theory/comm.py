"""Communication of parallel training: collective bandwidths, ring time bounds, and the bytes that
data, tensor and pipeline parallelism move per optimizer step.

Sizes and bandwidths follow nccl-tests (doc/PERFORMANCE.md), the convention NCCL users compare:
- the size S of a collective is its whole buffer: the tensor an all-reduce reduces, the gathered
  output of an all-gather, the input of a reduce-scatter (each rank contributes or keeps S/n);
- algorithm bandwidth algbw = S / t;
- bus bandwidth busbw = algbw * factor, with factor 2(n-1)/n for all-reduce and (n-1)/n for
  all-gather and reduce-scatter: the bytes each rank must send per byte of S. busbw is
  comparable with the one-way link bandwidth of a GPU whatever the number of ranks.

Time bounds use the alpha-beta model of the ring algorithms (Thakur, Rabenseifner and Gropp 2005;
Patarasuk and Yuan 2009): a ring all-gather or reduce-scatter takes n-1 steps, each sending S/n
bytes to the next rank; a ring all-reduce is a reduce-scatter followed by an all-gather, 2(n-1)
steps. With a latency alpha per step and a one-way link bandwidth B:
    t >= steps * alpha + factor * S / B.
The ring moves the fewest bytes per rank an all-reduce can (Patarasuk and Yuan), so factor*S/B
bounds every algorithm that reduces on the GPUs; NVLink SHARP (NCCL's "NVLS") reduces inside the
switch and can beat it, which is why measurements compared with this bound run with
NCCL_NVLS_ENABLE=0.

Everything is in bytes and seconds; bandwidths in bytes/s. No torch import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.checks import (
    require_bool,
    require_choice,
    require_non_negative,
    require_non_negative_int,
    require_positive,
    require_positive_int,
)
from harness.theory.config import TransformerConfig, require_config
from harness.theory.flops import RECOMPUTE_KINDS
from harness.theory.memory.states import (
    TRAINING_PRECISIONS,
    ZERO_STAGES,
    activation_element_bytes,
)
from harness.theory.parallel import params_per_rank

COLLECTIVES: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter")

# Bytes per element of what data parallelism communicates, by training precision.
# Gradients are reduced in fp32 under mixed precision: FSDP2 is run with
# MixedPrecisionPolicy(reduce_dtype=fp32) (torchtitan's default), Megatron-LM with
# --accumulate-allreduce-grads-in-fp32; torch.autocast over fp32 parameters ("-autocast") has
# fp32 gradients, which DDP reduces as they are.
GRADIENT_REDUCE_BYTES: dict[str, int] = {"fp32": 4, "bf16-mixed": 4, "fp16-mixed": 4, "bf16": 2,
                                         "bf16-autocast": 4, "fp16-autocast": 4}
# Parameters are gathered in the 16-bit working dtype under mixed precision (FSDP2's param_dtype,
# DeepSpeed ZeRO's fp16/bf16 partitions), and as stored otherwise: fp32 for fp32 training and for
# autocast, whose parameters are fp32 (it casts them after the gather).
PARAM_GATHER_BYTES: dict[str, int] = {"fp32": 4, "bf16-mixed": 2, "fp16-mixed": 2, "bf16": 2,
                                      "bf16-autocast": 4, "fp16-autocast": 4}

# Megatron-LM's tensor parallelism all-reduces the b*s*h activations of a layer twice in forward
# (after the attention and the MLP output projections, the "g" operators) and twice in backward
# (the input gradients of the QKV and MLP up projections, the "f" operators): Shoeybi et al. 2019,
# figure 4. Full recomputation runs the forward, and its two all-reduces, once more.
TP_ALL_REDUCES_PER_LAYER = 4
TP_RECOMPUTED_ALL_REDUCES_PER_LAYER = 2


def bus_bandwidth_factor(op: str, world_size: int) -> float:
    """Bytes each rank sends per byte of the collective's size S: 2(n-1)/n for all-reduce,
    (n-1)/n for all-gather and reduce-scatter (nccl-tests); 0 for a single rank."""
    require_choice("op", op, COLLECTIVES)
    n = require_positive_int("world_size", world_size)
    steps = 2 * (n - 1) if op == "all_reduce" else n - 1
    return steps / n


def ring_steps(op: str, world_size: int) -> int:
    """Sequential send steps of the ring algorithm: 2(n-1) for all-reduce (a reduce-scatter then
    an all-gather), n-1 for all-gather and reduce-scatter."""
    require_choice("op", op, COLLECTIVES)
    n = require_positive_int("world_size", world_size)
    return 2 * (n - 1) if op == "all_reduce" else n - 1


def algorithm_bandwidth(nbytes: float, seconds: float) -> float:
    """nccl-tests' algbw = S / t in bytes/s, S the collective's whole buffer."""
    size = require_non_negative("nbytes", nbytes)
    return size / require_positive("seconds", seconds)


def bus_bandwidth(op: str, nbytes: float, seconds: float, world_size: int) -> float:
    """nccl-tests' busbw in bytes/s: algbw times `bus_bandwidth_factor(op, world_size)`. It is
    at most the one-way link bandwidth for a ring, whatever the number of ranks."""
    return algorithm_bandwidth(nbytes, seconds) * bus_bandwidth_factor(op, world_size)


def bytes_sent_per_rank(op: str, nbytes: float, world_size: int) -> float:
    """Bytes every rank sends (and receives) in a ring collective of size `nbytes`."""
    size = require_non_negative("nbytes", nbytes)
    return size * bus_bandwidth_factor(op, world_size)


def ring_time_lower_bound(op: str, nbytes: float, world_size: int,
                          link_bandwidth_bytes_per_s: float,
                          latency_seconds: float = 0.0) -> float:
    """Least time of a ring collective of size `nbytes` over `world_size` ranks, in seconds:
    ring_steps * latency + bytes_sent_per_rank / link bandwidth (alpha-beta model).

    `link_bandwidth_bytes_per_s` is one GPU's one-way bandwidth to its peers
    (`GPUSpec.interconnect_bandwidth_bytes_per_s`); `latency_seconds` the cost of one step (a
    few microseconds over NVLink); 0 gives the bandwidth-only bound.
    """
    bandwidth = require_positive("link_bandwidth_bytes_per_s", link_bandwidth_bytes_per_s)
    latency = require_non_negative("latency_seconds", latency_seconds)
    return (ring_steps(op, world_size) * latency
            + bytes_sent_per_rank(op, nbytes, world_size) / bandwidth)


@dataclass(frozen=True)
class StepTraffic:
    """The collective payloads of one optimizer step in bytes, by operation, each the sum of the
    nccl-tests sizes S of its calls; `bytes_sent_per_rank` and `time_lower_bound` turn them into
    what crosses each GPU's link."""

    all_reduce_bytes: int = 0
    all_gather_bytes: int = 0
    reduce_scatter_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("all_reduce_bytes", "all_gather_bytes", "reduce_scatter_bytes"):
            require_non_negative_int(f"StepTraffic.{name}", getattr(self, name))

    def payloads(self) -> dict[str, int]:
        """{collective: bytes} in COLLECTIVES order."""
        return {"all_reduce": self.all_reduce_bytes, "all_gather": self.all_gather_bytes,
                "reduce_scatter": self.reduce_scatter_bytes}

    @property
    def total_bytes(self) -> int:
        """Sum of the payloads (not what crosses a link: see `bytes_sent_per_rank`)."""
        return sum(self.payloads().values())

    def bytes_sent_per_rank(self, world_size: int) -> float:
        """Bytes each of `world_size` ranks sends in ring collectives of these payloads."""
        return sum(bytes_sent_per_rank(op, size, world_size)
                   for op, size in self.payloads().items())

    def time_lower_bound(self, world_size: int, link_bandwidth_bytes_per_s: float) -> float:
        """Bandwidth-only lower bound on the time of these payloads over `world_size` ranks
        (latency left out: the number of calls, buckets, is not part of the traffic)."""
        return sum(ring_time_lower_bound(op, size, world_size, link_bandwidth_bytes_per_s)
                   for op, size in self.payloads().items())


def data_parallel_traffic(num_params: int, *, zero_stage: int = 0, grad_accum_steps: int = 1,
                          precision: str = "bf16-mixed") -> StepTraffic:
    """Collective payloads of one optimizer step of data parallelism over `num_params`
    parameters (those one model replica's GPU holds), by ZeRO stage.

    Volumes per step of the ZeRO paper (Rajbhandari et al. 2020, section 7): stages 0-2 move as
    much as a gradient all-reduce, stage 3 half as much again.
    - 0 (DDP): one all-reduce of every gradient. With gradient accumulation the other micro-steps
      run under no_sync, so it stays one per optimizer step, whatever grad_accum_steps.
    - 1: gradients accumulate unsharded as in DDP, then one reduce-scatter of them and one
      all-gather of the updated parameters.
    - 2: gradients are kept sharded, so each micro-step's are reduce-scattered (grad_accum_steps
      times); one all-gather of the updated parameters.
    - 3 (FSDP, ZeRO-3): parameters are all-gathered in the forward and again in the backward of
      every micro-step, and each micro-step's gradients reduce-scattered. (FSDP2 with
      set_requires_gradient_sync(False) on all but the last micro-step keeps unsharded
      gradients instead and reduce-scatters once: stage-1 gradient traffic at DDP's memory.)
    Element sizes by precision: GRADIENT_REDUCE_BYTES and PARAM_GATHER_BYTES.
    """
    params = require_positive_int("num_params", num_params)
    require_choice("zero_stage", zero_stage, ZERO_STAGES)
    gas = require_positive_int("grad_accum_steps", grad_accum_steps)
    require_choice("precision", precision, TRAINING_PRECISIONS)
    gradients = params * GRADIENT_REDUCE_BYTES[precision]
    weights = params * PARAM_GATHER_BYTES[precision]
    if zero_stage == 0:
        return StepTraffic(all_reduce_bytes=gradients)
    if zero_stage == 1:
        return StepTraffic(reduce_scatter_bytes=gradients, all_gather_bytes=weights)
    if zero_stage == 2:
        return StepTraffic(reduce_scatter_bytes=gas * gradients, all_gather_bytes=weights)
    return StepTraffic(reduce_scatter_bytes=gas * gradients, all_gather_bytes=2 * gas * weights)


def ddp_gradient_bytes_per_micro_step(num_params: int, gradient_bytes: int = 4,
                                      grad_accum_steps: int = 1) -> float:
    """Bytes DDP all-reduces per micro-step on average: every gradient once per optimizer step
    (num_params * gradient_bytes), divided by grad_accum_steps because the other micro-steps run
    under no_sync. Source 001: going from GAS=1 to GAS=8 cuts the gradient traffic 8-fold."""
    params = require_positive_int("num_params", num_params)
    element = require_positive_int("gradient_bytes", gradient_bytes)
    gas = require_positive_int("grad_accum_steps", grad_accum_steps)
    return params * element / gas


def tensor_parallel_traffic(cfg: TransformerConfig, batch_size: int, seq_len: int, *,
                            layers: int, recompute: str = "none", bytes_per_element: int = 2,
                            grad_accum_steps: int = 1) -> StepTraffic:
    """All-reduce payloads of Megatron-LM tensor parallelism in one optimizer step on a GPU that
    holds `layers` transformer layers: TP_ALL_REDUCES_PER_LAYER (plus the recomputed forward's
    under recompute="full") of the b*s*h activations per layer and micro-batch.

    Sequence parallelism replaces each all-reduce by a reduce-scatter and an all-gather of the
    same buffer, which send exactly as many bytes per rank (Korthikanti et al. 2022), so the
    traffic is the same with or without it. The vocabulary-parallel embedding and loss add a
    few small collectives per micro-batch that are left out.
    """
    cfg = require_config(cfg)
    b = require_positive_int("batch_size", batch_size)
    s = require_positive_int("seq_len", seq_len)
    count = require_positive_int("layers", layers)
    require_choice("recompute", recompute, RECOMPUTE_KINDS)
    element = require_positive_int("bytes_per_element", bytes_per_element)
    gas = require_positive_int("grad_accum_steps", grad_accum_steps)
    per_layer = TP_ALL_REDUCES_PER_LAYER + (TP_RECOMPUTED_ALL_REDUCES_PER_LAYER
                                            if recompute == "full" else 0)
    activation = b * s * cfg.hidden_size * element
    return StepTraffic(all_reduce_bytes=gas * count * per_layer * activation)


def pipeline_parallel_bytes(cfg: TransformerConfig, batch_size: int, seq_len: int, *,
                            bytes_per_element: int = 2, grad_accum_steps: int = 1, tp: int = 1,
                            sp: bool = False) -> int:
    """Bytes a middle pipeline stage sends per optimizer step (point to point, not a
    collective): per micro-batch the b*s*h activations to the next stage and their gradient to
    the previous one. With sequence parallelism each tensor-parallel rank holds, and sends,
    1/tp of the sequence."""
    cfg = require_config(cfg)
    b = require_positive_int("batch_size", batch_size)
    s = require_positive_int("seq_len", seq_len)
    element = require_positive_int("bytes_per_element", bytes_per_element)
    gas = require_positive_int("grad_accum_steps", grad_accum_steps)
    t = require_positive_int("tp", tp)
    require_bool("sp", sp)
    activation = b * s * cfg.hidden_size * element
    return 2 * gas * (activation // t if sp else activation)


def communication_share(communication_seconds: float, compute_seconds: float) -> float:
    """The fraction of a step spent communicating when none of it overlaps compute:
    comm / (comm + compute), in [0, 1). Overlap (DDP's bucketed all-reduce during backward,
    FSDP's prefetched all-gathers) hides part of it, so this is the most communication can
    cost a step at these times."""
    comm = require_non_negative("communication_seconds", communication_seconds)
    compute = require_positive("compute_seconds", compute_seconds)
    return comm / (comm + compute)


@dataclass(frozen=True)
class DataParallelCommunication:
    """Data parallelism's share of a step: the gradients (and, with ZeRO, parameters) of the
    `params_per_gpu` parameters one GPU holds, over `ranks` replicas."""

    ranks: int
    params_per_gpu: int
    zero_stage: int
    payload_bytes: Mapping[str, int]
    payload_bytes_per_micro_step: float
    bytes_sent_per_gpu: float
    seconds_lower_bound: float | None


@dataclass(frozen=True)
class TensorParallelCommunication:
    """Tensor parallelism's share of a step: activation all-reduces over `ranks` GPUs."""

    ranks: int
    payload_bytes: Mapping[str, int]
    bytes_sent_per_gpu: float
    seconds_lower_bound: float | None


@dataclass(frozen=True)
class PipelineCommunication:
    """Pipeline parallelism's share of a step: activations and their gradients between stages."""

    stages: int
    bytes_sent_per_gpu: int
    seconds_lower_bound: float | None


@dataclass(frozen=True)
class StepCommunication:
    """What each kind of parallelism moves per optimizer step on the busiest GPU, the time
    bounds at `link_bandwidth_bytes_per_s` (None where no bandwidth is known), and the share of
    the step they would take without overlap."""

    link_bandwidth_bytes_per_s: float | None
    link_source: str
    data_parallel: DataParallelCommunication
    tensor_parallel: TensorParallelCommunication | None
    pipeline_parallel: PipelineCommunication | None
    seconds_lower_bound: float | None
    compute_seconds: float
    share_without_overlap: float | None


def step_communication(cfg: TransformerConfig, *, batch_size: int, seq_len: int, dp: int,
                       tp: int, pp: int, sp: bool, zero_stage: int, grad_accum_steps: int,
                       recompute: str, precision: str, compute_seconds: float,
                       link_bandwidth: float | None, link_source: str) -> StepCommunication:
    """Bytes each kind of parallelism moves per optimizer step on the busiest GPU, their time
    lower bounds at `link_bandwidth` (one-way bytes/s; None: unknown, no bounds), and the share
    of a step of `compute_seconds` they would take unoverlapped. `link_source` says where the
    bandwidth came from.

    Data parallelism reduces the gradients of the parameters one GPU holds (`params_per_rank`,
    first pipeline stage) over dp ranks (`data_parallel_traffic`); tensor parallelism
    all-reduces activations over tp ranks; pipeline parallelism sends activations and their
    gradients between stages. Latency is left out: these are bandwidth bounds.
    """
    link = None if link_bandwidth is None else require_positive("link_bandwidth", link_bandwidth)
    element = activation_element_bytes(precision)

    def seconds(traffic: StepTraffic, ranks: int) -> float | None:
        return None if link is None else traffic.time_lower_bound(ranks, link)

    held = params_per_rank(cfg, tp, pp)
    dp_traffic = data_parallel_traffic(held, zero_stage=zero_stage,
                                       grad_accum_steps=grad_accum_steps, precision=precision)
    data = DataParallelCommunication(
        ranks=dp, params_per_gpu=held, zero_stage=zero_stage,
        payload_bytes=dp_traffic.payloads(),
        payload_bytes_per_micro_step=dp_traffic.total_bytes / grad_accum_steps,
        bytes_sent_per_gpu=dp_traffic.bytes_sent_per_rank(dp),
        seconds_lower_bound=seconds(dp_traffic, dp))
    tensor = None
    if tp > 1:
        tp_traffic = tensor_parallel_traffic(cfg, batch_size, seq_len, layers=cfg.num_layers // pp,
                                             recompute=recompute, bytes_per_element=element,
                                             grad_accum_steps=grad_accum_steps)
        tensor = TensorParallelCommunication(
            ranks=tp, payload_bytes=tp_traffic.payloads(),
            bytes_sent_per_gpu=tp_traffic.bytes_sent_per_rank(tp),
            seconds_lower_bound=seconds(tp_traffic, tp))
    pipeline = None
    if pp > 1:
        sent = pipeline_parallel_bytes(cfg, batch_size, seq_len, bytes_per_element=element,
                                       grad_accum_steps=grad_accum_steps, tp=tp, sp=sp)
        pipeline = PipelineCommunication(
            stages=pp, bytes_sent_per_gpu=sent,
            seconds_lower_bound=None if link is None else sent / link)
    bounds = [part.seconds_lower_bound for part in (data, tensor, pipeline) if part is not None]
    total = None if link is None else sum(bound for bound in bounds if bound is not None)
    return StepCommunication(
        link_bandwidth_bytes_per_s=link_bandwidth, link_source=link_source,
        data_parallel=data, tensor_parallel=tensor, pipeline_parallel=pipeline,
        seconds_lower_bound=total, compute_seconds=compute_seconds,
        share_without_overlap=(None if total is None
                               else communication_share(total, compute_seconds)))
