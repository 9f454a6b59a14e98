"""Several GPUs through torch.distributed and NCCL: collective bandwidth and latency, data-parallel
training (DDP, FSDP2) against one GPU, the gradient traffic DDP moves, and the device memory the
process group takes.

Run under torchrun, one process per GPU, with NVLink SHARP off so that the ring bound holds:

    NCCL_NVLS_ENABLE=0 torchrun --nproc-per-node 2 -m pytest -m distributed perf_tests/

Every rank measures; times are the slowest rank's (`harness.distributed.group.LockstepClock`);
rank 0 judges and writes the baseline of this GPU count ("nvidia-h200-x2"). The training tests
also run on one GPU (`--nproc-per-node 1`), the first point of the scaling series.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from harness.distributed.group import DistributedRun
from harness.distributed.training import (
    AllReduceByteCounter,
    accumulate_gradients,
    fsdp2,
    shard_with_fsdp2,
)
from harness.gate.formatting import format_size
from harness.gate.results import Measurement
from harness.model import build_model, lm_loss, random_batch
from harness.pytest_plugin.fixture import Perf
from harness.theory.comm import (
    COLLECTIVES,
    communication_share,
    data_parallel_traffic,
    ddp_gradient_bytes_per_micro_step,
)
from harness.theory.memory.breakdown import DISTRIBUTED_BUFFER_BYTES_RANGE
from harness.workloads.bounds import peak_flops_of
from harness.workloads.models import LLAMA_STYLE
from harness.workloads.training import (
    GPU_BOUND_TRAINING,
    TRAINING_LR,
    TRAINING_PRECISION,
    make_optimizer,
)

pytestmark = pytest.mark.gpu

MIB = 2**20
KIB = 2**10
# nccl-tests style sweep, 1 MiB to 1 GiB in steps of 16x: small messages still pay latency,
# 256 MiB and up run at full bandwidth on NVLink (nccl-tests curves flatten from ~64 MiB).
BANDWIDTH_SIZES: tuple[int, ...] = (1 * MIB, 16 * MIB, 256 * MIB, 1024 * MIB)
# Messages this large must reach a good share of the link; smaller ones are not judged so.
FULL_BANDWIDTH_FROM = 256 * MIB
# Large messages must reach this share of the one-way link bandwidth. On 2 H200s linked by 18
# NVLinks (450 GB/s) the recorded bus bandwidth at 256 MiB and 1 GiB was 289-323 GB/s for
# all-reduce, 240-257 GB/s for all-gather and 233-271 GB/s for reduce-scatter (2026-11-21); a
# re-run on another such machine read 219.6 GB/s for reduce-scatter of 256 MiB and failed the
# first threshold of 50%. PCIe Gen5 x16 carries at most
# 64 GB/s one way, so 30% (135 GB/s) still tells "NVLink works" from "traffic fell back to PCIe".
MIN_LINK_FRACTION = 0.3
# A ring cannot beat the link: busbw above it means in-switch reduction (NVLS) is on or the
# spec table's bandwidth is wrong. 2% covers the CUDA-event resolution (0.5 us) over samples of
# at least 1 ms, and the run-to-run drift of a median.
LINK_BOUND_SLACK = 1.02
# Messages under FULL_BANDWIDTH_FROM: timed on the host's launches, their medians had spreads
# (IQR/median) of 0.9-62% within one recording on 2 H200s and an 8 KiB reduce-scatter read 27 us
# on one 2-H200 host, 75 us on another (2026-11-21). Queued behind a GPU-side wait (Perf.collective)
# they read NCCL's own 6-11 us, and a recording and two verifications on one host of each kind
# stayed within 5.4% (1 MiB: 4.7%). Until hosts of a kind have been compared, their gate catches
# a doubling, like the suite's other host-bound work (harness/workloads/tolerances.py).
SMALL_MESSAGE_TOLERANCE = 1.0
# Tolerance of the bandwidth-bound messages, per size. Over three runs on 4 H200s (2026-11-21)
# the 256 MiB bus bandwidths spanned up to 6.8% (reduce-scatter 280.2, 299.3, 290.5 GB/s) and
# the 1 GiB ones up to 2.5% (all-gather 314.5, 314.0, 322.0 GB/s); over six runs on at least
# three 2-H200 machines reduce-scatter spanned 6.0% at 256 MiB (219.6-233.7 GB/s) and 4.4% at
# 1 GiB (259.2-271.1 GB/s). A confirming re-measurement must still be worse by half the
# tolerance, so half of it covers the spread between machines of one kind: 15% and 10%. Falling
# back to PCIe (at most 64 GB/s) or losing links moves far more, and MIN_LINK_FRACTION fails it
# outright.
LARGE_MESSAGE_TOLERANCES: dict[int, float] = {256 * MIB: 0.15, 1024 * MIB: 0.10}
# Latency: 8 KiB and 64 KiB move in well under a microsecond at NVLink speed, so their time is
# NCCL's fixed cost per call (several microseconds) and 8x the bytes must cost < 2x the time.
LATENCY_SIZES: tuple[int, int] = (8 * KIB, 64 * KIB)
LATENCY_GROWTH_LIMIT = 2.0

# The training tests run GPU_BOUND_TRAINING: a step whose time is the GPU's. With
# LLAMA_TRAINING, whose step the host's Python bounds, the DDP step on 2-H200 hosts read 76.8 ms
# on one host and 85.8-124 ms on others for the same 75-83 ms single-GPU step (2026-11-21):
# DDP's extra host work per step, not its communication.
#
# Timing tolerance of the DDP steps. Each sample is the slowest rank's. With GPU_BOUND_TRAINING a
# recording and two verifications spanned 0.4% for the DDP step on 2 and on 4 H200s (66.74-67.02
# ms, 69.15-69.40 ms) and 1.1% for the single-GPU step, which read 60.1 ms on a 2-GPU host and
# 60.9 ms on the 4-GPU one (2026-11-21); the host-bound model had spanned 2.6% on 4 H200s. 5%
# stays until machines of one kind have been compared with each other.
DATA_PARALLEL_TOLERANCE = 0.05
# DDP may not be faster than the same step on one GPU beyond the timing drift between two
# measurements (DATA_PARALLEL_TOLERANCE).
TIMING_DRIFT = DATA_PARALLEL_TOLERANCE
# All-reduce bus bandwidth reached 64-72% of the link on 2 H200s (above), so un-overlapped
# gradient communication takes at most about 1.5x its bandwidth bound; DDP hides much of it
# behind the backward pass. Exposed communication beyond twice the bound means the links are
# slower than the table says (a lost NVLink, traffic on PCIe) or DDP stopped overlapping.
EXPOSED_COMM_BOUND_MULTIPLE = 2.0
# DDP costs time even without communication (gradients copied into buckets, hooks, NCCL calls
# on one rank): on one H200 it added 3.1% to GPU_BOUND_TRAINING's step (61.6 against 59.8 ms),
# and -2.2% to +8.5% to the host-bound model's in three runs (2026-11-21). 10% of the single-GPU
# step covers that; the rest is charged to communication. (On 2 and 4 H200s DDP added 6.7 and
# 8.2 ms, against bounds of 5.9 and 8.9 ms: allowances of 17.9 and 23.9 ms.)
DDP_OVERHEAD = 0.10

# FSDP2 with bf16 parameters and fp32 gradient reduction over fp32 sharded master weights is
# mixed precision in the formulas' terms: 16-bit all-gathers, fp32 reduce-scatters.
FSDP2_PRECISION = "bf16-mixed"
# FSDP2 allocates on its all-gather and reduce-scatter streams, so what the caching allocator
# holds depends on timing: peak reserved and device memory moved by +10.4% and +9.7% between two
# runs on one H200, and by +14.6% and +12.9% between two runs on 4 H200s, where a confirming
# re-measurement read +13.8% and +12.3% over the recording; with GPU_BOUND_TRAINING on 4 H200s
# peak reserved read 11.30 GiB recording, 10.31 and 10.26 GiB verifying (2026-11-21); peak
# allocated moved by 0.3% at most. 30% (15% for the re-measurement) still catches a reserve
# that grows by a third; peak allocated keeps the default memory tolerance.
FSDP2_CACHED_MEMORY_TOLERANCE = 0.30
# Timing tolerance of the FSDP2 step. On the host-bound model (12-13% MFU) three runs on 4 H200s
# took 162.1, 152.1 and 166.8 ms, a 9.6% span, and 2-H200 hosts 134-172 ms. GPU_BOUND_TRAINING
# runs FSDP2 at 40-43% MFU: a recording and two verifications spanned 0.4% on 2 H200s (66.47-
# 66.76 ms) and 0.6% on 4 (64.43-64.84 ms) (2026-11-21). 10% stays until machines of one kind
# have been compared with each other.
FSDP2_TIMING_TOLERANCE = 0.10
# Gradient traffic: a small batch is enough, the bytes do not depend on it.
TRAFFIC_BATCH, TRAFFIC_SEQ = 1, 256
TRAFFIC_ACCUMULATION: tuple[int, ...] = (1, 4)
# A DDP step with fp32 parameters reduces fp32 gradients.
FP32_GRADIENT_BYTES = 4
# Byte counts are exact: any change means DDP or the model changed.
EXACT = 1e-9


def _run(perf: Perf) -> DistributedRun:
    run = perf.distributed
    assert run is not None, "distributed tests run under torchrun (see the module docstring)"
    return run


def _link_bandwidth(perf: Perf) -> float:
    link = None if perf.gpu is None else perf.gpu.interconnect_bandwidth_bytes_per_s
    if link is None:
        raise ValueError(f"the link bandwidth of {getattr(perf.gpu, 'name', 'this GPU')} is not "
                         f"in harness.theory.hardware's table; register a GPUSpec with "
                         f"interconnect_bandwidth_bytes_per_s to judge collectives")
    return float(link)


def _message(nbytes: int, run: DistributedRun) -> int:
    """`nbytes` rounded down to whole fp32 elements on every rank."""
    unit = 4 * run.world_size
    return nbytes // unit * unit


@pytest.mark.distributed(nprocs=2)
@pytest.mark.parametrize("op", COLLECTIVES)
def test_collective_bus_bandwidth_approaches_the_link_and_never_beats_it(
        perf: Perf, released_memory: None, op: str) -> None:
    run, link = _run(perf), _link_bandwidth(perf)
    busbw = {}
    for size in BANDWIDTH_SIZES:
        nbytes = _message(size, run)
        tolerance = (LARGE_MESSAGE_TOLERANCES[size] if size >= FULL_BANDWIDTH_FROM
                     else SMALL_MESSAGE_TOLERANCE)
        measured = perf.collective(op, nbytes, name=f"{op}_{format_size(size)}",
                                   tolerance=tolerance)
        busbw[size] = measured[f"{op}_{format_size(size)}_busbw"].median * 1e9
    for size, value in busbw.items():
        assert value <= link * LINK_BOUND_SLACK, (
            f"{op} of {format_size(size)} ran at a bus bandwidth of {value / 1e9:.1f} GB/s, "
            f"above the {link / 1e9:.0f} GB/s one-way link bandwidth of {perf.gpu.name} that "
            f"bounds a ring: NVLink SHARP is on (set NCCL_NVLS_ENABLE=0) or the table is wrong")
    for size in (s for s in BANDWIDTH_SIZES if s >= FULL_BANDWIDTH_FROM):
        assert busbw[size] >= MIN_LINK_FRACTION * link, (
            f"{op} of {format_size(size)} reached only {busbw[size] / 1e9:.1f} GB/s of bus "
            f"bandwidth, under {MIN_LINK_FRACTION:.0%} of the {link / 1e9:.0f} GB/s link: the "
            f"GPUs talk over a slower path (a lost NVLink, PCIe, NCCL_P2P_DISABLE)")


@pytest.mark.distributed(nprocs=2)
@pytest.mark.parametrize("op", COLLECTIVES)
def test_small_collectives_cost_a_fixed_latency(perf: Perf, op: str) -> None:
    run = _run(perf)
    small, larger = (_message(size, run) for size in LATENCY_SIZES)
    small_time = perf.collective(op, small, tolerance=SMALL_MESSAGE_TOLERANCE)[
        f"{op}_{format_size(small)}"].median
    larger_time = perf.collective(op, larger, tolerance=SMALL_MESSAGE_TOLERANCE)[
        f"{op}_{format_size(larger)}"].median
    assert larger_time < LATENCY_GROWTH_LIMIT * small_time, (
        f"{op}: {format_size(larger)} took {larger_time * 1e6:.1f} us, "
        f"{format_size(small)} {small_time * 1e6:.1f} us; 8x the bytes should cost less than "
        f"{LATENCY_GROWTH_LIMIT:g}x the time while the fixed cost per call dominates")


@pytest.mark.distributed(nprocs=1)
def test_ddp_training_scales_against_one_gpu(perf: Perf, released_memory: None) -> None:
    run = _run(perf)
    workload = GPU_BOUND_TRAINING
    cfg = workload.config
    peak_flops_of(perf.gpu, "bf16")  # per-GPU MFU needs the peak: fail early without it
    link = _link_bandwidth(perf)
    model = build_model(cfg, device=run.torch_device, dtype=torch.float32)
    optimizer = make_optimizer(model, fused=True)
    # Each rank trains on its own data, as data parallelism does.
    generator = torch.Generator(device=run.torch_device).manual_seed(run.rank)
    inputs = random_batch(cfg, workload.batch_size, workload.seq_len, device=run.torch_device,
                          generator=generator)

    def measure(module: torch.nn.Module, prefix: str) -> Measurement:
        return perf.train_step(module, inputs, lm_loss, optimizer, config=cfg,
                               tolerance=DATA_PARALLEL_TOLERANCE,
                               autocast_dtype=torch.bfloat16, precision=TRAINING_PRECISION,
                               optimizer_name="adamw", peak_dtype="bf16", name_prefix=prefix)

    # The same step on each GPU alone (every rank at once, no communication), then under DDP.
    single = measure(model, "single_")
    parallel = measure(DistributedDataParallel(model, device_ids=[run.device_index]), "ddp_")

    single_time = single["single_step_time"].median
    ddp_times = parallel["ddp_step_time"].samples
    perf.metric("ddp_tokens_per_s_all_gpus",
                [run.world_size * t for t in parallel["ddp_tokens_per_s"].samples],
                unit="tokens/s", kind="throughput", tolerance=DATA_PARALLEL_TOLERANCE)
    # Scaling efficiency = DDP tokens/s / (GPUs x single-GPU tokens/s) = single / DDP step
    # time, per DDP sample. (The exposed communication, 1 - efficiency, is a few percent: as a
    # metric of its own its relative changes would be noise.)
    efficiency = perf.metric("ddp_scaling_efficiency", [single_time / t for t in ddp_times],
                             unit="ratio", kind="throughput", theory=1.0,
                             tolerance=DATA_PARALLEL_TOLERANCE)
    traffic = data_parallel_traffic(cfg.num_params(), precision=TRAINING_PRECISION)
    bound = traffic.time_lower_bound(run.world_size, link)

    mfu = parallel["ddp_mfu"].median
    assert 0 < mfu <= 1, f"per-GPU MFU under DDP is {mfu:.3f}, outside (0, 1]"
    assert efficiency.median <= 1 + TIMING_DRIFT, (
        f"DDP on {run.world_size} GPU(s) ran at {efficiency.median:.3f} of the single-GPU "
        f"speed: faster than the same step without communication beyond timing drift")
    exposed = parallel["ddp_step_time"].median - single_time
    share = communication_share(bound, single_time)
    assert exposed <= EXPOSED_COMM_BOUND_MULTIPLE * bound + DDP_OVERHEAD * single_time, (
        f"DDP adds {exposed * 1e3:.2f} ms per step to the {single_time * 1e3:.2f} ms "
        f"single-GPU step; all-reducing {traffic.all_reduce_bytes} B of gradients over "
        f"{run.world_size} GPUs takes at least {bound * 1e3:.2f} ms at {link / 1e9:.0f} GB/s "
        f"({share:.1%} of a step without overlap), so more than "
        f"{EXPOSED_COMM_BOUND_MULTIPLE:g}x that plus {DDP_OVERHEAD:.0%} of the step for DDP's "
        f"own overhead means slow links or lost overlap")


@pytest.mark.distributed(nprocs=1)
def test_ddp_all_reduces_every_gradient_once_per_optimizer_step(perf: Perf,
                                                                released_memory: None) -> None:
    run = _run(perf)
    cfg = LLAMA_STYLE
    model = build_model(cfg, device=run.torch_device, dtype=torch.float32)
    ddp = DistributedDataParallel(model, device_ids=[run.device_index])
    counter = AllReduceByteCounter()
    ddp.register_comm_hook(None, counter.hook)
    generator = torch.Generator(device=run.torch_device).manual_seed(run.rank)
    tokens, targets = random_batch(cfg, TRAFFIC_BATCH, TRAFFIC_SEQ, device=run.torch_device,
                                   generator=generator)

    def micro_step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = lm_loss(ddp(tokens), targets)
        loss.backward()

    accumulate_gradients(ddp, micro_step, 1)  # DDP rebuilds its buckets after a first step
    expected_step = cfg.num_params() * FP32_GRADIENT_BYTES
    assert data_parallel_traffic(cfg.num_params(), precision=TRAINING_PRECISION) \
        .all_reduce_bytes == expected_step
    for gas in TRAFFIC_ACCUMULATION:
        counter.reset()
        accumulate_gradients(ddp, micro_step, gas)
        per_micro = ddp_gradient_bytes_per_micro_step(cfg.num_params(), FP32_GRADIENT_BYTES,
                                                      gas)
        perf.metric(f"gas{gas}_allreduce_bytes_per_step", counter.bytes, unit="B",
                    better="lower", kind="other", tolerance=EXACT, theory=expected_step)
        perf.metric(f"gas{gas}_allreduce_bytes_per_micro_step", counter.bytes / gas, unit="B",
                    better="lower", kind="other", tolerance=EXACT, theory=per_micro)
        assert counter.bytes == expected_step, (
            f"DDP all-reduced {counter.bytes} B in {counter.buckets} bucket(s) over an "
            f"optimizer step of {gas} micro-step(s); every fp32 gradient once is "
            f"{cfg.num_params()} x 4 = {expected_step} B")
        assert counter.bytes / gas == per_micro


@pytest.mark.distributed(nprocs=1)
def test_fsdp2_training_throughput_and_its_communication_bound(perf: Perf,
                                                               released_memory: None) -> None:
    run = _run(perf)
    if fsdp2() is None:
        pytest.skip(f"torch {torch.__version__} has no FSDP2 (fully_shard)")
    workload = GPU_BOUND_TRAINING
    cfg = workload.config
    peak_flops_of(perf.gpu, "bf16")
    link = _link_bandwidth(perf)
    model = build_model(cfg, device=run.torch_device, dtype=torch.float32)
    # bf16 parameters for compute and all-gathers, fp32 gradient reduction (torchtitan's
    # defaults); the fp32 sharded parameters stay the optimizer's master copy.
    shard_with_fsdp2(model, list(model.blocks), param_dtype=torch.bfloat16,
                     reduce_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_LR)
    generator = torch.Generator(device=run.torch_device).manual_seed(run.rank)
    inputs = random_batch(cfg, workload.batch_size, workload.seq_len, device=run.torch_device,
                          generator=generator)
    measured = perf.train_step(model, inputs, lm_loss, optimizer, config=cfg,
                               tolerance=FSDP2_TIMING_TOLERANCE,
                               autocast_dtype=None, precision=FSDP2_PRECISION,
                               optimizer_name="adamw", peak_dtype="bf16", name_prefix="fsdp2_",
                               cached_memory_tolerance=FSDP2_CACHED_MEMORY_TOLERANCE)
    perf.metric("fsdp2_tokens_per_s_all_gpus",
                [run.world_size * t for t in measured["fsdp2_tokens_per_s"].samples],
                unit="tokens/s", kind="throughput", tolerance=FSDP2_TIMING_TOLERANCE)

    mfu = measured["fsdp2_mfu"].median
    assert 0 < mfu <= 1, f"per-GPU MFU under FSDP2 is {mfu:.3f}, outside (0, 1]"
    traffic = data_parallel_traffic(cfg.num_params(), zero_stage=3, precision=FSDP2_PRECISION)
    bound = traffic.time_lower_bound(run.world_size, link)
    step = measured["fsdp2_step_time"].median
    assert step >= bound, (
        f"an FSDP2 step took {step * 1e3:.2f} ms, less than the {bound * 1e3:.2f} ms its "
        f"all-gathers and reduce-scatters need at {link / 1e9:.0f} GB/s: the traffic model of "
        f"formulas.comm overstates what FSDP2 moves")


@pytest.mark.distributed(nprocs=2)
def test_process_group_takes_device_memory_the_allocator_does_not_see(perf: Perf) -> None:
    run = _run(perf)
    memory = run.init_memory
    if memory is None:
        pytest.skip(f"the process group's device memory was not read: {run.init_memory_note}")
    low, high = DISTRIBUTED_BUFFER_BYTES_RANGE
    literature = (f"source 001: {low / 2**30:.0f}-{high / 2**30:.0f} GiB; "
                  f"{run.init_memory_note}")
    perf.metric("init_process_group_bytes", memory.init_bytes, unit="B", better="lower",
                kind="memory")
    perf.metric("first_barrier_bytes", memory.barrier_bytes, unit="B", better="lower",
                kind="memory")
    total = perf.metric("torch_distributed_bytes", memory.total_bytes, unit="B",
                        better="lower", kind="memory")
    seen = memory.reserved_after_bytes - memory.reserved_before_bytes
    assert total.median > 0, (
        f"joining the NCCL process group of {run.world_size} ranks took no device memory "
        f"({literature}); the reading is wrong")
    # torch's allocator rounds small allocations into 2 MiB segments: the barrier's one-element
    # tensor may cost one, NCCL's buffers never show up there.
    assert seen <= 2 * MIB, (
        f"torch's allocator reserved {seen} B while the process group started; NCCL's "
        f"{memory.total_bytes} B ({literature}) should be invisible to it")
