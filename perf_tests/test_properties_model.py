"""The formulas against the model they describe: for random architectures, the module that
`harness.model.build_model` creates holds exactly `num_params` parameters, and torch's
FlopCounterMode sees exactly the hardware FLOPs of one training step.

Built on the meta device (no memory, no compute), so they run on any machine.
"""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from harness.model import build_model, lm_loss, random_batch
from harness.theory.config import TransformerConfig
from harness.theory.flops import train_flops
from harness.theory.params import num_params, param_breakdown
from perf_tests.strategies import transformer_configs, workloads

# Building and differentiating even a tiny model on meta costs ~0.1-0.2 s of dispatch: keep the
# counted property to a handful of examples so the suite stays fast on 2 cores.
FLOP_COUNTER_EXAMPLES = 15


def _buildable(cfg: TransformerConfig, seq_len: int = 1) -> bool:
    """RoPE rotates channel pairs (even head_dim); learned positions stop at their table."""
    even_rope = cfg.position != "rope" or cfg.head_dim % 2 == 0
    within_positions = cfg.position != "learned" or seq_len <= cfg.max_position_embeddings
    return even_rope and within_positions


@given(transformer_configs(max_layers=4, max_hidden=512))
def test_built_model_holds_exactly_the_counted_parameters(cfg):
    assume(_buildable(cfg))
    model = build_model(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == num_params(cfg) == \
        sum(param_breakdown(cfg).values())


@settings(max_examples=FLOP_COUNTER_EXAMPLES)
@given(transformer_configs(max_layers=2, max_hidden=256), workloads(max_batch=3, max_seq=32),
       st.booleans())
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
