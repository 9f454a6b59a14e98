"""FLOPs of one step counted by `FlopCounterMode`, for the models people train.

torch's counter lacks or refuses formulas for ops most models run today: grouped-query attention
(fewer key/value heads than query heads, SDPA's `enable_gqa`) fails its shape check up to torch
2.11 and crashes the step; SDPA's CPU flash kernel has no formula and counts 0; the grouped GEMMs
of mixture-of-experts layers have none. `count_flops` adds those formulas, with torch's
conventions: a multiply-add is 2 FLOPs, causal masking is ignored, and a fused attention
backward recomputes QK^T (5 matmuls against the forward's 2: 2.5x the forward core, as
`harness.theory.flops.flop_counter_flops` predicts).

An op that still cannot be counted (a formula that refuses its shapes, a matmul-like or
attention-like op without a formula, such as a custom kernel) never crashes the step: it is
named in `FlopCount.uncounted`, and the caller falls back to the analytic count.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


class UncountedFlopsWarning(UserWarning):
    """FlopCounterMode could not count an op of the step: its FLOPs are missing from the count."""


def _shape(tensor: object, what: str, dims: int) -> tuple[int, ...]:
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) != dims:
        raise ValueError(f"{what} must be a {dims}-d tensor, got "
                         f"{tuple(shape) if shape is not None else type(tensor).__name__}")
    return tuple(int(n) for n in shape)


def _attention_sizes(q: Sequence[int], k: Sequence[int], v: Sequence[int]
                     ) -> tuple[int, int, int, int, int, int]:
    """(batch, query heads, query length, key length, query/key dim, value dim) of an
    attention whose q, k, v are (batch, heads, length, dim); key/value heads must divide the
    query heads (grouped-query attention shares each key/value head among a group)."""
    b, hq, sq, d = q
    bk, hk, sk, dk = k
    bv, hv, sv, dv = v
    if not (b == bk == bv and hk == hv and sk == sv and d == dk):
        raise ValueError(f"attention shapes do not fit together: q={tuple(q)}, k={tuple(k)}, "
                         f"v={tuple(v)}")
    if hk == 0 or hq % hk:
        raise ValueError(f"key/value heads ({hk}) must divide the query heads ({hq})")
    return b, hq, sq, sk, d, dv


def attention_flops(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """Forward FLOPs of attention over (batch, heads, length, dim) q, k, v: QK^T and P.V for
    every query head, whatever the number of key/value heads; causal masking ignored."""
    b, hq, sq, sk, d, dv = _attention_sizes(q, k, v)
    return 2 * b * hq * sq * sk * (d + dv)


def attention_backward_flops(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    """Backward FLOPs of a fused attention kernel: QK^T recomputed, then dP = dO.V^T,
    dV = P^T.dO, dQ = dS.K and dK = dS^T.Q (torch's convention for its fused kernels)."""
    b, hq, sq, sk, d, dv = _attention_sizes(q, k, v)
    return 2 * b * hq * sq * sk * (3 * d + 2 * dv)


def _bhsd(tensor: object, what: str) -> tuple[int, ...]:
    return _shape(tensor, f"{what} (batch, heads, length, dim)", 4)


def _sdpa_forward(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """SDPA's fused forward ops: their first three arguments are q, k, v."""
    return attention_flops(_bhsd(query, "query"), _bhsd(key, "key"), _bhsd(value, "value"))


def _sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any,
                   **kwargs: Any) -> int:
    """SDPA's fused backward ops: the output's gradient, then q, k, v."""
    return attention_backward_flops(_bhsd(query, "query"), _bhsd(key, "key"),
                                    _bhsd(value, "value"))


def _lengths(offsets: Any, longest: Any) -> list[int]:
    """Sequence lengths of a packed (variable-length) batch from its cumulative offsets; the
    longest length for each sequence where the offsets cannot be read (fake or meta tensors)."""
    try:
        return [int(n) for n in offsets.diff().tolist()]
    except (RuntimeError, NotImplementedError):
        return [int(longest)] * (int(offsets.shape[0]) - 1)


def _bshd_flops(query: Any, key: Any, value: Any, cum_q: Any, cum_k: Any, max_q: Any,
                max_k: Any, backward: bool) -> int:
    """The low-level flash and memory-efficient ops take (batch, length, heads, dim), or packed
    sequences with cumulative offsets; summed over the sequences."""
    formula = attention_backward_flops if backward else attention_flops
    q, k, v = (tuple(int(n) for n in t.shape) for t in (query, key, value))
    if cum_q is None:
        if len(q) != 4 or len(k) != 4 or len(v) != 4:
            raise ValueError(f"expected (batch, length, heads, dim) q, k, v, got {q}, {k}, {v}")
        return formula((q[0], q[2], q[1], q[3]), (k[0], k[2], k[1], k[3]),
                       (v[0], v[2], v[1], v[3]))
    heads_q, dim_q = q[-2:]
    heads_k, dim_k = k[-2:]
    dim_v = v[-1]
    return sum(formula((1, heads_q, sq, dim_q), (1, heads_k, sk, dim_k), (1, heads_k, sk, dim_v))
               for sq, sk in zip(_lengths(cum_q, max_q), _lengths(cum_k, max_k), strict=True))


def _flash_forward(query: Any, key: Any, value: Any, cum_q: Any, cum_k: Any, max_q: Any,
                   max_k: Any, *args: Any, **kwargs: Any) -> int:
    return _bshd_flops(query, key, value, cum_q, cum_k, max_q, max_k, backward=False)


def _flash_backward(grad_out: Any, query: Any, key: Any, value: Any, out: Any, lse: Any,
                    cum_q: Any, cum_k: Any, max_q: Any, max_k: Any, *args: Any,
                    **kwargs: Any) -> int:
    return _bshd_flops(query, key, value, cum_q, cum_k, max_q, max_k, backward=True)


def _efficient_forward(query: Any, key: Any, value: Any, bias: Any, cum_q: Any, cum_k: Any,
                       max_q: Any, max_k: Any, *args: Any, **kwargs: Any) -> int:
    return _bshd_flops(query, key, value, cum_q, cum_k, max_q, max_k, backward=False)


def _efficient_backward(grad_out: Any, query: Any, key: Any, value: Any, bias: Any, out: Any,
                        cum_q: Any, cum_k: Any, max_q: Any, max_k: Any, *args: Any,
                        **kwargs: Any) -> int:
    return _bshd_flops(query, key, value, cum_q, cum_k, max_q, max_k, backward=True)


def grouped_mm_flops(a: Sequence[int], b: Sequence[int]) -> int:
    """FLOPs of a grouped GEMM (`torch._grouped_mm`, the experts of a mixture-of-experts layer)
    by operand shapes: 2d x 3d routes rows of a to groups (M tokens, G x K x N experts), 3d x 3d
    is batched, 3d x 2d splits the columns of b, 2d x 2d splits K. Rows past the last offset
    (tokens routed nowhere) are counted as computed: an upper bound, exact without them."""
    if len(a) == 2 and len(b) == 3:
        return 2 * a[0] * a[1] * b[2]
    if len(a) == 3 and len(b) == 3:
        return 2 * a[0] * a[1] * a[2] * b[2]
    if len(a) == 3 and len(b) == 2:
        return 2 * a[1] * a[2] * b[1]
    if len(a) == 2 and len(b) == 2:
        return 2 * a[0] * a[1] * b[1]
    raise ValueError(f"grouped GEMM operands must be 2-d or 3-d, got {tuple(a)} and {tuple(b)}")


def _grouped_mm(a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    return grouped_mm_flops(tuple(a.shape), tuple(b.shape))


def _addmm_activation(bias: Any, mat1: Any, mat2: Any, *args: Any, **kwargs: Any) -> int:
    """addmm with a fused ReLU/GELU: the matmul's 2mkn."""
    m, k = _shape(mat1, "mat1", 2)
    return 2 * m * k * _shape(mat2, "mat2", 2)[1]


def _ops(*names: str) -> list[Any]:
    """The aten op packets of these names that this torch has (some are newer than others)."""
    return [getattr(aten, name) for name in names if hasattr(aten, name)]


# The formulas added to (or put in place of) torch's, by op.
FORMULAS: dict[Any, Callable[..., int]] = {
    **dict.fromkeys(_ops("_scaled_dot_product_flash_attention",
                         "_scaled_dot_product_efficient_attention",
                         "_scaled_dot_product_cudnn_attention",
                         "_scaled_dot_product_flash_attention_for_cpu",
                         "_scaled_dot_product_fused_attention_overrideable"), _sdpa_forward),
    **dict.fromkeys(_ops("_scaled_dot_product_flash_attention_backward",
                         "_scaled_dot_product_efficient_attention_backward",
                         "_scaled_dot_product_cudnn_attention_backward",
                         "_scaled_dot_product_flash_attention_for_cpu_backward",
                         "_scaled_dot_product_fused_attention_overrideable_backward"),
                    _sdpa_backward),
    **dict.fromkeys(_ops("_flash_attention_forward"), _flash_forward),
    **dict.fromkeys(_ops("_flash_attention_backward"), _flash_backward),
    **dict.fromkeys(_ops("_efficient_attention_forward"), _efficient_forward),
    **dict.fromkeys(_ops("_efficient_attention_backward"), _efficient_backward),
    **dict.fromkeys(_ops("_grouped_mm", "_scaled_grouped_mm"), _grouped_mm),
    **dict.fromkeys(_ops("_addmm_activation"), _addmm_activation),
}
for _formula in set(FORMULAS.values()):
    # Raw: FlopCounterMode passes the tensors themselves (not their shapes) and `out_val`.
    _formula._get_raw = True  # type: ignore[attr-defined]

# Words of an op's name that mark it as doing matmul-like work (split at "_", "." and "::"): an
# op with one of them and no formula is reported as uncounted rather than silently counted as 0.
# Elementwise ops, norms, reductions and copies are not FLOP-relevant next to these.
COMPUTE_WORDS: frozenset[str] = frozenset({
    "mm", "bmm", "addmm", "baddbmm", "matmul", "gemm", "einsum", "linear", "attn", "attention",
    "conv", "convolution", "rnn", "lstm", "gru",
})


def op_name(op: object) -> str:
    """An op's printable name, e.g. 'aten._grouped_mm' or 'mylib.attention' (a Triton kernel's
    function name)."""
    if isinstance(op, torch._ops.OpOverloadPacket):
        return str(op)
    return str(getattr(op, "__name__", op))


def is_compute_op(op: object) -> bool:
    """Whether an op's name says it does matmul-like work (`COMPUTE_WORDS`)."""
    return bool(COMPUTE_WORDS.intersection(re.split(r"[_.:]+", op_name(op).lower())))


@dataclass(frozen=True)
class FlopCount:
    """FLOPs counted in one call, by op, and the ops that could not be counted (name -> why)."""

    total: int
    by_op: Mapping[str, int] = field(default_factory=dict)
    uncounted: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every FLOP-relevant op of the call was counted."""
        return not self.uncounted

    def describe_uncounted(self) -> str:
        """'op (why); op (why)' for a warning or a metric note."""
        return "; ".join(f"{name} ({why})" for name, why in sorted(self.uncounted.items()))


class _StepFlopCounter(FlopCounterMode):
    """FlopCounterMode with `FORMULAS`, whose count never raises: an op whose formula fails, or
    a compute op without one, is recorded in `uncounted` and left out of the total."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=FORMULAS)
        self.uncounted: dict[str, str] = {}

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            try:
                # torch leaves _count_flops unannotated.
                return super()._count_flops(func_packet, out, args, kwargs)  # type: ignore[no-untyped-call]
            except Exception as exc:  # noqa: BLE001 - any failing formula: name it, never crash
                self.uncounted.setdefault(op_name(func_packet),
                                          f"its FLOP formula failed: {exc}".replace("\n", " "))
                return out
        if is_compute_op(func_packet):
            self.uncounted.setdefault(op_name(func_packet), "no FLOP formula for this op")
        return out


# What torch.compile'd modules warn when any global module hook is registered.
GLOBAL_HOOKS_WARNING = r"Using `torch.compile\(module\)` when there are global hooks on modules"


def count_flops(fn: Callable[[], object]) -> tuple[object, FlopCount]:
    """Call `fn` once under the extended FlopCounterMode: its result and the FLOPs it did."""
    counter = _StepFlopCounter()
    with counter, warnings.catch_warnings():
        # The counter's module tracker is a global module hook, which a compiled module warns
        # about on every call; the hook is the counter's own and harmless.
        warnings.filterwarnings("ignore", message=GLOBAL_HOOKS_WARNING)
        result = fn()
    by_op = {op_name(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return result, FlopCount(total=int(counter.get_total_flops()), by_op=by_op,
                             uncounted=dict(counter.uncounted))

