"""The training memory estimate of Hugging Face transformers' Llama-family blocks
(`training_memory(..., implementation="huggingface")`) against what the models transformers
builds save for backward and hold during a step, on the CPU under bf16 autocast.

Tiny models of the GPU suite's workloads (harness.workloads.real_models: Llama-3 with GQA,
Qwen3 with wider heads and query/key norms, a Mixtral MoE) and of Qwen2 (biases on Q, K, V) and
Mistral (a sliding window no shorter than the sequence), built from their config settings.
The Python RMSNorm, RoPE tables, query/key norms and grouped-GEMM experts run the same ops on
the CPU as on a GPU; SDPA's CPU flash kernel saves what CUDA's does (query, key, value, output,
log-sum-exp; tests/test_memory.py reads both kernels' saved fields).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.measure.train_step import model_output
from harness.model import lm_loss
from harness.testing import LiveStorages, saved_activation_bytes
from harness.theory.config import TransformerConfig
from harness.theory.memory.autocast import (
    IMPLEMENTATIONS,
    autocast_layer_activation_bytes,
    autocast_step_phases,
)
from harness.theory.memory.copies import layer_matmul_params_per_rank
from harness.theory.memory.huggingface import huggingface_layer_activation_bytes
from harness.theory.memory.states import MODEL_STATE_PARTS
from harness.theory.memory.training import training_memory, training_memory_groups
from harness.theory.zoo import get_model
from harness.workloads.real_models import HF_WORKLOADS, HFWorkload

pytest.importorskip("transformers", reason="the Hugging Face models need transformers")

# Small enough to build in milliseconds, with the parts of the real models: GQA 2:1, Qwen3's
# explicit head_dim (twice hidden/heads), Mixtral's 8 experts of which 2 per token.
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 128}
SETTINGS: dict[str, dict[str, Any]] = {
    **{name: dict(workload.settings) for name, workload in HF_WORKLOADS.items()},
    "qwen2_qkv_bias": {"model_type": "qwen2", "hidden_act": "silu",
                       "tie_word_embeddings": False, "max_position_embeddings": 256},
    "mistral_window": {"model_type": "mistral", "hidden_act": "silu", "sliding_window": 64,
                       "max_position_embeddings": 256},
}


def tiny(name: str, layers: int, batch: int = 2, seq: int = 16, **overrides: Any) -> HFWorkload:
    """The model `name` at tiny sizes with `layers` layers (head_dim 32 where it sets one)."""
    settings = SETTINGS[name]
    sizes = dict(TINY, **({"head_dim": 32} if "head_dim" in settings else {}), **overrides)
    return HFWorkload(name=f"tiny-{name}",
                      settings={**settings, **sizes, "num_hidden_layers": layers},
                      batch_size=batch, seq_len=seq)


def build(workload: HFWorkload, recompute: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = workload.build("cpu")
    if recompute == "full":
        model.activation_checkpointing_enable()  # type: ignore[operator]
    return model


def tokens(workload: HFWorkload, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (workload.batch_size, workload.seq_len + 1),
                        generator=generator)
    return ids[:, :-1], ids[:, 1:]


def saved_bytes(workload: HFWorkload, recompute: str = "none", flash: bool = True,
                hf_loss: bool = False) -> int:
    """Bytes autograd saves in one forward and loss under CPU bf16 autocast: floating-point
    storages with a dimension, each counted once, the fp32 parameters excluded (their 16-bit
    copies are counted). `hf_loss` lets transformers compute the loss from labels."""
    model = build(workload, recompute)
    inputs, targets = tokens(workload, workload.config().vocab_size)

    def forward_and_loss() -> torch.Tensor:
        if hf_loss:
            return model(input_ids=inputs, labels=inputs).loss
        return lm_loss(model_output(model, inputs), targets)

    return saved_activation_bytes(model, forward_and_loss, flash_attention=flash)


@pytest.mark.parametrize("flash", [True, False], ids=["flash", "math"])
@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_layer_and_the_whole_model_save_what_the_estimate_says(
        name: str, recompute: str, flash: bool) -> None:
    one_layer = saved_bytes(tiny(name, 1), recompute, flash)
    workload = tiny(name, 2)
    two_layers = saved_bytes(workload, recompute, flash)
    cfg = workload.config()
    b, s = workload.batch_size, workload.seq_len

    # One layer: its activations plus, without recomputation, the bf16 copies of its weight
    # matrices (not the experts': grouped GEMMs run on the fp32 parameters).
    layer = huggingface_layer_activation_bytes(cfg, b, s, recompute=recompute,
                                               flash_attention=flash)
    matrices, _ = layer_matmul_params_per_rank(cfg, 1, 0, copied_experts=False)
    copies = 0 if recompute == "full" else 2 * matrices
    assert two_layers - one_layer == layer.total + copies

    # The whole step at the start of backward, less what is no saved tensor: model states, the
    # gradients of the log-probabilities and, with checkpointed layers, the RoPE tables they
    # receive as keyword arguments (alive all the same).
    phase = autocast_step_phases(cfg, b, s, recompute=recompute, flash_attention=flash,
                                 dropout=False, implementation="huggingface")["loss_backward"]
    not_saved = {*MODEL_STATE_PARTS, "logits_grad_fp32",
                 *(("position_tables",) if recompute == "full" else ())}
    assert two_layers == sum(v for k, v in phase.parts.items() if k not in not_saved)


def test_transformers_own_loss_saves_what_lm_loss_saves() -> None:
    # ForCausalLMLoss upcasts the bf16 logits to fp32 and shifts the labels, not the logits: it
    # saves the same fp32 log-probabilities as harness.model.lm_loss.
    workload = tiny("llama3_gqa", 1)
    assert saved_bytes(workload, hf_loss=True) == saved_bytes(workload)


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("name", list(HF_WORKLOADS))
def test_live_memory_at_the_loss_and_the_optimizer_step_is_the_estimate(
        name: str, recompute: str) -> None:
    # A steady-state step as the GPU suite takes it: zero_grad(set_to_none=True), forward and
    # lm_loss under autocast, backward, fused AdamW.
    workload = tiny(name, 2, batch=4, seq=64, vocab_size=512)
    model = build(workload, recompute)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    inputs, targets = tokens(workload, 512)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(model_output(model, inputs), targets)
        loss.backward()
        optimizer.step()

    step()  # the first step creates AdamW's states
    live = LiveStorages()
    for parameter in model.parameters():
        assert parameter.grad is not None
        for tensor in (parameter, parameter.grad, *optimizer.state[parameter].values()):
            live.hold(tensor)
    with live:
        step()
    phases = autocast_step_phases(workload.config(), 4, 64, recompute=recompute, dropout=False,
                                  implementation="huggingface")
    assert live.after("aten._log_softmax.default") == phases["forward_end"].total
    assert live.after("aten._log_softmax_backward_data.default") == \
        phases["loss_backward"].total
    end = phases["backward_end"]
    assert live.after("aten._fused_adamw_.default") == \
        end.total - end.parts["backward_working_set"]


def test_a_llama_layer_adds_norm_outputs_and_keeps_keys_and_values_narrow() -> None:
    cfg = HF_WORKLOADS["llama3_gqa"].config()
    b, s = 2, 2048
    sb, h, kv = b * s, cfg.hidden_size, cfg.kv_hidden_size
    hf = huggingface_layer_activation_bytes(cfg, b, s).parts
    harness = autocast_layer_activation_bytes(cfg, b, s, dropout=False).parts
    assert hf["attention_norm_output"] == hf["mlp_norm_output"] == 4 * sb * h
    assert hf["key"] == hf["value"] == 2 * sb * kv  # GQA 4:1 through enable_gqa
    assert harness["key"] == harness["value"] == 2 * sb * h  # repeat_interleave'd
    assert "rotary_tables" not in hf  # one fp32 pair per step, "position_tables"
    difference = sum(hf.values()) - sum(harness.values())
    assert difference == 8 * sb * h - 2 * 2 * sb * (h - kv) - harness["rotary_tables"]


def test_qwen3_query_key_norms_keep_an_fp32_copy_and_a_16_bit_output() -> None:
    cfg = HF_WORKLOADS["qwen3_head_dim"].config()
    b, s = 4, 1024
    parts = huggingface_layer_activation_bytes(cfg, b, s).parts
    normed = cfg.query_width + cfg.kv_hidden_size
    assert parts["qk_norm_inputs"] == 4 * b * s * normed
    assert parts["qk_norm_outputs"] == 2 * b * s * normed
    assert parts["qk_norm_statistics"] == 4 * b * s * (cfg.num_heads + cfg.kv_heads)


def test_mixtral_experts_stay_fp32_and_get_no_weight_copies() -> None:
    cfg = HF_WORKLOADS["mixtral_moe"].config()
    assert cfg.moe is not None
    b, s, k = 4, 1024, cfg.moe.top_k
    parts = huggingface_layer_activation_bytes(cfg, b, s).parts
    assert parts["expert_input"] == parts["expert_output"] == 4 * k * b * s * cfg.hidden_size
    assert parts["down_projection_input"] == 4 * k * b * s * cfg.moe.expert_ffn_hidden_size
    copied, _ = layer_matmul_params_per_rank(cfg, 1, 0, copied_experts=False)
    everything, _ = layer_matmul_params_per_rank(cfg, 1, 0)
    assert everything - copied == 3 * cfg.moe.num_experts * cfg.hidden_size * \
        cfg.moe.expert_ffn_hidden_size


@pytest.mark.parametrize("name", list(HF_WORKLOADS))
def test_the_gpu_workloads_have_a_huggingface_estimate_with_listed_parts(name: str) -> None:
    workload = HF_WORKLOADS[name]
    shape = (workload.config(), workload.batch_size, workload.seq_len)
    hf = training_memory(*shape, precision="bf16-autocast", dropout=False,
                         implementation="huggingface")
    harness = training_memory(*shape, precision="bf16-autocast", dropout=False)
    # At these sizes the logits dominate: the peak is the start of backward, which the CPU
    # steps above reproduce to the byte.
    assert hf.phase == "loss_backward"
    assert hf.implementation is not None and "Hugging Face" in hf.implementation
    assert harness.implementation is not None and "harness.model" in harness.implementation
    assert hf.parts["final_norm_output"] == 4 * workload.tokens * shape[0].hidden_size
    groups = training_memory_groups(hf)
    assert sum(groups.values()) == hf.total
    assert groups["logits_and_loss"] > 0 and groups["activations"] > 0
    # The fp32 norm outputs (and, for Qwen3, query/key norms; for Mixtral, fp32 experts) cost
    # more than narrow keys and values save.
    assert hf.total > harness.total


def test_the_default_implementation_is_harness_models() -> None:
    cfg = get_model("llama-2-7b")
    default = training_memory(cfg, 1, 4096, precision="bf16-autocast")
    assert default == training_memory(cfg, 1, 4096, precision="bf16-autocast",
                                      implementation="harness")
    assert training_memory(cfg, 1, 4096).implementation == \
        "Megatron-LM's layers (Korthikanti et al. 2022)"
    assert IMPLEMENTATIONS == ("harness", "huggingface")


@pytest.mark.parametrize(("cfg", "kwargs", "message"), [
    (get_model("llama-2-7b"), {"precision": "bf16-mixed"}, "use precision='bf16-autocast'"),
    (get_model("llama-2-7b"), {"implementation": "hf"}, "implementation must be one of"),
    (get_model("llama-2-7b"), {"tp": 2}, "tensor, pipeline or sequence parallelism"),
    (get_model("llama-2-7b"), {"recompute": "selective"}, "transformers recomputes whole layers"),
    (get_model("gpt2"), {}, "does not model 'gpt2''s norm='layernorm'"),
    (get_model("mistral-7b"), {"seq_len": 8192}, "sliding window of 4096 tokens"),
])
def test_blocks_the_huggingface_estimate_does_not_model_are_refused_by_name(
        cfg: TransformerConfig, kwargs: dict[str, Any], message: str) -> None:
    arguments = {"batch_size": 1, "seq_len": 1024, "precision": "bf16-autocast",
                 "implementation": "huggingface", **kwargs}
    with pytest.raises(ValueError, match=message):
        training_memory(cfg, **arguments)


def test_training_memory_groups_need_a_breakdown() -> None:
    with pytest.raises(ValueError, match="memory must be a MemoryBreakdown"):
        training_memory_groups(123)  # type: ignore[arg-type]
