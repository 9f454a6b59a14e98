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

from harness.theory.config import MLP_KINDS, NORM_KINDS, POSITION_KINDS, TransformerConfig
from harness.theory.flops import RECOMPUTE_KINDS
from harness.theory.hardware import gpu_spec, known_gpus
from harness.theory.memory.states import OPTIMIZERS, PRECISIONS, ZERO_STAGES

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
