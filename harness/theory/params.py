"""Parameter counts of a `TransformerConfig`: exact, broken down by part, and the textbook estimate.

The exact count is the ground truth every other formula builds on (6ND, weight and optimizer
memory), so it counts every weight, bias, norm and embedding that `harness.model.build_model`
creates, and the tests pin it to each zoo model's published figure.

Conventions:
- A LayerNorm has a weight and a bias when `cfg.bias`, a weight only otherwise; an RMSNorm has a
  weight only.
- `cfg.qkv_bias` puts biases on the query, key and value projections; `cfg.bias` on the attention
  output projection and on both (or all three) MLP matrices.
- A tied output layer reuses the token embedding and adds nothing; an untied one is a
  vocab_size x hidden_size matrix without bias (no model in the zoo has an output bias).
- Learned positions add max_position_embeddings x hidden_size; RoPE and ALiBi add nothing.
"""

from __future__ import annotations

from harness.theory.config import TransformerConfig, require_config


def norm_params(cfg: TransformerConfig) -> int:
    """Parameters of one normalisation layer over hidden_size channels."""
    cfg = require_config(cfg)
    if cfg.norm == "layernorm" and cfg.bias:
        return 2 * cfg.hidden_size
    return cfg.hidden_size


def attention_params(cfg: TransformerConfig) -> int:
    """Parameters of one attention block: Q, K, V (K and V of width kv_hidden_size under GQA)
    and the output projection, with their biases."""
    cfg = require_config(cfg)
    h, kv = cfg.hidden_size, cfg.kv_hidden_size
    weights = h * h + 2 * h * kv + h * h
    qkv_biases = (h + 2 * kv) if cfg.qkv_bias else 0
    output_bias = h if cfg.bias else 0
    return weights + qkv_biases + output_bias


def mlp_params(cfg: TransformerConfig) -> int:
    """Parameters of one MLP block: two matrices (up, down) or three for gated MLPs
    (gate, up, down), with their biases."""
    cfg = require_config(cfg)
    h, f = cfg.hidden_size, cfg.ffn_size
    input_matrices = 2 if cfg.gated_mlp else 1
    weights = input_matrices * h * f + f * h
    biases = (input_matrices * f + h) if cfg.bias else 0
    return weights + biases


def layer_params(cfg: TransformerConfig) -> int:
    """Parameters of one transformer block: attention, MLP and its two pre-norms."""
    cfg = require_config(cfg)
    return attention_params(cfg) + mlp_params(cfg) + 2 * norm_params(cfg)


def param_breakdown(cfg: TransformerConfig) -> dict[str, int]:
    """Parameters by part, summed over all layers; the values add up to `num_params(cfg)`.

    Keys: embedding, position, embedding_norm, attention, mlp, layer_norms, final_norm, output.
    """
    cfg = require_config(cfg)
    h, layers = cfg.hidden_size, cfg.num_layers
    return {
        "embedding": cfg.vocab_size * h,
        "position": cfg.max_position_embeddings * h if cfg.position == "learned" else 0,
        "embedding_norm": norm_params(cfg) if cfg.embedding_norm else 0,
        "attention": layers * attention_params(cfg),
        "mlp": layers * mlp_params(cfg),
        "layer_norms": layers * 2 * norm_params(cfg),
        "final_norm": norm_params(cfg),
        "output": 0 if cfg.tied_embeddings else cfg.vocab_size * h,
    }


def num_params(cfg: TransformerConfig) -> int:
    """Exact parameter count: every weight, bias, norm and embedding, a tied output layer once."""
    return sum(param_breakdown(cfg).values())


def non_embedding_params(cfg: TransformerConfig) -> int:
    """Parameters outside the token embedding, the learned positions and an untied output layer:
    the N of Kaplan et al. 2020 (scaling laws), which excludes vocabulary and position matrices."""
    parts = param_breakdown(cfg)
    return num_params(cfg) - parts["embedding"] - parts["position"] - parts["output"]


def matmul_params(cfg: TransformerConfig) -> int:
    """Parameters that take part in a matrix multiply for every token: all linear-layer weights of
    the blocks plus the output layer (the tied embedding when tied). Two FLOPs per such weight per
    token is the exact forward cost of everything but attention scores (see flops.py)."""
    cfg = require_config(cfg)
    h, kv, f = cfg.hidden_size, cfg.kv_hidden_size, cfg.ffn_size
    attention = 2 * h * h + 2 * h * kv
    mlp = (3 if cfg.gated_mlp else 2) * h * f
    return cfg.num_layers * (attention + mlp) + cfg.vocab_size * h


def approx_params_gpt(cfg: TransformerConfig) -> int:
    """The textbook estimate l(12h^2 + 13h) + 2Vh (source 003, section 2.5): a GPT block with a
    4h MLP and biases everywhere, separate input and output embeddings, positions ignored.

    Shown beside the exact count to make the gap visible; it is exact for nothing in the zoo
    (GPT-2 ties its output layer and has learned positions, LLaMA has gated MLPs and GQA).
    """
    cfg = require_config(cfg)
    h, layers = cfg.hidden_size, cfg.num_layers
    return layers * (12 * h * h + 13 * h) + 2 * cfg.vocab_size * h
