"""The formulas against the model they describe: for random architectures, the classic block
and its variants (explicit head_dim, query/key norms, norm placements, parallel blocks, output
biases, position offsets, sliding windows), the module that `harness.model.build_model` creates
holds exactly `num_params` parameters, and torch's FlopCounterMode sees exactly the hardware
FLOPs of one training step. Experts and latent attention, which it does not build, are refused.

Built on the meta device (no memory, no compute), so they run on any machine.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from harness.model import build_model, lm_loss, random_batch
from harness.theory.config import TransformerConfig
from harness.theory.flops import train_flops
from harness.theory.params import num_params, param_breakdown
from perf_tests.strategies import transformer_configs, variant_configs, workloads

# Building and differentiating even a tiny model on meta costs ~0.1-0.2 s of dispatch: keep the
# counted property to a handful of examples so the suite stays fast on 2 cores.
FLOP_COUNTER_EXAMPLES = 15


def _buildable(cfg: TransformerConfig, seq_len: int = 1) -> bool:
    """RoPE rotates channel pairs (even head_dim); learned positions stop at their table; a
    sliding window bounds the sequence the model runs (beyond it, it refuses)."""
    even_rope = cfg.position != "rope" or cfg.head_dim % 2 == 0
    within_positions = cfg.position != "learned" or seq_len <= cfg.max_position_embeddings
    within_window = cfg.sliding_window is None or seq_len <= cfg.sliding_window
    return even_rope and within_positions and within_window


def _dense(cfg: TransformerConfig) -> TransformerConfig:
    """`cfg` without experts and latent attention, the variants build_model refuses."""
    return cfg.replace(moe=None, mla=None)


@given(transformer_configs(max_layers=4, max_hidden=512))
def test_built_model_holds_exactly_the_counted_parameters(cfg):
    assume(_buildable(cfg))
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == num_params(cfg) == \
        sum(param_breakdown(cfg).values())


@given(variant_configs(max_layers=4, max_hidden=256).map(_dense))
def test_built_variant_holds_exactly_the_counted_parameters(cfg):
    assume(_buildable(cfg))
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == num_params(cfg)


@given(variant_configs(max_layers=2, max_hidden=64))
def test_experts_and_latent_attention_are_refused_naming_the_field(cfg):
    assume(cfg.moe is not None or cfg.mla is not None)
    field = "moe" if cfg.moe is not None else "mla"
    with pytest.raises(ValueError, match=f"{field}=.*AutoModelForCausalLM.from_config"):
        build_model(cfg, device="meta")


@settings(max_examples=FLOP_COUNTER_EXAMPLES)
@given(transformer_configs(max_layers=2, max_hidden=256)
       | variant_configs(max_layers=2, max_hidden=128).map(_dense),
       workloads(max_batch=3, max_seq=32), st.booleans())
def test_flop_counter_sees_exactly_the_hardware_flops_of_a_training_step(cfg, workload,
                                                                         checkpoint):
    # On meta, SDPA takes its math path: plain bmm ops, backward = 2 x forward, no causal
    # discount, and activation checkpointing re-runs every block: full recompute.
    assume(_buildable(cfg, workload[1]))
    model = build_model(cfg, device="meta", checkpoint_activations=checkpoint)
    inputs, targets = random_batch(cfg, *workload, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        lm_loss(model(inputs), targets).backward()
    recompute = "full" if checkpoint else "none"
    assert counter.get_total_flops() == train_flops(cfg, *workload, recompute).hardware
