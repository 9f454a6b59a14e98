"""GPU specifications (dense peak FLOP/s per dtype, memory, bandwidth) and fingerprints.

MFU is only as honest as its denominator, so an unknown GPU is an error, never a silent fallback
to some other GPU's peak (tools that assume an A100's 312 TFLOP/s report MFU over 100% on newer
parts). Every peak in the table is DENSE: datasheets usually print Tensor Core figures "with
sparsity" (2:4 structured sparsity, twice the dense rate), and those are halved here. "fp32"
means a dense fp32 GEMM without TF32: CUDA cores on NVIDIA, matrix cores on AMD.

Memory sizes are the datasheet capacities read as binary units (HBM and GDDR capacities are
powers of two per stack or chip, so "80 GB" is 80 GiB); the driver reserves some of it (an
H100 80GB reports 79.6 GiB, an L40S with ECC on 44.5 GiB), so read the exact total from
`harness.measure.devices.detect_gpus()`. Bandwidths are the datasheet's decimal TB/s.

Pure Python, no torch or pynvml: finding the GPUs of this machine, and the spec of the local one,
is `harness.measure.devices`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from harness.checks import (
    require_bool,
    require_non_negative_int,
    require_positive,
    require_positive_int,
    require_text,
)
from harness.theory.units import GIB, MIB

DTYPES: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8")

# Names accepted for each dtype key: ours, torch's (`str(torch.bfloat16)` is "torch.bfloat16";
# the "torch." prefix is stripped first) and common spellings.
_DTYPE_ALIASES: dict[str, str] = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "fp8": "fp8", "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
    "float8_e4m3fnuz": "fp8", "float8_e5m2fnuz": "fp8",
}

TB_PER_S = 1e12
GB_PER_S = 1e9

# The slug of a CPU-only run: `fingerprint("cpu", 1)`.
CPU_NAME = "cpu"


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model: capacity, bandwidth, SM (or AMD compute unit) count and dense peaks.

    `peak_tflops` maps dtype keys ("fp32", "tf32", "bf16", "fp16", "fp8") to dense TFLOP/s;
    a dtype the GPU cannot run on its matrix units is absent. `memory_side_cache_bytes` is a
    cache below L2 that an L2 flush must also evict (AMD Infinity Cache), 0 where L2 is last.
    `interconnect_bandwidth_bytes_per_s` is the GPU-to-GPU bandwidth in ONE direction: all of
    the GPU's NVLink (or Infinity Fabric) links together, or its PCIe x16 link for parts without
    them. Datasheets print NVLink bidirectionally ("900 GB/s" on an H100 SXM is 450 GB/s each
    way); a ring collective sends and receives at once, so its bus bandwidth is bounded by the
    one-way figure (`harness.theory.comm`).
    """

    name: str
    vendor: str
    memory_bytes: int
    memory_bandwidth_bytes_per_s: float
    num_sms: int
    peak_tflops: Mapping[str, float]
    l2_cache_bytes: int
    aliases: tuple[str, ...] = ()
    memory_side_cache_bytes: int = 0
    # Bytes/s one GPU can send to its peers at once, per direction (None: not in the table).
    interconnect_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        require_text("GPUSpec.name", self.name)
        require_text("GPUSpec.vendor", self.vendor)
        for attribute in ("memory_bytes", "num_sms", "l2_cache_bytes"):
            require_positive_int(f"GPUSpec.{attribute}", getattr(self, attribute))
        require_non_negative_int("GPUSpec.memory_side_cache_bytes", self.memory_side_cache_bytes)
        if self.interconnect_bandwidth_bytes_per_s is not None:  # None: not in the table
            require_positive("GPUSpec.interconnect_bandwidth_bytes_per_s",
                             self.interconnect_bandwidth_bytes_per_s)
        require_positive("GPUSpec.memory_bandwidth_bytes_per_s", self.memory_bandwidth_bytes_per_s)
        if not isinstance(self.peak_tflops, Mapping) or not self.peak_tflops:
            raise ValueError(f"GPUSpec.peak_tflops must map some of {', '.join(DTYPES)} to "
                             f"dense TFLOP/s, got {self.peak_tflops!r}")
        for dtype, tflops in self.peak_tflops.items():
            if dtype not in DTYPES:
                raise ValueError(f"GPUSpec.peak_tflops has unknown dtype {dtype!r}; use "
                                 f"{', '.join(DTYPES)}")
            require_positive(f"GPUSpec.peak_tflops[{dtype!r}]", tflops)
        if isinstance(self.aliases, str):
            raise ValueError(f"GPUSpec.aliases must be a tuple of names, got {self.aliases!r}")
        for alias in self.aliases:
            require_text("each of GPUSpec.aliases", alias)
        object.__setattr__(self, "peak_tflops", MappingProxyType(dict(self.peak_tflops)))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The dtype keys this GPU has a peak for, in DTYPES order."""
        return tuple(d for d in DTYPES if d in self.peak_tflops)

    def peak_flops(self, dtype: object) -> float:
        """Dense peak in FLOP/s for a dtype: "bf16", "bfloat16", "torch.bfloat16" or the torch
        dtype itself (read by its name, so this module needs no torch); a ValueError lists the
        dtypes this GPU has."""
        text = str(dtype).strip().lower()
        text = text[len("torch."):] if text.startswith("torch.") else text
        key = _DTYPE_ALIASES.get(text)
        if key is None:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)} (or a torch "
                             f"name for them such as 'bfloat16', 'float16', 'float32')")
        if key not in self.peak_tflops:
            raise ValueError(f"{self.name} has no {key} peak (dtype {dtype!r}); it has "
                             f"{', '.join(self.dtypes)}")
        return self.peak_tflops[key] * 1e12


def _nvidia(name: str, memory_gib: float, bandwidth_tb_s: float, num_sms: int, l2_mib: float,
            aliases: tuple[str, ...], *, link_gb_s: float, **peaks: float) -> GPUSpec:
    return GPUSpec(name=name, vendor="NVIDIA", memory_bytes=int(memory_gib * GIB),
                   memory_bandwidth_bytes_per_s=bandwidth_tb_s * TB_PER_S, num_sms=num_sms,
                   peak_tflops=peaks, l2_cache_bytes=int(l2_mib * MIB), aliases=aliases,
                   interconnect_bandwidth_bytes_per_s=link_gb_s * GB_PER_S)


# Dense peaks in TFLOP/s. Sources: NVIDIA datasheets and architecture whitepapers, AMD Instinct
# datasheets and the ROCm "GPU hardware specifications" table (CU counts, caches).
#
# link_gb_s: GPU-to-GPU bandwidth per direction, GB/s, half the datasheets' bidirectional
# figure. NVLink per GPU (datasheets): V100 SXM2 300 (NVLink 2), A100 SXM4 600 (NVLink 3),
# A800 and H800 400 (the export parts' reduced NVLink), H100/H200 SXM and H20 900 (NVLink 4),
# B200/GB200 1,800 (NVLink 5); H100 NVL 600 over the bridge of its pair. PCIe x16 per
# direction: Gen4 32, Gen5 64 (datasheets: "64 GB/s" and "128 GB/s" bidirectional) for the
# PCIe cards, whose optional NVLink bridges join two cards only.
_BUILTIN_SPECS: tuple[GPUSpec, ...] = (
    # A100 datasheet: FP32 19.5, TF32 156 (312 sparse), BF16/FP16 312 (624 sparse); the PCIe
    # cards list the same peaks. 108 SMs, 40 MB L2 (Ampere whitepaper). No FP8.
    _nvidia("A100 SXM4 80GB", 80, 2.039, 108, 40,
            ("NVIDIA A100-SXM4-80GB", "A100", "A100 80GB", "A100 SXM", "A100 SXM4"),
            link_gb_s=300, fp32=19.5, tf32=156, bf16=312, fp16=312),
    _nvidia("A100 SXM4 40GB", 40, 1.555, 108, 40,
            ("NVIDIA A100-SXM4-40GB", "A100 40GB", "A100 SXM4 40GB"),
            link_gb_s=300, fp32=19.5, tf32=156, bf16=312, fp16=312),
    _nvidia("A100 PCIe 80GB", 80, 1.935, 108, 40,
            ("NVIDIA A100 80GB PCIe", "A100 PCIe", "A100 PCIe 80GB"),
            link_gb_s=32, fp32=19.5, tf32=156, bf16=312, fp16=312),
    _nvidia("A100 PCIe 40GB", 40, 1.555, 108, 40,
            ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
            link_gb_s=32, fp32=19.5, tf32=156, bf16=312, fp16=312),
    # A800: the A100 for the Chinese market, NVLink cut to 400 GB/s; compute and memory as A100.
    _nvidia("A800 SXM4 80GB", 80, 2.039, 108, 40,
            ("NVIDIA A800-SXM4-80GB", "A800", "A800 SXM", "A800 SXM4"),
            link_gb_s=200, fp32=19.5, tf32=156, bf16=312, fp16=312),
    _nvidia("A800 PCIe 80GB", 80, 1.935, 108, 40,
            ("NVIDIA A800 80GB PCIe", "A800 PCIe"),
            link_gb_s=32, fp32=19.5, tf32=156, bf16=312, fp16=312),
    # H100 SXM5, Hopper whitepaper (dense/sparse): FP32 66.9, TF32 494.7/989.4,
    # BF16/FP16 989.4/1978.9, FP8 1978.9/3957.8; 132 SMs, 50 MB L2; 80 GB HBM3 at 3.35 TB/s.
    # "H100" alone means this SXM part, the one in HGX/DGX training nodes.
    _nvidia("H100 SXM", 80, 3.35, 132, 50,
            ("NVIDIA H100 80GB HBM3", "H100", "H100 SXM5", "H100 80GB HBM3"),
            link_gb_s=450, fp32=66.9, tf32=494.7, bf16=989.4, fp16=989.4, fp8=1978.9),
    # H100 PCIe, Hopper whitepaper: 114 SMs, FP32 51.2, TF32 378.2, BF16/FP16 756.4, FP8 1512.8
    # (dense; datasheet 756/1,513/3,026 with sparsity); 80 GB HBM2e at 2.0 TB/s.
    _nvidia("H100 PCIe", 80, 2.0, 114, 50,
            ("NVIDIA H100 PCIe",),
            link_gb_s=64, fp32=51.2, tf32=378.2, bf16=756.4, fp16=756.4, fp8=1512.8),
    # H100 NVL datasheet (per GPU): FP32 60, TF32 835, BF16/FP16 1,671, FP8 3,341 with sparsity
    # -> halved; 94 GB HBM3 at 3.9 TB/s; full 132-SM GH100 configuration.
    _nvidia("H100 NVL", 94, 3.9, 132, 50,
            ("NVIDIA H100 NVL",),
            link_gb_s=300, fp32=60, tf32=417.5, bf16=835.5, fp16=835.5, fp8=1670.5),
    # H800: the H100 for the Chinese market (NVLink 400 GB/s, FP64 cut); Tensor Core peaks,
    # memory and SM counts as the H100 SXM / PCIe.
    _nvidia("H800 SXM", 80, 3.35, 132, 50,
            ("NVIDIA H800", "H800", "H800 SXM5", "NVIDIA H800 80GB HBM3"),
            link_gb_s=200, fp32=66.9, tf32=494.7, bf16=989.4, fp16=989.4, fp8=1978.9),
    _nvidia("H800 PCIe", 80, 2.0, 114, 50,
            ("NVIDIA H800 PCIe",),
            link_gb_s=64, fp32=51.2, tf32=378.2, bf16=756.4, fp16=756.4, fp8=1512.8),
    # H200 datasheet: the H100 SXM's GH100 compute (TF32 989, BF16 1,979, FP8 3,958 sparse, the
    # whitepaper's dense figures used here) with 141 GB HBM3e at 4.8 TB/s. CUDA reports 132 SMs
    # and a 60 MiB L2 on an H200 (measured), 10 MiB more than the H100's.
    _nvidia("H200 SXM", 141, 4.8, 132, 60,
            ("NVIDIA H200", "H200", "H200 SXM", "H200 141GB"),
            link_gb_s=450, fp32=66.9, tf32=494.7, bf16=989.4, fp16=989.4, fp8=1978.9),
    # H20 (HGX H20 specification, figures without sparsity): FP32 44, TF32 74, BF16/FP16 148,
    # FP8 296; 96 GB HBM3 at 4.0 TB/s, 60 MB L2; 78 SMs enabled.
    _nvidia("H20", 96, 4.0, 78, 60,
            ("NVIDIA H20",),
            link_gb_s=450, fp32=44, tf32=74, bf16=148, fp16=148, fp8=296),
    # L40S datasheet (dense | sparse): FP32 91.6, TF32 183 | 366, BF16/FP16 362.05 | 733,
    # FP8 733 | 1,466; 48 GB GDDR6 at 864 GB/s; 142 SMs; 96 MiB L2 as CUDA reports it.
    _nvidia("L40S", 48, 0.864, 142, 96,
            ("NVIDIA L40S",),
            link_gb_s=32, fp32=91.6, tf32=183, bf16=362.05, fp16=362.05, fp8=733),
    # L4 datasheet: FP32 30.3; TF32 120, BF16/FP16 242, FP8 485 with sparsity -> halved;
    # 24 GB GDDR6 at 300 GB/s; 58 SMs, 48 MB L2.
    _nvidia("L4", 24, 0.3, 58, 48,
            ("NVIDIA L4",),
            link_gb_s=32, fp32=30.3, tf32=60, bf16=121, fp16=121, fp8=242.5),
    # A10 datasheet (dense | sparse): FP32 31.2, TF32 62.5 | 125, BF16/FP16 125 | 250;
    # 24 GB GDDR6 at 600 GB/s; 72 SMs, 6 MB L2.
    _nvidia("A10", 24, 0.6, 72, 6,
            ("NVIDIA A10",),
            link_gb_s=32, fp32=31.2, tf32=62.5, bf16=125, fp16=125),
    # V100 SXM2 32GB datasheet: FP32 15.7, Tensor (FP16) 125; no BF16, TF32 or FP8.
    # 900 GB/s HBM2, 80 SMs, 6 MB L2.
    _nvidia("V100 SXM2 32GB", 32, 0.9, 80, 6,
            ("Tesla V100-SXM2-32GB", "V100", "V100 SXM2", "V100 32GB"),
            link_gb_s=150, fp32=15.7, fp16=125),
    # HGX B200 datasheet, per GPU: FP32 75; TF32 2.2, BF16/FP16 4.5, FP8 9 PFLOPS with sparsity
    # -> halved; 180 GB HBM3e at 7.7 TB/s. 148 SMs and a 126.5 MiB L2 as CUDA reports them.
    _nvidia("B200", 180, 7.7, 148, 126.5,
            ("NVIDIA B200",),
            link_gb_s=900, fp32=75, tf32=1100, bf16=2250, fp16=2250, fp8=4500),
    # GB200 NVL72 datasheet, per GPU (rack figures / 72): FP32 80; TF32 2.5, BF16/FP16 5,
    # FP8 10 PFLOPS with sparsity -> halved; 186 GB HBM3e at 8 TB/s. The datasheet gives no SM
    # count; 152 is what CUDA reports on GB200 systems (local_spec checks it against the
    # device). L2 taken as the B200's, the same Blackwell die.
    _nvidia("GB200", 186, 8.0, 152, 126.5,
            ("NVIDIA GB200",),
            link_gb_s=900, fp32=80, tf32=1250, bf16=2500, fp16=2500, fp8=5000),
    # MI300X datasheet: FP32 163.4 (vector and matrix), TF32 653.7, BF16/FP16 1307.4, FP8 2614.9
    # (dense; twice that with sparsity); 192 GB HBM3 at 5.3 TB/s. ROCm spec table: 304 CUs,
    # 32 MiB L2 (4 per XCD), 256 MiB Infinity Cache behind it.
    GPUSpec(name="MI300X", vendor="AMD", memory_bytes=192 * GIB,
            memory_bandwidth_bytes_per_s=5.3 * TB_PER_S, num_sms=304,
            peak_tflops={"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp16": 1307.4,
                         "fp8": 2614.9},
            l2_cache_bytes=32 * MIB, memory_side_cache_bytes=256 * MIB,
            aliases=("AMD Instinct MI300X",),
            # MI300X datasheet: 7 Infinity Fabric links of 128 GB/s bidirectional to the other
            # GPUs of the platform, 896 GB/s in all: 448 GB/s each way.
            interconnect_bandwidth_bytes_per_s=448 * GB_PER_S),
    # MI250X, one GCD: the OAM module carries two graphics compute dies that software sees as
    # two devices (ROCm names each "AMD Instinct MI250X/MI250"), so this is half the datasheet's
    # module figures: FP32 matrix 95.7 -> 47.85, BF16/FP16 383 -> 191.5, 128 GB HBM2e at
    # 3.2768 TB/s -> 64 GiB at 1.6384 TB/s; ROCm table: 110 CUs and 8 MiB L2 per GCD. No TF32 or
    # FP8. An MI250 GCD (104 CUs) reports the same name; local_spec tells them apart by CU count.
    # No interconnect figure: a GCD reaches its sibling die and the other GCDs of the node over
    # different numbers of Infinity Fabric links, so no single per-GPU bandwidth holds.
    GPUSpec(name="MI250X GCD", vendor="AMD", memory_bytes=64 * GIB,
            memory_bandwidth_bytes_per_s=1.6384 * TB_PER_S, num_sms=110,
            peak_tflops={"fp32": 47.85, "bf16": 191.5, "fp16": 191.5},
            l2_cache_bytes=8 * MIB,
            aliases=("AMD Instinct MI250X/MI250", "AMD Instinct MI250X", "MI250X")),
)


def normalize_gpu_name(name: str) -> str:
    """The key names are matched by: lower case, "-" and "_" as spaces, runs of spaces
    collapsed, and a leading vendor word ("nvidia", "tesla", "amd", "amd instinct") dropped.
    "NVIDIA A100-SXM4-80GB" -> "a100 sxm4 80gb"; "AMD Instinct MI300X" -> "mi300x"."""
    if not isinstance(name, str) or not name.strip():  # any spacing is normalised below
        raise ValueError(f"a GPU name must be a non-empty string, got {name!r}")
    text = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    for prefix in ("amd instinct ", "nvidia ", "tesla ", "amd "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return text.strip() or name.strip().lower()


def _build_registry(specs: tuple[GPUSpec, ...]) -> dict[str, GPUSpec]:
    registry: dict[str, GPUSpec] = {}
    for spec in specs:
        for key in {normalize_gpu_name(n) for n in (spec.name, *spec.aliases)}:
            if key in registry:
                raise ValueError(f"GPU name {key!r} is claimed by both {registry[key].name} and "
                                 f"{spec.name}")
            registry[key] = spec
    return registry


_REGISTRY: dict[str, GPUSpec] = _build_registry(_BUILTIN_SPECS)


def known_gpus() -> list[str]:
    """Names of the GPUs in the table (built in and registered), one per spec."""
    seen: dict[str, None] = {}
    for spec in _REGISTRY.values():
        seen.setdefault(spec.name, None)
    return list(seen)


def gpu_spec(name: str) -> GPUSpec:
    """The spec of a GPU by NVML/torch name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
    "Tesla V100-SXM2-32GB", "AMD Instinct MI300X") or short name ("H100", "a800", "h200").

    Matching: both sides go through `normalize_gpu_name`, then must be equal - no substring or
    fuzzy matching, so "H100" cannot silently become an H100 PCIe. Short names of a family mean
    its training part: "H100" and "H800" the SXM GPU, "A100" and "A800" the SXM4 80GB.
    Unknown names raise a ValueError listing the known GPUs; add yours with `register_gpu`.
    """
    key = normalize_gpu_name(name)
    spec = _REGISTRY.get(key)
    if spec is None:
        raise ValueError(
            f"unknown GPU {name!r}: its peak FLOP/s are not in the table, and guessing would "
            f"make MFU meaningless. Known GPUs: {', '.join(known_gpus())}. Register it with "
            f"harness.register_gpu(GPUSpec(name=..., vendor=..., memory_bytes=..., "
            f"memory_bandwidth_bytes_per_s=..., num_sms=..., peak_tflops={{'bf16': ...}}, "
            f"l2_cache_bytes=..., aliases=({name!r},)))")
    return spec


def register_gpu(spec: GPUSpec, *, replace: bool = False) -> None:
    """Add a GPU to the table under its name and aliases. A name that already means another
    GPU is a ValueError unless replace=True, which points those names at `spec`."""
    if not isinstance(spec, GPUSpec):
        raise ValueError(f"spec must be a GPUSpec, got {type(spec).__name__}")
    require_bool("replace", replace)
    keys = {normalize_gpu_name(n) for n in (spec.name, *spec.aliases)}
    taken = sorted(k for k in keys if k in _REGISTRY and _REGISTRY[k] != spec)
    if taken and not replace:
        owners = ", ".join(f"{k!r} ({_REGISTRY[k].name})" for k in taken)
        raise ValueError(f"cannot register {spec.name}: {owners} already known; pass "
                         f"replace=True to point these names at the new spec")
    for key in keys:
        _REGISTRY[key] = spec


def fingerprint(gpu_name: str, count: int) -> str:
    """The hardware key baselines are stored under: a slug of the GPU name, plus "-x<count>"
    for more than one GPU. ("NVIDIA H200", 1) -> "nvidia-h200"; ("NVIDIA H200", 2) ->
    "nvidia-h200-x2". CPU runs use gpu_name "cpu": ("cpu", 1) -> "cpu"."""
    if not isinstance(gpu_name, str):
        raise ValueError(f"gpu_name must be a string such as 'NVIDIA H100 80GB HBM3' or 'cpu', "
                         f"got {gpu_name!r}")
    require_positive_int("count", count)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"gpu_name {gpu_name!r} has no letters or digits to build a "
                         f"fingerprint from")
    return slug if count == 1 else f"{slug}-x{count}"
