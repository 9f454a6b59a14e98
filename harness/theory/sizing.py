"""Shape advice for fast GEMMs: source 001's sizing rules as findings, and tile/wave quantization.

The rules are those source 001 ends its sizing section with (after Anthony et al. 2024, "The
Case for Co-Designing Model Architectures with Hardware"): vocabulary divisible by 64; b*s, h/a
and h/t divisible by a high power of two; (b*a)/t an integer; t small; for SwiGLU, a d_ff near
8h/3 that keeps the matrices aligned. The quantization model is that of NVIDIA's "Matrix
Multiplication Background User's Guide" (docs.nvidia.com/deeplearning/performance/
dl-performance-matrix-multiplication): the output is cut into tiles, one thread block per tile,
and the blocks run in waves of one per SM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.checks import require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.units import ceil_div

# Source 001: Tensor Cores are fully used when GEMM dimensions are multiples of 16 bytes on V100
# and 128 bytes on A100 and later, i.e. 8 and 64 two-byte elements; "on A100 it is 64".
TENSOR_CORE_ALIGNMENT = 64
# Source 001, rule 1: "vocabulary size divisible by 64".
VOCAB_MULTIPLE = 64
# Source 001, rule 5: t as small as possible. Eight GPUs share NVLink/NVSwitch in an HGX/DGX node;
# a larger tensor-parallel group crosses the much slower inter-node network on every layer.
GPUS_PER_NODE = 8
# Multiples tried for a gated MLP's d_ff: 64 (alignment above), 128, and 256 (LLaMA's
# `multiple_of`; Llama-2-7B's 11008 = 43 * 256).
FFN_CANDIDATE_MULTIPLES: tuple[int, ...] = (64, 128, 256)
# Default output tile of a Tensor Core GEMM kernel, 128 x 128 (one of the tile sizes the NVIDIA
# guide lists; cuBLAS picks among several, so pass the one your kernel uses).
DEFAULT_TILE: tuple[int, int] = (128, 128)


@dataclass(frozen=True)
class Finding:
    """One sizing rule applied to a configuration: whether it holds, why, and what to change."""

    rule: str
    ok: bool
    detail: str
    suggestion: str | None = None


def largest_power_of_two_dividing(n: int) -> int:
    """The largest power of two that divides n (1 for odd n)."""
    require_positive_int("n", n)
    return n & -n


def _aligned_neighbours(value: float, multiples: tuple[int, ...]) -> list[int]:
    """The multiples of each of `multiples` just below and just above `value`, sorted."""
    candidates = set()
    for multiple in multiples:
        below = math.floor(value / multiple) * multiple
        if below > 0:
            candidates.add(below)
        candidates.add(math.ceil(value / multiple) * multiple)
    return sorted(candidates)


def swiglu_ffn_candidates(hidden_size: int,
                          multiples: tuple[int, ...] = FFN_CANDIDATE_MULTIPLES) -> list[int]:
    """Aligned d_ff values around 8h/3, the width that keeps a SwiGLU MLP's parameter count
    equal to a 4h GELU MLP's; benchmark these on the target GPU and keep the fastest.
    E.g. h=4096: 8h/3 rounds to 10922, which source 001 measured 46% slower on an H100 than
    10944; the candidates are [10752, 10880, 10944, 11008]."""
    require_positive_int("hidden_size", hidden_size)
    if not multiples:
        raise ValueError(f"multiples must be a non-empty tuple of positive integers, got "
                         f"{multiples!r}")
    for multiple in multiples:
        require_positive_int("each of multiples", multiple)
    return _aligned_neighbours(8 * hidden_size / 3, tuple(multiples))


def _power_of_two_finding(rule: str, what: str, value: int) -> Finding:
    power = largest_power_of_two_dividing(value)
    ok = power >= TENSOR_CORE_ALIGNMENT
    detail = (f"{what} = {value} is divisible by {power}"
              + ("" if ok else f", less than the {TENSOR_CORE_ALIGNMENT} that keeps Tensor Core "
                               f"tiles full (128 bytes of 16-bit elements)"))
    suggestion = None if ok else (
        f"make {what} a multiple of {TENSOR_CORE_ALIGNMENT}, e.g. "
        f"{ceil_div(value, TENSOR_CORE_ALIGNMENT) * TENSOR_CORE_ALIGNMENT}")
    return Finding(rule=rule, ok=ok, detail=detail, suggestion=suggestion)


def sizing_findings(cfg: TransformerConfig, batch_size: int, seq_len: int,
                    tp: int = 1) -> list[Finding]:
    """Source 001's sizing rules applied to a model, micro-batch, sequence length and tp.

    The head rule judges the head width the model has (head_dim, or MLA's qk head width), the
    d_ff rule the dense MLP when a layer has one, and expert models get the same rule for their
    routed (and, when different, shared) expert widths."""
    cfg = require_config(cfg)
    require_positive_int("batch_size", batch_size)
    require_positive_int("seq_len", seq_len)
    require_positive_int("tp", tp)
    h, a, v, f = cfg.hidden_size, cfg.num_heads, cfg.vocab_size, cfg.ffn_size
    findings = []

    vocab_ok = v % VOCAB_MULTIPLE == 0
    findings.append(Finding(
        rule="vocab_multiple_of_64", ok=vocab_ok,
        detail=f"vocab_size = {v}" + ("" if vocab_ok else f", not a multiple of {VOCAB_MULTIPLE}"),
        suggestion=None if vocab_ok else
        f"pad the vocabulary to {ceil_div(v, VOCAB_MULTIPLE) * VOCAB_MULTIPLE}"))

    # The head width the model has: h/a unless head_dim is set apart from it; MLA scores over
    # qk_nope_head_dim + qk_rope_head_dim channels per head.
    if cfg.mla is not None:
        head_label = "qk_head_dim"
    elif cfg.head_dim * a == h:
        head_label = "h/a"
    else:
        head_label = "head_dim"
    findings.append(_power_of_two_finding("head_dim_power_of_two", head_label, cfg.qk_head_dim))

    if h % tp:
        findings.append(Finding(rule="hidden_per_tp_power_of_two", ok=False,
                                detail=f"h/t = {h}/{tp} is not an integer",
                                suggestion=f"choose a tp that divides hidden_size={h}"))
    else:
        findings.append(_power_of_two_finding("hidden_per_tp_power_of_two", "h/t", h // tp))

    findings.append(_power_of_two_finding("tokens_power_of_two", "b*s", batch_size * seq_len))

    heads_ok = (batch_size * a) % tp == 0
    findings.append(Finding(
        rule="batch_heads_divisible_by_tp", ok=heads_ok,
        detail=f"(b*a)/t = ({batch_size}*{a})/{tp}"
               + (f" = {batch_size * a // tp}" if heads_ok else " is not an integer"),
        suggestion=None if heads_ok else "choose tp dividing batch_size * num_heads"))

    tp_ok = tp <= GPUS_PER_NODE
    findings.append(Finding(
        rule="tp_within_node", ok=tp_ok,
        detail=f"t = {tp}" + ("" if tp_ok else f", more than the {GPUS_PER_NODE} GPUs of a node"),
        suggestion=None if tp_ok else
        f"keep tp <= {GPUS_PER_NODE} and scale with pipeline or data parallelism instead"))

    if cfg.num_dense_layers:
        findings.append(_ffn_finding("ffn_alignment", "d_ff", f, h, tp, cfg.gated_mlp))
    if cfg.moe is not None:
        moe = cfg.moe
        findings.append(_ffn_finding("expert_ffn_alignment", "expert d_ff",
                                     moe.expert_ffn_hidden_size, h, tp, cfg.gated_mlp))
        if moe.num_shared_experts and moe.shared_width != moe.expert_ffn_hidden_size:
            findings.append(_ffn_finding("shared_expert_ffn_alignment", "shared expert d_ff",
                                         moe.shared_width, h, tp, cfg.gated_mlp))
    return findings


def _ffn_finding(rule: str, what: str, f: int, h: int, tp: int, gated: bool) -> Finding:
    """Whether a feed-forward width f splits over tp ranks into multiples of the Tensor Core
    alignment, and aligned widths to benchmark when it does not."""
    ffn_ok = f % tp == 0 and (f // tp) % TENSOR_CORE_ALIGNMENT == 0
    detail = f"{what} = {f}" if tp == 1 else f"{what}/t = {f}/{tp}"
    if tp > 1 and f % tp == 0:
        detail += f" = {f // tp}"
    if gated and what == "d_ff":
        detail += f" ({f / h:.4f}h; 8h/3 = {8 * h / 3:.1f})"
    if f % tp:
        detail += ", not an integer"
    elif not ffn_ok:
        detail += f", not a multiple of {TENSOR_CORE_ALIGNMENT}"
    suggestion = None
    if not ffn_ok:
        per_rank_multiples = tuple(multiple * tp for multiple in FFN_CANDIDATE_MULTIPLES)
        candidates = _aligned_neighbours(f, per_rank_multiples)
        suggestion = f"benchmark {what} in {', '.join(map(str, candidates))}"
        around_8h_3 = swiglu_ffn_candidates(h, per_rank_multiples)
        if gated and what == "d_ff" and around_8h_3 != candidates:
            suggestion += f"; aligned widths around 8h/3: {', '.join(map(str, around_8h_3))}"
    return Finding(rule=rule, ok=ffn_ok, detail=detail, suggestion=suggestion)


@dataclass(frozen=True)
class GemmQuantization:
    """How an (m x k) @ (k x n) GEMM maps onto output tiles and waves of thread blocks."""

    m: int
    n: int
    k: int
    tile_m: int
    tile_n: int
    num_sms: int
    tiles: int
    waves: int
    last_wave_tiles: int

    @property
    def efficiency(self) -> float:
        """Wave efficiency: tiles / (waves * num_sms), the busy fraction of SM slots."""
        return self.tiles / (self.waves * self.num_sms)

    @property
    def last_wave_wasted_fraction(self) -> float:
        """Fraction of SMs idle during the last wave."""
        return 1 - self.last_wave_tiles / self.num_sms

    @property
    def tile_efficiency(self) -> float:
        """Useful fraction of the computed output: m*n / (tiles * tile_m * tile_n)."""
        return (self.m * self.n) / (self.tiles * self.tile_m * self.tile_n)

    @property
    def useful_fraction(self) -> float:
        """Both quantizations together: useful output per SM slot paid for."""
        return self.efficiency * self.tile_efficiency

    @property
    def flops(self) -> int:
        """FLOPs of the GEMM, a multiply-add counted as 2: 2*m*n*k."""
        return 2 * self.m * self.n * self.k


def gemm_quantization(m: int, n: int, k: int, num_sms: int,
                      tile: tuple[int, int] = DEFAULT_TILE) -> GemmQuantization:
    """Tile and wave quantization of an m x n output on a GPU with `num_sms` SMs.

    tiles = ceil(m/tile_m) * ceil(n/tile_n), waves = ceil(tiles/num_sms). E.g. on an H100 SXM
    (132 SMs) 133 tiles take 2 waves at efficiency 133/264 = 0.504.
    """
    for name, value in (("m", m), ("n", n), ("k", k), ("num_sms", num_sms)):
        require_positive_int(name, value)
    try:
        if not isinstance(tile, tuple) or len(tile) != 2:
            raise ValueError("not a pair")
        tile_m, tile_n = (require_positive_int("tile", size) for size in tile)
    except ValueError:
        raise ValueError(f"tile must be a pair of positive integers (tile_m, tile_n), "
                         f"got {tile!r}") from None
    tiles = ceil_div(m, tile_m) * ceil_div(n, tile_n)
    waves = ceil_div(tiles, num_sms)
    last_wave_tiles = tiles - (waves - 1) * num_sms
    return GemmQuantization(m=m, n=n, k=k, tile_m=tile_m, tile_n=tile_n, num_sms=num_sms,
                            tiles=tiles, waves=waves, last_wave_tiles=last_wave_tiles)
