"""The parameters torch.autocast copies to 16 bits: the weights (and linear-layer biases) of the
matmuls one GPU runs. Norms, embedding lookups and anything not run through an autocast op use
the fp32 parameters themselves; a tied output layer's table is copied for its matmul.
"""

from __future__ import annotations

from harness.theory.config import TransformerConfig
from harness.theory.units import ceil_div


def layer_matmul_params_per_rank(cfg: TransformerConfig, tp: int, layer: int,
                                 copied_experts: bool = True) -> tuple[int, int]:
    """(weight matrices, linear-layer biases) of layer `layer` held by one tensor-parallel rank
    that autocast copies to 16 bits. `copied_experts=False` leaves the routed experts out: their
    grouped GEMMs (Hugging Face's default) are no autocast op and run on the fp32 parameters."""
    h = cfg.hidden_size
    projections, output = cfg.attention_projection_weights()
    if cfg.is_moe_layer(layer):
        assert cfg.moe is not None  # is_moe_layer says so
        moe = cfg.moe
        routed = [moe.expert_ffn_hidden_size] * moe.num_experts if copied_experts else []
        widths = routed + [moe.shared_width] * moe.num_shared_experts
        router = moe.router_params(h) + moe.shared_gate_params(h)  # replicated
    else:
        widths, router = [cfg.ffn_size], 0
    input_matrices = 2 if cfg.gated_mlp else 1
    mlp_weights = sum((input_matrices + 1) * h * f for f in widths)
    weights = (projections + output + mlp_weights) // tp + router
    if cfg.mla is not None:
        input_biases = sum(cfg.mla.down_projection_widths())
    else:
        input_biases = cfg.query_width + 2 * cfg.kv_hidden_size
    split_biases = (input_biases if cfg.qkv_bias else 0) + (
        sum(input_matrices * f for f in widths) if cfg.bias else 0)
    # Row-parallel biases (attention output, every down projection) are replicated, as in
    # params_per_rank.
    replicated_biases = h * (1 + len(widths)) if cfg.bias else 0
    return weights, split_biases // tp + replicated_biases


def matmul_params_per_rank(cfg: TransformerConfig, tp: int, pp: int,
                           copied_experts: bool = True) -> tuple[int, int, int, int]:
    """(weight matrices of the first stage's layers, their linear-layer biases, weight matrix
    of the output layer, weight matrices of the largest single layer) held by one rank of the
    first pipeline stage: the parameters autocast copies to 16 bits (`copied_experts` as in
    `layer_matmul_params_per_rank`)."""
    weights = biases = largest = 0
    for layer in range(cfg.num_layers // pp):
        layer_weights, layer_biases = layer_matmul_params_per_rank(cfg, tp, layer,
                                                                   copied_experts)
        weights, biases = weights + layer_weights, biases + layer_biases
        largest = max(largest, layer_weights)
    output = ceil_div(cfg.vocab_size, tp) * cfg.hidden_size if pp == 1 else 0
    return weights, biases, output, largest
