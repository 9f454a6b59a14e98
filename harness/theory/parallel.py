"""Parallelism arithmetic: data-parallel size, batch sizes, and what tensor/pipeline parallelism
require of a model's shape.

The batch-size identities are those of source 001 ("batch size" section): DP = N_GPUS / (TP * PP)
and GBS = MBS * DP * GAS. The tensor-parallel rules follow Megatron-LM, whose attention layer
splits query heads and key/value groups evenly over the tensor-parallel ranks (source 003 quotes
`divide(num_query_groups, world_size)`, which asserts divisibility).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_positive_int
from harness.theory.config import TransformerConfig, require_config
from harness.theory.params import layer_params, param_breakdown
from harness.theory.units import ceil_div

# Megatron-LM pads the vocabulary to a multiple of `make_vocab_size_divisible_by` (default 128)
# times the tensor-parallel size, so every rank holds an equal, well-aligned slice of it.
MEGATRON_VOCAB_DIVISIBLE_BY = 128


def data_parallel_size(num_gpus: int, tp: int = 1, pp: int = 1) -> int:
    """Number of model replicas: DP = num_gpus / (tp * pp) (source 001)."""
    require_positive_int("num_gpus", num_gpus)
    require_positive_int("tp", tp)
    require_positive_int("pp", pp)
    if num_gpus % (tp * pp):
        raise ValueError(f"num_gpus={num_gpus} is not divisible by tp * pp = {tp} * {pp} = "
                         f"{tp * pp}; num_gpus must be a multiple of tp * pp")
    return num_gpus // (tp * pp)


def global_batch_size(micro_batch_size: int, dp: int, grad_accum_steps: int = 1) -> int:
    """Samples per optimizer step: GBS = MBS * DP * GAS (source 001)."""
    require_positive_int("micro_batch_size", micro_batch_size)
    require_positive_int("dp", dp)
    require_positive_int("grad_accum_steps", grad_accum_steps)
    return micro_batch_size * dp * grad_accum_steps


def grad_accum_steps(global_batch_size: int, micro_batch_size: int, dp: int) -> int:
    """Gradient accumulation steps that make up a global batch: GAS = GBS / (MBS * DP)."""
    require_positive_int("global_batch_size", global_batch_size)
    require_positive_int("micro_batch_size", micro_batch_size)
    require_positive_int("dp", dp)
    per_step = micro_batch_size * dp
    if global_batch_size % per_step:
        lower = (global_batch_size // per_step) * per_step
        valid = f"{lower} or {lower + per_step}" if lower else f"{per_step}"
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                         f"micro_batch_size * dp = {micro_batch_size} * {dp} = {per_step}; "
                         f"the nearest valid global batch sizes are {valid}")
    return global_batch_size // per_step


def tokens_per_step(global_batch_size: int, seq_len: int) -> int:
    """Tokens consumed by one optimizer step: GBS * seq_len."""
    require_positive_int("global_batch_size", global_batch_size)
    require_positive_int("seq_len", seq_len)
    return global_batch_size * seq_len


def padded_vocab_size(vocab_size: int, tp: int = 1,
                      divisible_by: int = MEGATRON_VOCAB_DIVISIBLE_BY) -> int:
    """Vocabulary size after Megatron-LM's padding to a multiple of `divisible_by * tp`."""
    require_positive_int("vocab_size", vocab_size)
    require_positive_int("tp", tp)
    require_positive_int("divisible_by", divisible_by)
    multiple = divisible_by * tp
    return ceil_div(vocab_size, multiple) * multiple


@dataclass(frozen=True)
class TensorParallelLayout:
    """What one tensor-parallel rank holds of each split dimension."""

    tp: int
    heads_per_rank: int
    kv_heads_per_rank: int
    ffn_per_rank: int
    padded_vocab_size: int
    vocab_per_rank: int


def _tensor_parallel_sizes(cfg: TransformerConfig) -> dict[str, int]:
    """The sizes Megatron-LM splits over tensor-parallel ranks, by config field."""
    sizes = {"num_heads": cfg.num_heads, "num_kv_heads": cfg.kv_heads}
    if cfg.num_dense_layers:
        sizes["ffn_hidden_size"] = cfg.ffn_size
    if cfg.moe is not None:
        sizes["MoE.expert_ffn_hidden_size"] = cfg.moe.expert_ffn_hidden_size
        if cfg.moe.num_shared_experts:
            sizes["MoE.shared_ffn_hidden_size"] = cfg.moe.shared_width
    return sizes


def check_tensor_parallel(cfg: TransformerConfig, tp: int) -> TensorParallelLayout:
    """Check that `cfg` splits evenly over `tp` tensor-parallel ranks; return each rank's share.

    Query heads, key/value heads and the feed-forward width (of the dense MLP, and of the
    routed and shared experts: expert tensor parallelism) must be divisible by tp. Key/value
    heads are never replicated: Megatron-LM divides `num_query_groups` by the tensor-parallel
    size and refuses otherwise (inference engines such as vLLM replicate them instead; that
    layout is not modelled here). The vocabulary is padded as Megatron-LM does, so it always
    divides.
    """
    cfg = require_config(cfg)
    require_positive_int("tp", tp)
    sizes = _tensor_parallel_sizes(cfg)
    problems = [f"{name}={size}" for name, size in sizes.items() if size % tp]
    if problems:
        valid = [d for d in range(1, cfg.kv_heads + 1)
                 if all(size % d == 0 for size in sizes.values())]
        raise ValueError(f"tp={tp} does not divide {', '.join(problems)} of {cfg.name}; "
                         f"tensor-parallel sizes that divide heads, key/value heads and the "
                         f"feed-forward widths: {', '.join(map(str, valid))}")
    vocab = padded_vocab_size(cfg.vocab_size, tp)
    return TensorParallelLayout(tp=tp, heads_per_rank=cfg.num_heads // tp,
                                kv_heads_per_rank=cfg.kv_heads // tp,
                                ffn_per_rank=cfg.ffn_size // tp, padded_vocab_size=vocab,
                                vocab_per_rank=vocab // tp)


def check_pipeline_parallel(cfg: TransformerConfig, pp: int) -> int:
    """Check that `cfg`'s layers split evenly over `pp` pipeline stages; return layers per stage."""
    cfg = require_config(cfg)
    require_positive_int("pp", pp)
    if cfg.num_layers % pp:
        valid = [d for d in range(1, cfg.num_layers + 1) if cfg.num_layers % d == 0]
        raise ValueError(f"pp={pp} does not divide num_layers={cfg.num_layers} of {cfg.name}; "
                         f"valid pipeline sizes: {', '.join(map(str, valid))}")
    return cfg.num_layers // pp


def replicated_layer_params(cfg: TransformerConfig, layer: int) -> int:
    """Parameters of layer `layer` every tensor-parallel rank holds whole: its norms (query/key
    and MLA latent norms included), the router (and Qwen's shared-expert gate), and the biases
    of row-parallel layers (attention output, every down projection)."""
    h = cfg.hidden_size
    norms = cfg.norms_per_layer * cfg.norm_params() + cfg.attention_norm_params()
    down_projections, router = 1, 0
    if cfg.is_moe_layer(layer):
        assert cfg.moe is not None  # is_moe_layer says so
        moe = cfg.moe
        down_projections = moe.num_experts + moe.num_shared_experts
        router = moe.router_params(h) + moe.shared_gate_params(h)
    row_biases = h * (1 + down_projections) if cfg.bias else 0
    return norms + router + row_biases


def params_per_rank(cfg: TransformerConfig, tp: int = 1, pp: int = 1) -> int:
    """Parameters held by one rank of the first pipeline stage (the stage with the embedding).

    Megatron-LM layout: attention, MLP and expert weights and the biases of column-parallel
    layers are split over tp; the norms, routers, biases of row-parallel layers (attention
    output, MLP down projections) and learned positions are replicated
    (`replicated_layer_params`); the token embedding and an untied output layer (with its bias)
    are split by vocabulary (ceil(vocab / tp) rows, no padding, so tp=1, pp=1 gives exactly
    `cfg.num_params()`). The final norm and output layer live on the last stage, so they count
    here only when pp == 1. The first stage holds layers 0 .. L/pp - 1 (DeepSeek's leading
    dense layers among them).
    """
    check_tensor_parallel(cfg, tp)
    layers = check_pipeline_parallel(cfg, pp)
    h = cfg.hidden_size
    parts = param_breakdown(cfg)
    stage_layers = 0
    for layer in range(layers):
        replicated = replicated_layer_params(cfg, layer)
        stage_layers += (layer_params(cfg, layer) - replicated) // tp + replicated
    vocab_rows = ceil_div(cfg.vocab_size, tp)
    first_stage = vocab_rows * h + parts["position"] + parts["embedding_norm"] + stage_layers
    if pp > 1:
        return first_stage
    output = ((0 if cfg.tied_embeddings else vocab_rows * h)
              + (vocab_rows if cfg.output_bias else 0))
    return first_stage + parts["final_norm"] + output
