"""The anatomy of a step: which class of work its device time went to, in which phase, and how
much the GPU waited for the host; and the names kernels are grouped under to be compared.

After "Data Movement Is All You Need" (Ivanov et al. 2020, arXiv 2007.00072, as summarised by
source 001): a transformer's operators are tensor contractions (GEMMs, attention), statistical
normalisations (softmax, layer/RMS norm: reductions then a map) and element-wise operators
(bias, dropout, activations, residuals). To those a training step adds memory copies,
communication (NCCL) and the optimizer, and the time the GPU idled while the host issued work.

Pure functions on kernel names and times: `harness.measure.kernels` fills the per-class and
per-phase seconds of a profiled pass, `harness.gate.kernel_diff` groups kernels by
`kernel_key` so that the same work matches across cuBLAS heuristics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from harness.gate.profile import OTHER_ROW_PREFIX, DeviceProfile

# Classes of device work, in report order.
CLASSES: tuple[str, ...] = ("contraction", "normalisation", "elementwise", "memcpy",
                            "communication", "optimizer", "other")
CLASS_LABELS: dict[str, str] = {
    "contraction": "GEMM / attention (tensor contractions)",
    "normalisation": "normalisation / softmax / reductions",
    "elementwise": "element-wise",
    "memcpy": "memory copies / memsets",
    "communication": "communication (NCCL)",
    "optimizer": "optimizer (fused / multi-tensor)",
    "other": "other kernels",
}
# Phases of a training step, as the profiled pass names them (perf::phase::<name> ranges);
# "other" is device work launched outside the three (zero_grad, a flush).
PHASES: tuple[str, ...] = ("forward", "backward", "optimizer", "other")

# Share of a transformer's FLOPs in tensor contractions: 99.80% (and 0.17% in statistical
# normalisations, 0.03% element-wise), while they took 61.0%, 25.5% and 13.5% of its runtime:
# Ivanov et al. 2020, Table 1 (a BERT-large encoder layer in PyTorch). The time share of the
# other classes is what data movement costs.
CONTRACTION_FLOP_SHARE = 0.998
# Backward over forward: a linear layer's backward computes two GEMMs (input and weight
# gradients) of the forward's one, so about 2x the FLOPs and time (source 001, "forward vs
# backward execution speed"); full activation checkpointing adds one forward to it (about 3x).
BACKWARD_FORWARD_RATIO = 2.0
BACKWARD_FORWARD_RATIO_RECOMPUTE = 3.0

# -- classification ------------------------------------------------------------------------
# Each pattern is matched against the lower-cased kernel name; the first class that matches
# wins. Sources: the kernel names torch 2.x and its libraries emit on CUDA, as seen in
# torch.profiler tables on H100/H200 (cuBLAS, cuDNN, flash-attention, CUTLASS, NCCL, ATen).
CLASS_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # NCCL's device kernels: ncclKernel_AllReduce_... (NCCL <= 2.18), ncclDevKernel_... (later).
    ("communication", re.compile(r"nccl")),
    # kineto names copies and memsets "Memcpy HtoD (Pageable -> Device)", "Memset (Device)".
    ("memcpy", re.compile(r"^(memcpy|memset)\b")),
    # Attention: flash-attention 2/3 (flash_fwd_kernel, flash_bwd_...), memory-efficient
    # attention (fmha_cutlassF/B), cuDNN's SDPA (cudnn_generated_fort_native_sdpa_...).
    ("contraction", re.compile(r"flash|fmha|sdpa|attention")),
    # GEMMs: cuBLAS (sm90_xmma_gemm_*, ampere_*gemm*, nvjet_* on Hopper with CUDA >= 12.6,
    # gemv*, splitKreduce_kernel), CUTLASS (cutlass_*_tensorop_*), Triton templates
    # (triton_tem_fused_*), and cuBLAS dot products.
    ("contraction", re.compile(r"gemm|gemv|nvjet|xmma|cutlass|s16816|s1688|splitkreduce|"
                               r"cublas|triton_tem_|dot_kernel")),
    # Optimizers: fused Adam(W) (FusedAdamMathFunctor), foreach ops (multi_tensor_apply_kernel),
    # which torch uses for optimizer steps and gradient clipping.
    ("optimizer", re.compile(r"adam|multi_tensor_apply|fused_sgd|lamb_|lion")),
    # Normalisations and reductions: ATen's layer norm (vectorized_layer_norm_kernel,
    # RowwiseMoments, GammaBetaBackward), RMS norm, softmax (cunn_SoftMax*, softmax_warp_*),
    # reductions (reduce_kernel), the loss (nll_loss_*, cross_entropy), Triton reductions.
    ("normalisation", re.compile(r"(layer|rms|group|batch|instance)_?norm|softmax|"
                                 r"reduce_kernel|nll_loss|cross_entropy|welford|moments|"
                                 r"gammabeta|triton_(red|per)_|logsumexp")),
    # Element-wise: ATen's elementwise launchers (vectorized_/unrolled_elementwise_kernel),
    # indexing, concatenation, embedding, dropout and random numbers, activations, casts,
    # Triton pointwise kernels.
    ("elementwise", re.compile(r"elementwise|triton_poi_|index|gather|scatter|catarray|"
                               r"copy|fill|embedding|dropout|philox|distribution|gelu|silu|"
                               r"relu|where|masked|arange|transpose|permute|cast|convert")),
)


def kernel_class(name: str) -> str:
    """The class of a kernel by its name (see CLASS_PATTERNS); "other" when none matches."""
    lowered = name.lower()
    for klass, pattern in CLASS_PATTERNS:
        if pattern.search(lowered):
            return klass
    return "other"


# -- grouping --------------------------------------------------------------------------------
# cuBLAS names its GEMM kernels by architecture, data types, tile shape, stages and layout
# (sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_..., ampere_bf16_s16816gemm_
# bf16_128x128_ldg8_f2f_stages_64x3_tn, nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT): the tile
# and the kernel family are its heuristic's choice for a shape and change with the library
# version; the operand layout (which of the forward, input-gradient and weight-gradient GEMMs
# it is) does not. A GEMM's key is its layout.
_GEMM_LAYOUT = re.compile(r"_(tn|nt|nn|tt)(?:_|$)")
_NVJET_LAYOUT = re.compile(r"_([tn]{2})[tn]$")
# ATen's launchers wrap the op in functors: BinaryFunctor<..., MulFunctor<float>>,
# CUDAFunctor_add<float>, sum_functor, MeanOps, direct_copy_kernel_cuda, silu_kernel(...)::
# {lambda}, GeluCUDAKernelImpl. The op is the work; the launcher (vectorized, unrolled, with
# index) depends on the tensors' alignment and contiguity.
_OPS = re.compile(r"CUDAFunctor_(\w+?)\b|(\w+?)Functor\b|(\w+?)_functor\b|(\w+?)Ops\b|"
                  r"(\w+?)CUDAKernelImpl\b|(\w+?)_kernel_cuda\b|"
                  r"(\w+?)_kernel(?:_impl)?(?:<[^<>]*>)?\(")
_GENERIC_OPS = frozenset({"binary", "aunary", "bunary", "unary", "gpu_kernel_impl",
                          "gpu_kernel_impl_nocast", "func_wrapper_t", "launch", "welford"})
_LAUNCHERS: dict[str, str] = {
    "vectorized_elementwise_kernel": "elementwise", "unrolled_elementwise_kernel": "elementwise",
    "elementwise_kernel": "elementwise", "elementwise_kernel_with_index": "elementwise",
    "index_elementwise_kernel": "index", "reduce_kernel": "reduce",
    "multi_tensor_apply_kernel": "multi_tensor_apply",
}
_NCCL_OP = re.compile(r"(allreduce|allgather|reducescatter|broadcast|sendrecv|reduce|send|"
                      r"recv)", re.IGNORECASE)
# Keys stay short enough for a table column.
MAX_KEY_LENGTH = 80
# The key of a kernel table's rest row ("(other 12 kernels)").
UNLISTED_KEY = "(kernels outside the table)"


def kernel_key(name: str) -> str:
    """The group a kernel's time is compared under: the same work under any name its library
    picks (a GEMM by layout, an element-wise kernel by its op, a Triton kernel without its
    index, NCCL by collective)."""
    text = name.strip()
    if text.startswith(OTHER_ROW_PREFIX):
        return UNLISTED_KEY
    lowered = text.lower()
    klass = kernel_class(text)
    if lowered.startswith(("memcpy", "memset")):
        return " ".join(text.split()[:2]) if lowered.startswith("memcpy") else "Memset"
    if klass == "communication":
        op = _NCCL_OP.search(text)
        return f"nccl {op.group(1).lower() if op else 'kernel'}"
    base = _base_name(text)
    if re.match(r"triton_(poi|red|per|tem)_", base):
        return _short(re.sub(r"_\d+$", "", base))
    if klass == "contraction":
        return _contraction_key(lowered, base)
    family = _LAUNCHERS.get(base)
    if family is None:  # a kernel of its own: its name is its work
        return _short(base)
    op_name = _op_name(text.split(base, 1)[-1])
    return _short(f"{family} {op_name}" if op_name else family)


def _contraction_key(lowered: str, base: str) -> str:
    if re.search(r"flash|fmha|sdpa|attention", lowered):
        backward = re.search(r"bwd|backward|bprop|cutlassb|dot_do_o|convert_dq", lowered)
        return "attention backward" if backward else "attention forward"
    if "splitkreduce" in lowered:
        return "gemm split-K reduce"
    if "gemv" in lowered:
        return "gemv"
    if base.startswith("triton_tem_"):
        return _short(re.sub(r"_\d+$", "", base))
    layout = _NVJET_LAYOUT.search(base.lower()) if "nvjet" in lowered else None
    layout = layout or _GEMM_LAYOUT.search(lowered)
    return f"gemm {layout.group(1)}" if layout else "gemm"


def _base_name(text: str) -> str:
    """The kernel's function name: no `void `, no namespace, no template or parameter list."""
    text = re.sub(r"^void\s+", "", text).replace("(anonymous namespace)::", "")
    head = re.split(r"[<(]", text, maxsplit=1)[0].strip()
    return head.rsplit("::", 1)[-1] or head


def _op_name(rest: str) -> str:
    """The op inside a launcher's template arguments, lower-cased; "" when none is named."""
    for match in _OPS.finditer(rest):
        op = next(group for group in match.groups() if group is not None)
        op = op.rsplit("::", 1)[-1].lower()
        if op and op not in _GENERIC_OPS:
            return op
    return ""


def _short(key: str) -> str:
    return key if len(key) <= MAX_KEY_LENGTH else key[:MAX_KEY_LENGTH - 3] + "..."


def class_seconds(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Seconds per class of (kernel name, seconds) pairs, every class present (0 for none)."""
    totals = dict.fromkeys(CLASSES, 0.0)
    for name, seconds in rows:
        totals[kernel_class(name)] += seconds
    return totals


# -- the anatomy of one step ------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Where one step's wall time went, per step: seconds per class of kernel work, the GPU's
    idle time, the overlap of concurrent kernels (counted in two classes, once in the step),
    and seconds per phase (empty when the step named none). Classes + idle - overlap = step."""

    step_seconds: float
    device_seconds: float
    idle_seconds: float
    overlap_seconds: float
    classes: Mapping[str, float]
    phases: Mapping[str, float]
    # Whether the classes come from the listed kernels only (an older profile): the rest of
    # the kernels is then in "other".
    from_table: bool = False

    def share(self, seconds: float) -> float:
        """`seconds` as a share of the step (0 for an empty step)."""
        return seconds / self.step_seconds if self.step_seconds > 0 else 0.0

    @property
    def idle_share(self) -> float:
        return self.share(self.idle_seconds)

    @property
    def contraction_time_share(self) -> float:
        """The contractions' share of the kernel time (not of the step): what the FLOP share
        is compared with."""
        kernel_time = sum(self.classes.values())
        return self.classes.get("contraction", 0.0) / kernel_time if kernel_time > 0 else 0.0

    @property
    def backward_forward_ratio(self) -> float | None:
        """Backward device time over forward device time; None without both phases."""
        forward, backward = self.phases.get("forward", 0.0), self.phases.get("backward", 0.0)
        return backward / forward if forward > 0 and backward > 0 else None


def step_seconds(profile: DeviceProfile) -> float:
    """The step's wall time as the profile implies it: device time / (1 - idle share), the
    timed wall time per step when the idle share was taken against it."""
    busy = 1.0 - profile.idle_fraction
    return profile.device_seconds / busy if busy > 0 else profile.device_seconds


def kernel_bound_scale(profile: DeviceProfile) -> float:
    """What a profile's kernel seconds are multiplied by: 1, or for a kernel-bound call
    (`DeviceProfile.kernel_bound`) its timed wall time over the burst's device time. Back to
    back its GPU never idles, so the wall time is the kernels' time at the clocks it sustains,
    shared as the burst shares it; the burst's own total follows its clocks: a +5% GEMM
    injection ran 11% faster in the burst than the baseline's, and read as idle time, the
    kernel diff blamed the host (H200, 2026-12-02)."""
    if not profile.kernel_bound or profile.device_seconds <= 0:
        return 1.0
    return step_seconds(profile) / profile.device_seconds


def anatomy(profile: DeviceProfile) -> Anatomy:
    """The anatomy of the step a profile measured: from its per-class seconds where it stored
    them, else from its kernel table (older files; the table's rest row is "other"); a
    kernel-bound call's seconds scaled to its wall time (`kernel_bound_scale`), so no idle."""
    from_table = not profile.classes
    scale = kernel_bound_scale(profile)
    classes = {klass: seconds * scale for klass, seconds in (
        profile.classes.items() if profile.classes
        else class_seconds((row.name, row.seconds_per_step) for row in profile.kernels).items())}
    for klass in CLASSES:
        classes.setdefault(klass, 0.0)
    kernel_time = sum(classes.values())
    step = step_seconds(profile)
    device = profile.device_seconds * scale
    return Anatomy(step_seconds=step, device_seconds=device,
                   idle_seconds=max(0.0, step - device),
                   overlap_seconds=max(0.0, kernel_time - device), classes=classes,
                   phases={name: seconds * scale for name, seconds in profile.phases.items()},
                   from_table=from_table)
