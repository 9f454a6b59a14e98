"""Hypothesis strategies for the property tests: valid (and deliberately invalid) model configs,
workloads, parallel layouts and the named choices of the formulas.

Noun-named functions with keyword-only bounds, reused by every property test, so that one place
decides what "any model" means. Sizes stay modest: the formulas are exact integer arithmetic, so
small shapes exercise every branch and keep the suite fast.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

from harness.theory.config import (
    MLP_KINDS,
    NORM_KINDS,
    POSITION_KINDS,
    QK_NORM_KINDS,
    TransformerConfig,
)
from harness.theory.flops import RECOMPUTE_KINDS
from harness.theory.hardware import gpu_spec, known_gpus
from harness.theory.memory.states import OPTIMIZERS, PRECISIONS, ZERO_STAGES
from harness.theory.mla import MLA
from harness.theory.moe import MoE

STYLES: tuple[str, ...] = ("gpt", "llama", "bloom", "any")

# Per-head widths of real models (GPT-2: 64, LLaMA: 128, some small models: 32, 80, 96) plus odd
# ones so that nothing relies on powers of two.
_HEAD_DIMS: tuple[int, ...] = (1, 2, 3, 8, 32, 64, 80, 96, 128)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def transformer_configs(draw: st.DrawFn, *, max_layers: int = 8, max_hidden: int = 1024,
                        max_heads: int = 16, max_vocab: int = 4096,
                        styles: tuple[str, ...] = STYLES) -> TransformerConfig:
    """A valid `TransformerConfig`: heads divide hidden, kv heads divide heads.

    `styles` picks the architecture family: "gpt" (GELU, LayerNorm with bias, learned positions,
    tied embeddings), "llama" (SwiGLU, RMSNorm, RoPE, no bias, untied, GQA), "bloom" (ALiBi,
    embedding norm, tied) or "any" (every field drawn independently).
    """
    unknown = set(styles) - set(STYLES)
    if not styles or unknown:
        raise ValueError(f"styles must be a non-empty subset of {STYLES}, got {styles!r}")
    style = draw(st.sampled_from(styles))
    head_dim = draw(st.sampled_from([d for d in _HEAD_DIMS if d <= max_hidden] or [1]))
    most_heads = max(1, min(max_heads, max_hidden // head_dim))
    # Real models use powers of two (so that tensor parallelism divides them); odd counts too.
    num_heads = draw(st.sampled_from([2**i for i in range(most_heads.bit_length())])
                     | st.integers(1, most_heads))
    hidden_size = num_heads * head_dim
    num_layers = draw(st.integers(1, max_layers))
    vocab_size = draw(st.integers(1, max_vocab))
    max_positions = draw(st.integers(1, 8192))
    common: dict[str, Any] = dict(num_layers=num_layers, hidden_size=hidden_size,
                                  num_heads=num_heads, vocab_size=vocab_size,
                                  max_position_embeddings=max_positions, name=f"{style}-drawn")
    if style == "gpt":
        return TransformerConfig(**common)
    if style == "bloom":
        return TransformerConfig(**common, position="alibi", embedding_norm=True)
    kv_heads = draw(st.sampled_from(_divisors(num_heads)))
    # None lets the config pick its own default width (4h, or LLaMA's 8h/3 rounded to 256);
    # published widths are multiples of 64 or 256 (Llama-2: 11008 = 43 * 256); any width works.
    ffn = draw(st.none() | st.integers(1, 4 * max_hidden)
               | st.integers(1, max(1, 4 * max_hidden // 256)).map(lambda n: 256 * n))
    if style == "llama":
        return TransformerConfig(**common, num_kv_heads=kv_heads, ffn_hidden_size=ffn,
                                 mlp="swiglu", tied_embeddings=False, bias=False,
                                 qkv_bias=draw(st.booleans()), norm="rmsnorm", position="rope")
    return TransformerConfig(
        **common, num_kv_heads=kv_heads, ffn_hidden_size=ffn,
        mlp=draw(st.sampled_from(MLP_KINDS)), tied_embeddings=draw(st.booleans()),
        bias=draw(st.booleans()), qkv_bias=draw(st.none() | st.booleans()),
        norm=draw(st.sampled_from(NORM_KINDS)), position=draw(st.sampled_from(POSITION_KINDS)),
        embedding_norm=draw(st.booleans()))


@st.composite
def experts(draw: st.DrawFn, *, num_layers: int, max_experts: int = 16,
            max_width: int = 512) -> MoE:
    """A valid `MoE` for a model of `num_layers` layers: some layers may stay dense (DeepSeek's
    leading ones, Qwen's mlp_only_layers), never all of them."""
    num_experts = draw(st.integers(1, max_experts))
    dense = draw(st.sets(st.integers(0, num_layers - 1), max_size=num_layers - 1))
    shared = draw(st.integers(0, 2))
    return MoE(num_experts=num_experts, top_k=draw(st.integers(1, num_experts)),
               expert_ffn_hidden_size=draw(st.integers(1, max_width)),
               num_shared_experts=shared,
               shared_ffn_hidden_size=draw(st.none() | st.integers(1, max_width)),
               shared_expert_gate=shared > 0 and draw(st.booleans()),
               dense_layers=tuple(sorted(dense)))


def latent_attentions(*, max_rank: int = 256, max_head_dim: int = 64) -> st.SearchStrategy[MLA]:
    """A valid `MLA` (DeepSeek-V2/V3 attention), with or without a query bottleneck."""
    widths = st.integers(1, max_head_dim)
    return st.builds(MLA, kv_lora_rank=st.integers(1, max_rank), qk_nope_head_dim=widths,
                     qk_rope_head_dim=widths, v_head_dim=widths,
                     q_lora_rank=st.none() | st.integers(1, max_rank))


@st.composite
def variant_configs(draw: st.DrawFn, *, max_layers: int = 6, max_hidden: int = 512,
                    max_heads: int = 16) -> TransformerConfig:
    """A valid `TransformerConfig` using the fields beyond the classic block: a head width apart
    from hidden/heads, query/key norms, norm placements and parallel residuals, sliding windows
    with global layers, output biases and offset position tables, experts and latent attention.

    These are theory-only shapes: `harness.model` builds the classic block, so the properties
    that build a model draw `transformer_configs` instead.
    """
    base = draw(transformer_configs(max_layers=max_layers, max_hidden=max_hidden,
                                    max_heads=max_heads, styles=("llama", "any")))
    layers = base.num_layers
    placement = draw(st.sampled_from(("pre", "post", "sandwich", "single")))
    parallel = placement == "single" or (placement == "pre" and draw(st.booleans()))
    window = draw(st.none() | st.integers(1, 4096))
    global_layers = (tuple(sorted(draw(st.sets(st.integers(0, layers - 1)))))
                     if window is not None else ())
    mla = draw(st.none() | latent_attentions())
    changes: dict[str, Any] = dict(
        head_dim=draw(st.sampled_from([0, 1, 2, 32, 64, 96, 128, 256])),
        qk_norm="none" if mla is not None else draw(st.sampled_from(QK_NORM_KINDS)),
        norm_placement=placement, parallel_residual=parallel, sliding_window=window,
        global_layers=global_layers, output_bias=draw(st.booleans()),
        moe=draw(st.none() | experts(num_layers=layers)), mla=mla,
        name="variant-drawn")
    if mla is not None:
        changes["num_kv_heads"] = None
    if base.position == "learned":
        changes["position_offset"] = draw(st.integers(0, 2))
    return base.replace(**changes)


def configs_with_layouts(**config_bounds: Any
                         ) -> st.SearchStrategy[tuple[TransformerConfig, tuple[int, int, int]]]:
    """A (cfg, (num_gpus, tp, pp)) pair: a config from `transformer_configs(**config_bounds)` and
    a parallel layout that divides it."""
    return transformer_configs(**config_bounds).flatmap(
        lambda cfg: parallel_layouts(cfg).map(lambda layout: (cfg, layout)))


def workloads(*, max_batch: int = 64, max_seq: int = 8192) -> st.SearchStrategy[tuple[int, int]]:
    """A (batch_size, seq_len) pair of positive integers."""
    return st.tuples(st.integers(1, max_batch), st.integers(1, max_seq))


@st.composite
def parallel_layouts(draw: st.DrawFn, cfg: TransformerConfig, *,
                     max_dp: int = 8) -> tuple[int, int, int]:
    """A (num_gpus, tp, pp) layout that divides evenly for `cfg`: tp divides the query heads,
    the kv heads and the MLP width (Megatron splits all three), pp divides the layers."""
    tp = draw(st.sampled_from(_divisors(math.gcd(cfg.num_heads, cfg.kv_heads, cfg.ffn_size))))
    pp = draw(st.sampled_from(_divisors(cfg.num_layers)))
    dp = draw(st.integers(1, max_dp))
    return dp * tp * pp, tp, pp


def recompute_modes() -> st.SearchStrategy[str]:
    """An activation-recomputation mode: none, selective (attention core only) or full."""
    return st.sampled_from(RECOMPUTE_KINDS)


def precisions() -> st.SearchStrategy[str]:
    """A training precision the memory formulas know (fp32, bf16-mixed, ...)."""
    return st.sampled_from(PRECISIONS)


def optimizers() -> st.SearchStrategy[str]:
    """An optimizer the memory formulas know (adamw, sgd, ...)."""
    return st.sampled_from(OPTIMIZERS)


def zero_stages() -> st.SearchStrategy[int]:
    """A ZeRO stage: 0 (none) to 3 (weights sharded too)."""
    return st.sampled_from(ZERO_STAGES)


_BASE_CONFIG: dict[str, Any] = dict(num_layers=2, hidden_size=64, num_heads=4, vocab_size=100)
_INT_FIELDS: tuple[str, ...] = ("num_layers", "hidden_size", "num_heads", "vocab_size",
                                "max_position_embeddings")
_OPTIONAL_INT_FIELDS: tuple[str, ...] = ("num_kv_heads", "ffn_hidden_size")
_CHOICE_FIELDS: dict[str, tuple[str, ...]] = {"mlp": MLP_KINDS, "norm": NORM_KINDS,
                                              "position": POSITION_KINDS}


def _not_a_positive_int() -> st.SearchStrategy[Any]:
    # bool is an int subclass and float 64.0 compares equal to 64: both must still be refused.
    return st.one_of(st.integers(max_value=0), st.booleans(),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                     st.just("64"))


@st.composite
def invalid_config_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments that `TransformerConfig(**kwargs)` must reject with a ValueError:
    one field broken at a time, on top of an otherwise valid small config."""
    kwargs = dict(_BASE_CONFIG)
    flaw = draw(st.sampled_from(("int", "optional_int", "choice", "heads", "kv_heads")))
    if flaw == "int":
        field = draw(st.sampled_from(_INT_FIELDS))
        kwargs[field] = draw(_not_a_positive_int() | st.none())
    elif flaw == "optional_int":  # None is valid here (it means "use the default")
        kwargs[draw(st.sampled_from(_OPTIONAL_INT_FIELDS))] = draw(_not_a_positive_int())
    elif flaw == "choice":
        field, choices = draw(st.sampled_from(sorted(_CHOICE_FIELDS.items())))
        kwargs[field] = draw(st.one_of(st.text(max_size=10), st.none(), st.integers())
                             .filter(lambda value: value not in choices))
    elif flaw == "heads":
        hidden = draw(st.integers(2, 4096))
        heads = draw(st.integers(2, 2 * hidden).filter(lambda a: hidden % a != 0))
        kwargs.update(hidden_size=hidden, num_heads=heads)
    else:
        heads = draw(st.integers(1, 64))
        hidden = heads * draw(st.integers(1, 16))
        kv_heads = draw(st.integers(1, 2 * heads).filter(lambda g: heads % g != 0))
        kwargs.update(hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads)
    return kwargs


@st.composite
def invalid_variant_kwargs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(kwargs, a fragment of the message) for `TransformerConfig(**kwargs)` with one of the
    architecture fields broken or combined impossibly, on top of a valid small config."""
    kwargs = dict(_BASE_CONFIG)  # 2 layers, 4 heads of 16
    flaws: tuple[tuple[dict[str, Any], str], ...] = (
        ({"head_dim": -1}, "head_dim must be a positive integer"),
        ({"qk_norm": "both"}, "qk_norm must be one of"),
        ({"norm_placement": "single"}, "needs parallel_residual=True"),
        ({"norm_placement": "sandwich", "parallel_residual": True}, "parallel_residual=True"),
        ({"sliding_window": 0}, "sliding_window must be a positive integer"),
        ({"global_layers": (0,)}, "sliding_window is None"),
        ({"sliding_window": 8, "global_layers": (1, 0)}, "increasing order"),
        ({"sliding_window": 8, "global_layers": (2,)}, "layer indices 0..1"),
        ({"position": "rope", "position_offset": 2}, "has none"),
        ({"moe": {"num_experts": 8}}, "moe must be a harness.MoE"),
        ({"moe": MoE(num_experts=4, top_k=2, expert_ffn_hidden_size=8,
                     dense_layers=(0, 1))}, "use moe=None"),
        ({"moe": MoE(num_experts=4, top_k=2, expert_ffn_hidden_size=8,
                     dense_layers=(5,))}, "layer indices 0..1"),
        ({"num_kv_heads": 2, "mla": MLA(kv_lora_rank=8, qk_nope_head_dim=8,
                                         qk_rope_head_dim=4, v_head_dim=8)}, "every head"),
        ({"qk_norm": "head", "mla": MLA(kv_lora_rank=8, qk_nope_head_dim=8,
                                         qk_rope_head_dim=4, v_head_dim=8)}, "qk_norm='none'"),
    )
    changes, message = draw(st.sampled_from(flaws))
    kwargs.update(changes)
    return kwargs, message


def bad_sizes() -> st.SearchStrategy[Any]:
    """Values no batch size, sequence length or parallel degree may take: zero, negatives,
    bools, floats (even whole ones), strings and None."""
    return st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.just(2.0),
                     st.just("2"), st.none())


def _table_names() -> list[str]:
    names = []
    for name in known_gpus():
        names.extend((name, *gpu_spec(name).aliases))
    return names


def _respelled(name: str) -> st.SearchStrategy[str]:
    """The same GPU name as a user or a driver might write it: any case, "-" or "_" for spaces,
    surrounding whitespace."""
    separator = st.sampled_from((" ", "-", "_", "  "))
    return st.tuples(st.sampled_from((str.lower, str.upper, str, str.title)), separator,
                     st.sampled_from(("", " ", "\t"))).map(
        lambda t: t[2] + t[0](name).replace(" ", t[1]) + t[2])


def gpu_names(*, respell: bool = True) -> st.SearchStrategy[str]:
    """A name `gpu_spec` must know: a table name or alias (NVML names such as
    "NVIDIA H100 80GB HBM3" included), respelled in case and separators when `respell`."""
    names = st.sampled_from(_table_names())
    return names.flatmap(_respelled) if respell else names
