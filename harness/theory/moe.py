"""Mixture of experts: the `MoE` part of a `TransformerConfig` (Mixtral, Qwen-MoE, DeepSeek).

A MoE layer replaces the dense MLP with a router (a bias-free hidden_size x num_experts matrix),
`num_experts` routed experts of width `expert_ffn_hidden_size`, of which each token uses
`top_k`, and optionally `num_shared_experts` experts every token passes through (DeepSeek; one
of width `shared_ffn_hidden_size` in Qwen-MoE, whose output a sigmoid gate of hidden_size x 1
scales: `shared_expert_gate`). Experts have the MLP kind (gated or not) and the biases of the
dense MLP of the same config. `dense_layers` lists the layers that keep a dense MLP of
`ffn_hidden_size` (DeepSeek's `first_k_dense_replace` leading layers, Qwen's `mlp_only_layers`
or every layer off its `decoder_sparse_step`).

Total parameters count every expert; active parameters (what one token's forward multiplies by)
count the router, the shared experts and `top_k` routed experts, as torchtitan's
`get_moe_model_nparams_and_flops` and Megatron-LM's `num_floating_point_operations` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.checks import require_bool, require_non_negative_int, require_positive_int


@dataclass(frozen=True)
class MoE:
    """Routed (and shared) experts replacing the dense MLP of every layer not in `dense_layers`.

    Which layers are dense is checked against the layer count by `TransformerConfig`.
    """

    num_experts: int
    top_k: int
    expert_ffn_hidden_size: int
    num_shared_experts: int = 0
    shared_ffn_hidden_size: int | None = None
    shared_expert_gate: bool = False
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require_positive_int("MoE.num_experts", self.num_experts)
        require_positive_int("MoE.top_k", self.top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"MoE.top_k={self.top_k} exceeds MoE.num_experts="
                             f"{self.num_experts}; a token is routed to at most every expert")
        require_positive_int("MoE.expert_ffn_hidden_size", self.expert_ffn_hidden_size)
        require_non_negative_int("MoE.num_shared_experts", self.num_shared_experts)
        if self.shared_ffn_hidden_size is None:
            object.__setattr__(self, "shared_ffn_hidden_size", self.expert_ffn_hidden_size)
        require_positive_int("MoE.shared_ffn_hidden_size", self.shared_ffn_hidden_size)
        require_bool("MoE.shared_expert_gate", self.shared_expert_gate)
        if self.shared_expert_gate and not self.num_shared_experts:
            raise ValueError("MoE.shared_expert_gate=True gates the shared experts' output, but "
                             "num_shared_experts=0; give num_shared_experts >= 1 or no gate")
        layers = self.dense_layers
        if isinstance(layers, list):
            layers = tuple(layers)
            object.__setattr__(self, "dense_layers", layers)
        if not isinstance(layers, tuple) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"MoE.dense_layers must be a tuple of layer indices (integers >= 0), "
                             f"got {layers!r}")
        if list(layers) != sorted(set(layers)):
            raise ValueError(f"MoE.dense_layers must list each layer once, in increasing order, "
                             f"got {layers!r}")

    @property
    def shared_width(self) -> int:
        """Feed-forward width of each shared expert (never None after validation)."""
        assert self.shared_ffn_hidden_size is not None  # set in __post_init__
        return self.shared_ffn_hidden_size

    def router_params(self, hidden_size: int) -> int:
        """The router: a hidden_size x num_experts matrix without bias."""
        return hidden_size * self.num_experts

    def shared_gate_params(self, hidden_size: int) -> int:
        """Qwen-MoE's sigmoid gate on the shared expert: a hidden_size x 1 matrix, no bias."""
        return hidden_size if self.shared_expert_gate else 0
