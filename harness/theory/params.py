"""Parameter counts of a `TransformerConfig` as functions: exact, by part, and the estimates.

The exact count is the ground truth every other formula builds on (6ND, weight and optimizer
memory). Its arithmetic lives on the dataclass (`TransformerConfig.param_breakdown`, conventions
in `harness.theory.config`), so `cfg.num_params()` needs no import of this module; the functions
here check their argument and read those counts, and add what is derived from them: the
non-embedding N of the scaling laws, the matmul parameters behind the FLOP counts and the
textbook estimate.
"""

from __future__ import annotations

from harness.theory.config import TransformerConfig, require_config


def norm_params(cfg: TransformerConfig) -> int:
    """Parameters of one normalisation layer over hidden_size channels."""
    return require_config(cfg).norm_params()


def attention_params(cfg: TransformerConfig) -> int:
    """Parameters of one attention block: Q, K, V (K and V of width kv_hidden_size under GQA;
    MLA's latent projections) and the output projection, with their biases and norms."""
    return require_config(cfg).attention_params()


def mlp_params(cfg: TransformerConfig) -> int:
    """Parameters of one MLP block: two matrices (up, down) or three for gated MLPs
    (gate, up, down), with their biases."""
    return require_config(cfg).mlp_params()


def layer_params(cfg: TransformerConfig, layer: int = 0) -> int:
    """Parameters of transformer block `layer`: attention, its MLP (dense or experts) and its
    norms."""
    return require_config(cfg).layer_params(layer)


def param_breakdown(cfg: TransformerConfig) -> dict[str, int]:
    """Parameters by part, summed over all layers; the values add up to `num_params(cfg)`.

    Keys: embedding, position, embedding_norm, attention, mlp, router, experts, shared_experts,
    layer_norms, final_norm, output.
    """
    return require_config(cfg).param_breakdown()


def num_params(cfg: TransformerConfig) -> int:
    """Exact parameter count: every weight, bias, norm and embedding, a tied output layer once,
    every expert (the total count; `active_params` is what one token uses)."""
    return require_config(cfg).num_params()


def non_embedding_params(cfg: TransformerConfig) -> int:
    """Parameters outside the token embedding, the learned positions and an untied output layer:
    the N of Kaplan et al. 2020 (scaling laws), which excludes vocabulary and position matrices."""
    parts = param_breakdown(cfg)
    return sum(parts.values()) - parts["embedding"] - parts["position"] - parts["output"]


def active_params(cfg: TransformerConfig) -> int:
    """Parameters one token's forward pass uses: every parameter except the routed experts it is
    not sent to (torchtitan's active count: dense + shared + router + top_k/num_experts of the
    routed experts). Equal to `num_params` for a dense model."""
    return require_config(cfg).active_params()


def mlp_matmul_weights(cfg: TransformerConfig, width: int | None = None) -> int:
    """Weights of one MLP (or expert) of `width` (default ffn_hidden_size): 3hf gated, 2hf
    otherwise."""
    cfg = require_config(cfg)
    f = cfg.ffn_size if width is None else width
    return (3 if cfg.gated_mlp else 2) * cfg.hidden_size * f


def moe_matmul_weights(cfg: TransformerConfig) -> dict[str, int]:
    """Weights one token multiplies by in one expert layer: "router" (h x num_experts),
    "experts" (top_k routed experts) and "shared_experts" (with Qwen's h x 1 gate); zeros for a
    dense model."""
    cfg = require_config(cfg)
    moe = cfg.moe
    if moe is None:
        return {"router": 0, "experts": 0, "shared_experts": 0}
    h = cfg.hidden_size
    return {"router": moe.router_params(h),
            "experts": moe.top_k * mlp_matmul_weights(cfg, moe.expert_ffn_hidden_size),
            "shared_experts": (moe.num_shared_experts * mlp_matmul_weights(cfg, moe.shared_width)
                               + moe.shared_gate_params(h))}


def matmul_params(cfg: TransformerConfig) -> int:
    """Parameters that take part in a matrix multiply for every token: all linear-layer weights
    of the blocks a token passes through (for experts: the router, the shared experts and top_k
    routed experts) plus the output layer (the tied embedding when tied). Two FLOPs per such
    weight per token is the exact forward cost of everything but attention scores (see
    flops.py): the N of the PaLM/torchtitan 6N + attention rule, with active parameters."""
    cfg = require_config(cfg)
    projections, output = cfg.attention_projection_weights()
    moe = sum(moe_matmul_weights(cfg).values())
    return (cfg.num_layers * (projections + output) + cfg.num_dense_layers
            * mlp_matmul_weights(cfg) + cfg.num_moe_layers * moe + cfg.vocab_size
            * cfg.hidden_size)


def approx_params_gpt(cfg: TransformerConfig) -> int:
    """The textbook estimate l(12h^2 + 13h) + 2Vh (source 003, section 2.5): a GPT block with a
    4h MLP and biases everywhere, separate input and output embeddings, positions ignored.

    Shown beside the exact count to make the gap visible; it is exact for nothing in the zoo
    (GPT-2 ties its output layer and has learned positions, LLaMA has gated MLPs and GQA).
    """
    cfg = require_config(cfg)
    h, layers = cfg.hidden_size, cfg.num_layers
    return layers * (12 * h * h + 13 * h) + 2 * cfg.vocab_size * h
