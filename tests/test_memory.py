"""Model-state, activation, KV-cache and whole-step memory of `harness.theory.memory`."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.model import build_model, lm_loss, random_batch
from harness.testing import LiveStorages
from harness.testing import saved_activation_bytes as saved_bytes_of_step
from harness.theory.config import TransformerConfig
from harness.theory.memory.activations import activation_bytes, layer_activation_bytes
from harness.theory.memory.autocast import (
    AUTOCAST_PHASES,
    autocast_layer_activation_bytes,
    autocast_step_phases,
)
from harness.theory.memory.breakdown import (
    CUDA_CONTEXT_BYTES_RANGE,
    DISTRIBUTED_BUFFER_BYTES_RANGE,
    MemoryBreakdown,
    fits,
)
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.states import (
    AUTOCAST_PRECISIONS,
    PRECISIONS,
    TRAINING_PRECISIONS,
    bytes_per_param,
    model_state_bytes,
)
from harness.theory.memory.training import training_memory
from harness.theory.mla import MLA
from harness.theory.moe import MoE
from harness.theory.parallel import params_per_rank
from harness.theory.units import GIB
from harness.theory.zoo import get_model
from harness.workloads.models import LLAMA_STYLE
from harness.workloads.training import TRAINING_WORKLOADS
from perf_tests.strategies import (
    optimizers,
    parallel_layouts,
    recompute_modes,
    transformer_configs,
    zero_stages,
)


def gpt(layers: int = 4, hidden: int = 1024, heads: int = 16,
        vocab: int = 51200) -> TransformerConfig:
    """The GPT block Korthikanti et al. analyse: MHA, GELU MLP of 4h."""
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                             vocab_size=vocab, max_position_embeddings=8192)


# --- model states ---------------------------------------------------------------------------

def test_adamw_mixed_precision_costs_20_bytes_per_parameter() -> None:
    # Source 003: (2+4) weights + (2+4) gradients + (4+4) AdamW moments = 20 bytes/param.
    for precision in ("bf16-mixed", "fp16-mixed"):
        per_param = bytes_per_param(precision, "adamw")
        assert (per_param.weights, per_param.master_weights, per_param.gradients,
                per_param.optimizer_states) == (2, 4, 6, 8)
        assert per_param.total == 20


def test_seven_billion_parameters_need_140_gb_of_adamw_states() -> None:
    assert model_state_bytes(7_000_000_000, "bf16-mixed", "adamw").total == 140 * 10**9


@pytest.mark.parametrize(("precision", "optimizer", "total"), [
    ("fp32", "adamw", 4 + 4 + 8),
    ("bf16", "adamw", 8),              # source 001: pure bf16 AnyPrecisionAdamW, 8 bytes/param
    ("bf16-mixed", "adamw-8bit", 2 + 4 + 6 + 2),
    ("bf16-mixed", "sgd", 2 + 4 + 6),
    ("bf16-mixed", "sgd-momentum", 2 + 4 + 6 + 4),
    ("bf16-mixed", "lion", 2 + 4 + 6 + 4),
    ("bf16-mixed", "adafactor", 2 + 4 + 6 + 4),
    ("bf16", "sgd-momentum", 2 + 2 + 2),
    ("bf16", "adamw-8bit", 2 + 2 + 2),
    ("fp32", "sgd", 8),
])
def test_bytes_per_param_by_precision_and_optimizer(precision: str, optimizer: str,
                                                    total: int) -> None:
    assert bytes_per_param(precision, optimizer).total == total


def test_unknown_precision_and_optimizer_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of 'fp32', 'bf16-mixed'.*"
                                         r"got 'fp8'"):
        bytes_per_param("fp8", "adamw")
    with pytest.raises(ValueError, match=r"optimizer must be one of .*'lion'; got 'adam'"):
        bytes_per_param("bf16-mixed", "adam")


def test_zero_stages_shard_optimizer_then_gradients_then_weights() -> None:
    n, dp = 8_000_000_000, 8
    stage = [model_state_bytes(n, "bf16-mixed", "adamw", zero_stage=s, dp=dp).parts
             for s in range(4)]
    assert stage[0] == {"weights": 2 * n, "master_weights": 4 * n, "gradients": 6 * n,
                        "optimizer_states": 8 * n}
    assert stage[1] == {"weights": 2 * n, "master_weights": 4 * n // dp, "gradients": 6 * n,
                        "optimizer_states": 8 * n // dp}
    assert stage[2]["gradients"] == 6 * n // dp
    assert stage[2]["weights"] == 2 * n
    assert sum(stage[3].values()) == 20 * n // dp


def test_zero_shards_are_padded_to_equal_size() -> None:
    parts = model_state_bytes(10, "fp32", "adamw", zero_stage=3, dp=4).parts
    assert parts == {"weights": 3 * 4, "master_weights": 0, "gradients": 3 * 4,
                     "optimizer_states": 3 * 8}


def test_tensor_and_pipeline_parallelism_split_states_evenly() -> None:
    assert model_state_bytes(800, "bf16-mixed", "adamw", tp=2, pp=4).total == 100 * 20


def test_zero_stage_must_be_0_to_3() -> None:
    with pytest.raises(ValueError, match=r"zero_stage must be one of 0, 1, 2, 3; got 4"):
        model_state_bytes(10, "bf16-mixed", "adamw", zero_stage=4)


# --- activations: Korthikanti et al. 2022 ---------------------------------------------------

@pytest.mark.parametrize(("s", "b", "h", "a"), [(2048, 1, 12288, 96), (1024, 4, 1024, 16),
                                                (512, 3, 768, 12)])
def test_per_term_breakdown_is_34sbh_plus_5as2b_for_the_gpt_block(s: int, b: int, h: int,
                                                                   a: int) -> None:
    cfg = gpt(hidden=h, heads=a)
    layer = layer_activation_bytes(cfg, b, s, flash_attention=False)
    assert layer.total == 34 * s * b * h + 5 * a * s * s * b


def test_gpt3_layer_activations_match_the_paper() -> None:
    # GPT-3 175B (h=12288, a=96, s=2048): 5as/h = 80, so one layer stores sbh(34 + 80) bytes.
    layer = layer_activation_bytes(gpt(hidden=12288, heads=96), 1, 2048, flash_attention=False)
    assert layer.total == 2048 * 12288 * 114 == 2_868_903_936


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_parallel_variants_equal_korthikanti_table_2(t: int) -> None:
    s, b, h, a = 2048, 2, 4096, 32
    cfg = gpt(hidden=h, heads=a)
    sbh, quadratic = s * b * h, 5 * a * s * s * b

    def layer(**kwargs: object) -> int:
        return layer_activation_bytes(cfg, b, s, tp=t, flash_attention=False, **kwargs).total

    assert layer() == 10 * sbh + 24 * sbh // t + quadratic // t
    assert layer(sp=True) == (34 * sbh + quadratic) // t
    assert layer(recompute="selective") == 10 * sbh + 24 * sbh // t
    assert layer(sp=True, recompute="selective") == 34 * sbh // t
    assert layer(recompute="full") == 2 * sbh
    assert layer(sp=True, recompute="full") == 2 * sbh // t


def test_flash_attention_drops_the_quadratic_terms_and_keeps_the_log_sum_exp() -> None:
    s, b, h, a = 4096, 1, 2048, 16
    layer = layer_activation_bytes(gpt(hidden=h, heads=a), b, s, flash_attention=True)
    assert layer.total == 34 * s * b * h + 4 * a * s * b
    assert layer.parts["softmax_output"] == 0
    assert layer.parts["softmax_stats"] == 4 * a * s * b


def test_without_dropout_masks_vanish_and_softmax_output_is_stored_once() -> None:
    s, b, h, a = 1024, 2, 1024, 16
    layer = layer_activation_bytes(gpt(hidden=h, heads=a), b, s, flash_attention=False,
                                   dropout=False)
    assert layer.total == 32 * s * b * h + 2 * a * s * s * b


def test_gqa_keys_and_values_are_narrow_with_flash_and_expanded_without() -> None:
    cfg = get_model("llama-2-70b")  # 64 heads, 8 KV heads, head_dim 128
    s, b = 1024, 1
    flash = layer_activation_bytes(cfg, b, s, flash_attention=True).parts
    unfused = layer_activation_bytes(cfg, b, s, flash_attention=False).parts
    assert flash["key"] == flash["value"] == 2 * s * b * 8 * 128
    assert unfused["key"] == unfused["value"] == 2 * s * b * 8192


def test_swiglu_saves_gate_and_up_projection_of_width_ffn() -> None:
    cfg = get_model("llama-2-7b")
    s, b, f = 2048, 1, 11008
    parts = layer_activation_bytes(cfg, b, s).parts
    assert parts["activation_input"] == 2 * (2 * s * b * f)
    assert parts["down_projection_input"] == 2 * s * b * f


def saved_activation_bytes(layer: Callable[[], torch.Tensor],
                           parameters: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes autograd saves for backward, of which norm statistics): each storage counted once,
    parameters excluded. Norm statistics are the per-token mean/rstd tensors Korthikanti et al.
    neglect (shape [..., 1])."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}
    saved: dict[int, tuple[int, tuple[int, ...]]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer()
    statistics = sum(n for n, shape in saved.values() if shape[-1] == 1)
    return sum(n for n, _ in saved.values()), statistics


def test_gpt_block_terms_match_what_autograd_saves() -> None:
    s, b, h, a = 32, 2, 128, 4
    d, e = h // a, torch.bfloat16
    parameters = [torch.randn(*shape, dtype=e, requires_grad=True)
                  for shape in ((h,), (h,), (3 * h, h), (h, h), (4 * h, h), (h, 4 * h))]
    ln1, ln2, w_qkv, w_out, w_up, w_down = parameters
    x = torch.randn(s, b, h, dtype=e, requires_grad=True)

    def layer() -> torch.Tensor:  # Megatron's block, unfused attention, no dropout
        q, k, v = (t.reshape(s, b * a, d).transpose(0, 1)
                   for t in F.linear(F.layer_norm(x, (h,), ln1), w_qkv).split(h, dim=-1))
        probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * d**-0.5, dim=-1)
        x2 = x + F.linear(torch.bmm(probs, v).transpose(0, 1).reshape(s, b, h), w_out)
        return x2 + F.linear(F.gelu(F.linear(F.layer_norm(x2, (h,), ln2), w_up)), w_down)

    total, statistics = saved_activation_bytes(layer, parameters)
    cfg = gpt(hidden=h, heads=a)
    expected = layer_activation_bytes(cfg, b, s, flash_attention=False, dropout=False)
    assert total - statistics == expected.total == 32 * s * b * h + 2 * a * s * s * b


def test_gqa_and_eager_swiglu_terms_match_what_autograd_saves() -> None:
    s, b, h, a, kv_heads, f = 32, 2, 128, 8, 2, 352
    d, e = h // a, torch.bfloat16
    parameters = [torch.randn(*shape, dtype=e, requires_grad=True)
                  for shape in ((h,), (h,), (h, h), (2 * kv_heads * d, h), (h, h), (f, h),
                                (f, h), (h, f))]
    ln1, ln2, w_q, w_kv, w_out, w_gate, w_up, w_down = parameters
    x = torch.randn(s, b, h, dtype=e, requires_grad=True)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.permute(1, 2, 0, 3).reshape(b * a, s, d)

    def layer() -> torch.Tensor:  # unfused attention expands K and V to every query head
        y = F.layer_norm(x, (h,), ln1)
        q = F.linear(y, w_q).reshape(s, b, a, d)
        k, v = (t.repeat_interleave(a // kv_heads, dim=2)
                for t in F.linear(y, w_kv).reshape(s, b, 2 * kv_heads, d).split(kv_heads, 2))
        probs = torch.softmax(torch.bmm(heads(q), heads(k).transpose(1, 2)) * d**-0.5, dim=-1)
        context = torch.bmm(probs, heads(v)).reshape(b, a, s, d).permute(2, 0, 1, 3)
        x2 = x + F.linear(context.reshape(s, b, h), w_out)
        z = F.layer_norm(x2, (h,), ln2)
        return x2 + F.linear(F.silu(F.linear(z, w_gate)) * F.linear(z, w_up), w_down)

    total, statistics = saved_activation_bytes(layer, parameters)
    cfg = TransformerConfig(num_layers=1, hidden_size=h, num_heads=a, num_kv_heads=kv_heads,
                            ffn_hidden_size=f, mlp="swiglu", vocab_size=64, bias=False)
    expected = layer_activation_bytes(cfg, b, s, flash_attention=False, dropout=False)
    # Eager SwiGLU also saves silu's output, one more f-wide tensor than a fused kernel.
    assert total - statistics == expected.total + 2 * s * b * f


def test_pipeline_first_stage_holds_all_layers_worth_and_no_logits() -> None:
    cfg = gpt(layers=8)
    one_stage = activation_bytes(cfg, 1, 1024).parts
    four_stages = activation_bytes(cfg, 1, 1024, pp=4).parts
    assert four_stages["layer_activations"] == one_stage["layer_activations"]
    assert four_stages["embedding_dropout_mask"] == 4 * one_stage["embedding_dropout_mask"]
    for part in ("final_norm_input", "output_layer_input", "logits", "logits_fp32",
                 "logits_grad_fp32"):
        assert four_stages[part] == 0
        assert one_stage[part] > 0


def test_logits_cost_compute_dtype_plus_fp32_copy_plus_fp32_gradient() -> None:
    cfg = gpt(vocab=50000)
    s, b = 1024, 2
    parts = activation_bytes(cfg, b, s, tp=2, sp=True).parts
    assert parts["logits"] == 2 * s * b * 25000
    assert parts["logits_fp32"] == parts["logits_grad_fp32"] == 4 * s * b * 25000
    assert parts["output_layer_input"] == 2 * s * b * 1024 // 2
    fp32 = activation_bytes(cfg, b, s, bytes_per_element=4).parts
    assert fp32["logits_fp32"] == 0  # already fp32: no copy


def test_full_recompute_adds_one_rebuilt_layer() -> None:
    cfg = gpt(layers=6)
    s, b = 1024, 1
    none = layer_activation_bytes(cfg, b, s).total
    full = activation_bytes(cfg, b, s, recompute="full").parts
    assert full["layer_activations"] == 6 * 2 * s * b * 1024
    assert full["recompute_working_set"] == none - 2 * s * b * 1024
    assert activation_bytes(cfg, b, s).parts["recompute_working_set"] == 0


def test_embedding_norm_is_stored_for_bloom() -> None:
    parts = activation_bytes(get_model("bloom-7b1"), 1, 2048).parts
    assert parts["embedding_norm_input"] == 2 * 2048 * 4096


def test_sequence_parallelism_needs_sequence_divisible_by_tp() -> None:
    with pytest.raises(ValueError, match=r"seq_len=1000 must be divisible by tp=16"):
        layer_activation_bytes(gpt(heads=16), 1, 1000, tp=16, sp=True)


def test_activation_arguments_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        activation_bytes(gpt(), 0, 128)
    with pytest.raises(ValueError, match=r"recompute must be one of 'none', 'selective', 'full'"):
        activation_bytes(gpt(), 1, 128, recompute="partial")
    with pytest.raises(ValueError, match="flash_attention must be True or False"):
        activation_bytes(gpt(), 1, 128, flash_attention=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tp=3 does not divide num_heads=16"):
        activation_bytes(gpt(), 1, 128, tp=3)
    with pytest.raises(ValueError, match="pp=3 does not divide num_layers=4"):
        activation_bytes(gpt(), 1, 128, pp=3)


# --- KV cache -------------------------------------------------------------------------------

def test_llama_2_7b_kv_cache_of_4096_tokens_is_2_gib() -> None:
    assert kv_cache_bytes(get_model("llama-2-7b"), 1, 4096) == 2 * 32 * 4096 * 4096 * 2 == 2 * GIB


def test_llama_2_70b_gqa_cache_is_8x_smaller_than_mha_would_be() -> None:
    gqa = get_model("llama-2-70b")
    mha = gqa.replace(num_kv_heads=64)
    assert kv_cache_bytes(mha, 1, 1) == 8 * kv_cache_bytes(gqa, 1, 1)
    assert kv_cache_bytes(gqa, 1, 1) == 2 * 80 * 8 * 128 * 2


def test_llama_2_13b_kv_cache_is_about_1_mb_per_token() -> None:
    # Source 003: "a 13B LLM uses about 1MB of memory per token at inference".
    assert kv_cache_bytes(get_model("llama-2-13b"), 1, 1) == 2 * 40 * 5120 * 2 == 819_200


def test_mistral_nemo_caches_its_128_channel_heads_160_kib_per_token() -> None:
    # 40 layers, 8 KV heads of head_dim 128 (not 5120 / 32 = 160): 160 KiB, not 200 KiB.
    nemo = get_model("llama-3-8b").replace(num_layers=40, hidden_size=5120, head_dim=128,
                                           vocab_size=131072)
    assert kv_cache_bytes(nemo, 1, 1) == 2 * 40 * 8 * 128 * 2 == 160 * 1024


def test_latent_attention_caches_the_compressed_latent_and_rotary_key() -> None:
    # DeepSeek-V2-Lite: 27 layers x (512 + 64) elements per token (DeepSeek-V2, table 1).
    mla = MLA(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    cfg = TransformerConfig(num_layers=27, hidden_size=2048, num_heads=16, vocab_size=102400,
                            mlp="swiglu", bias=False, norm="rmsnorm", position="rope", mla=mla)
    assert kv_cache_bytes(cfg, 1, 1) == 27 * 576 * 2
    assert kv_cache_bytes(cfg, 3, 1000) == 3 * 1000 * kv_cache_bytes(cfg, 1, 1)


def test_windowed_layers_cache_at_most_their_window() -> None:
    cfg = get_model("mistral-7b")  # every layer windowed at 4096 tokens
    per_token = kv_cache_bytes(cfg, 1, 1)
    assert kv_cache_bytes(cfg, 1, 32768) == 4096 * per_token
    # Gemma 2 style: half the layers global.
    mixed = cfg.replace(global_layers=tuple(range(1, 32, 2)))
    assert kv_cache_bytes(mixed, 1, 32768) == (16 * 4096 + 16 * 32768) * per_token // 32


def test_expert_layers_save_router_probabilities_dispatched_tokens_and_active_widths() -> None:
    moe = MoE(num_experts=8, top_k=2, expert_ffn_hidden_size=1024, num_shared_experts=1)
    cfg = get_model("llama-2-7b").replace(moe=moe, num_layers=2)
    s, b, h = 512, 1, 4096
    parts = layer_activation_bytes(cfg, b, s, dropout=False).parts
    assert parts["router_probs"] == 4 * s * b * 8
    assert parts["expert_input"] == 2 * s * b * h * 2
    assert parts["down_projection_input"] == 2 * s * b * (2 * 1024 + 1024)
    for precision in ("bf16-mixed", "bf16-autocast"):
        memory = training_memory(cfg, b, s, precision)
        assert memory.total == sum(memory.parts.values()) > 0


def test_a_parallel_block_saves_its_shared_input_once() -> None:
    cfg = get_model("gpt2")
    sequential = layer_activation_bytes(cfg, 1, 1024).parts
    neox = layer_activation_bytes(cfg.replace(parallel_residual=True), 1, 1024).parts
    phi = layer_activation_bytes(cfg.replace(parallel_residual=True, norm_placement="single"),
                                 1, 1024).parts
    assert neox["mlp_norm_input"] == 0 < sequential["mlp_norm_input"]
    assert phi["mlp_input"] == 0 < neox["mlp_input"]


# --- whole step -----------------------------------------------------------------------------

def test_training_memory_adds_states_of_held_parameters_and_activations() -> None:
    cfg = get_model("llama-2-7b")
    memory = training_memory(cfg, 1, 4096)
    n = cfg.num_params()
    assert memory.parts["weights"] == 2 * n
    assert memory.parts["master_weights"] == 4 * n
    assert memory.parts["gradients"] == 6 * n
    assert memory.parts["optimizer_states"] == 8 * n
    activations = activation_bytes(cfg, 1, 4096)
    assert memory.total == 20 * n + activations.total


def test_training_memory_shards_the_first_stage_parameters() -> None:
    cfg = get_model("llama-2-70b")
    memory = training_memory(cfg, 1, 4096, tp=8, pp=4, sp=True, zero_stage=1, dp=4)
    held = params_per_rank(cfg, tp=8, pp=4)
    assert memory.parts["weights"] == 2 * held
    assert memory.parts["optimizer_states"] == 8 * -(-held // 4)
    assert memory.parts["logits"] == 0


def test_fp32_training_stores_four_byte_activations_and_one_byte_masks() -> None:
    cfg = gpt()
    fp32_layer = layer_activation_bytes(cfg, 1, 512, flash_attention=False, bytes_per_element=4)
    bf16_layer = layer_activation_bytes(cfg, 1, 512, flash_attention=False)
    masks = sum(v for k, v in bf16_layer.parts.items() if k.endswith("mask"))
    assert fp32_layer.total == 2 * (bf16_layer.total - masks) + masks
    memory = training_memory(cfg, 1, 512, precision="fp32", flash_attention=False)
    assert memory.parts["layer_activations"] == 4 * fp32_layer.total


def test_inference_memory_of_llama_2_7b() -> None:
    cfg = get_model("llama-2-7b")
    memory = inference_memory(cfg, 1, 4096)
    assert memory.parts["weights"] == 2 * cfg.num_params()
    assert memory.parts["kv_cache"] == 2 * GIB
    # The widest point: SwiGLU's 3 intermediate tensors of 11008 plus residual and normed input.
    assert memory.parts["activations"] == 4096 * (2 * 4096 + 3 * 11008) * 2
    assert memory.parts["logits"] == 32000 * 4
    assert inference_memory(cfg, 1, 4096, bytes_per_param=0.5).parts["weights"] == \
        cfg.num_params() // 2


def test_inference_rejects_non_positive_bytes_per_param() -> None:
    with pytest.raises(ValueError, match="bytes_per_param must be a positive finite number, got 0"):
        inference_memory(get_model("gpt2"), 1, 128, bytes_per_param=0)


def test_fits_keeps_a_cuda_context_reserve() -> None:
    breakdown = MemoryBreakdown({"weights": 70 * GIB})
    assert fits(breakdown, 80 * GIB)
    assert not fits(breakdown, 71 * GIB)
    assert fits(breakdown, 71 * GIB, reserve_bytes=0)
    assert CUDA_CONTEXT_BYTES_RANGE[0] < CUDA_CONTEXT_BYTES_RANGE[1] == 2 * GIB
    assert DISTRIBUTED_BUFFER_BYTES_RANGE == (GIB, 2 * GIB)


def test_memory_breakdown_totals_and_serialises_its_parts() -> None:
    breakdown = MemoryBreakdown({"a": 1, "b": 2})
    assert breakdown.total == 3
    assert breakdown.to_dict() == {"total_bytes": 3, "parts": {"a": 1, "b": 2}}
    with pytest.raises(ValueError, match="part 'b' must be a non-negative integer"):
        MemoryBreakdown({"a": 1, "b": -2})


def test_a_training_estimate_names_the_implementation_it_models() -> None:
    cfg = get_model("llama-2-7b")
    autocast = training_memory(cfg, 1, 4096, precision="bf16-autocast")
    megatron = training_memory(cfg, 1, 4096, precision="bf16-mixed")
    assert autocast.implementation is not None and "harness.model" in autocast.implementation
    assert megatron.implementation == "Megatron-LM's layers (Korthikanti et al. 2022)"
    assert autocast.to_dict()["implementation"] == autocast.implementation
    with pytest.raises(ValueError, match="implementation must be a non-empty string"):
        MemoryBreakdown({"a": 1}, implementation=" ")


# --- eager PyTorch under torch.autocast -----------------------------------------------------

# Tiny configs of the families the suite trains, small enough to run a step in milliseconds on
# the CPU: GPT-style (LayerNorm with bias, GELU, learned positions, tied output layer),
# Llama-style (RMSNorm, SwiGLU, RoPE, grouped-query attention, untied, no biases), BLOOM-style
# (ALiBi, embedding norm; ReLU here to cover it) and a multi-query GeGLU model with Q/K/V biases.
TINY_GPT = TransformerConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=96,
                             max_position_embeddings=64, name="tiny-gpt")
TINY_LLAMA = TransformerConfig(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                               vocab_size=96, mlp="swiglu", ffn_hidden_size=160,
                               tied_embeddings=False, bias=False, norm="rmsnorm",
                               position="rope", max_position_embeddings=64, name="tiny-llama")
TINY_BLOOM = TransformerConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=96,
                               mlp="relu", position="alibi", embedding_norm=True,
                               max_position_embeddings=64, name="tiny-bloom")
TINY_MQA_GEGLU = TransformerConfig(num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=1,
                                   vocab_size=96, mlp="geglu", ffn_hidden_size=96, bias=False,
                                   qkv_bias=True, norm="rmsnorm", position="rope",
                                   max_position_embeddings=64, name="tiny-mqa-geglu")
TINY_CONFIGS = [TINY_GPT, TINY_LLAMA, TINY_BLOOM, TINY_MQA_GEGLU]
MODEL_STATES = ("weights", "master_weights", "gradients", "optimizer_states")


@pytest.mark.parametrize("precision", AUTOCAST_PRECISIONS)
def test_autocast_adamw_costs_16_bytes_per_parameter_plus_a_2_byte_weight_copy(
        precision: str) -> None:
    # fp32 weights are the master copy, fp32 gradients, two fp32 AdamW moments; the 16-bit copy
    # autocast makes of each matmul weight is not a state and stays out of the total.
    per_param = bytes_per_param(precision, "adamw")
    assert (per_param.weights, per_param.master_weights, per_param.gradients,
            per_param.optimizer_states, per_param.weight_copies) == (4, 0, 4, 8, 2)
    assert per_param.total == 16
    assert bytes_per_param(precision, "sgd").total == 8
    assert bytes_per_param(precision, "adamw-8bit").total == 4 + 4 + 2


def test_megatron_precisions_make_no_weight_copies() -> None:
    assert all(bytes_per_param(p, "adamw").weight_copies == 0 for p in PRECISIONS)
    assert TRAINING_PRECISIONS == PRECISIONS + AUTOCAST_PRECISIONS


def test_unknown_training_precision_lists_the_autocast_ones_too() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of 'fp32'.*'bf16-autocast', "
                                         r"'fp16-autocast'; got 'bf16-amp'"):
        training_memory(gpt(), 1, 128, precision="bf16-amp")
    with pytest.raises(ValueError, match=r"precision must be one of 'bf16-autocast', "
                                         r"'fp16-autocast'; got 'bf16-mixed'"):
        autocast_step_phases(gpt(), 1, 128, precision="bf16-mixed")


def test_autocast_training_memory_is_its_largest_phase_and_names_it() -> None:
    cfg = get_model("gpt2-medium")
    phases = autocast_step_phases(cfg, 8, 1024, recompute="none", dropout=False)
    assert list(phases) == list(AUTOCAST_PHASES)
    memory = training_memory(cfg, 8, 1024, precision="bf16-autocast", dropout=False)
    assert memory == max(phases.values(), key=lambda phase: phase.total)
    assert memory.phase == "loss_backward"
    assert memory.to_dict()["phase"] == "loss_backward"
    assert all(set(p.parts) == set(memory.parts) for p in phases.values())


def test_with_one_token_the_end_of_backward_peaks_at_16_bytes_per_parameter() -> None:
    cfg = get_model("llama-2-7b")  # untied: no second embedding gradient
    memory = training_memory(cfg, 1, 1, precision="bf16-autocast")
    assert memory.phase == "backward_end"
    assert memory.total == 16 * cfg.num_params()


def test_start_of_backward_holds_states_without_gradients_copies_activations_and_logits() -> None:
    cfg = get_model("llama-2-7b")
    s, b, v, n = 4096, 1, 32000, cfg.num_params()
    phases = autocast_step_phases(cfg, b, s, dropout=False)
    loss = phases["loss_backward"].parts
    assert (loss["weights"], loss["gradients"], loss["optimizer_states"]) == (4 * n, 0, 8 * n)
    # Every matmul weight is copied to bf16: all parameters but the norms and the untied input
    # embedding table.
    norms = (2 * cfg.num_layers + 1) * cfg.hidden_size
    assert loss["weight_copies"] == 2 * (n - norms - v * cfg.hidden_size)
    assert loss["logits"] == 0
    assert loss["logits_fp32"] == 4 * s * b * v
    assert loss["logits_grad_fp32"] == 8 * s * b * v
    forward = phases["forward_end"].parts
    assert forward["logits"] == 2 * s * b * v and forward["logits_fp32"] == 8 * s * b * v
    assert forward["layer_activations"] == loss["layer_activations"] == \
        32 * autocast_layer_activation_bytes(cfg, b, s, dropout=False).total


def test_full_recompute_keeps_fp32_block_inputs_and_one_rebuilt_layer() -> None:
    cfg = get_model("llama-2-7b")
    s, b = 4096, 1
    sbh = s * b * cfg.hidden_size
    none = autocast_layer_activation_bytes(cfg, b, s, dropout=False)
    full = autocast_layer_activation_bytes(cfg, b, s, recompute="full", dropout=False)
    assert full.total == full.parts["checkpoint_input"] == 4 * sbh
    phases = autocast_step_phases(cfg, b, s, recompute="full", dropout=False)
    assert phases["loss_backward"].parts["layer_activations"] == 32 * 4 * sbh
    assert phases["loss_backward"].parts["weight_copies"] == 2 * 32000 * cfg.hidden_size
    assert phases["layer_backward"].parts["recompute_working_set"] == none.total - 4 * sbh
    assert phases["loss_backward"].parts["position_tables"] == 2 * 4 * s * cfg.head_dim


def test_eager_llama_layer_terms_per_token() -> None:
    # LLaMA-style block under autocast, in bytes per token and hidden unit (e = 2): fp32 norm
    # inputs 4 + 4, Q/K/V and gate/up input copies 3e + 2e, Q, K, V expanded and the attention
    # output 4e, SwiGLU's four f-wide tensors 4e*f/h; plus the statistics, log-sum-exp and RoPE
    # copies that do not scale with h.
    cfg = get_model("llama-2-7b")
    s, b, h, a, f, d = 4096, 1, 4096, 32, 11008, 128
    layer = autocast_layer_activation_bytes(cfg, b, s, dropout=False)
    assert layer.total == (8 + 10 + 8) * s * b * h + 8 * s * b * f + 2 * 4 * s * b \
        + 4 * a * s * b + 4 * 2 * s * d


def test_gqa_saves_keys_and_values_expanded_to_every_head() -> None:
    gqa = get_model("llama-2-70b")
    mha = gqa.replace(num_kv_heads=gqa.num_heads)
    assert autocast_layer_activation_bytes(gqa, 1, 1024) == \
        autocast_layer_activation_bytes(mha, 1, 1024)


def test_math_attention_keeps_fp32_queries_keys_values_and_probabilities() -> None:
    cfg = gpt(hidden=1024, heads=16)
    s, b, a = 1024, 2, 16
    sbh, scores = s * b * 1024, a * s * s * b
    flash = autocast_layer_activation_bytes(cfg, b, s, dropout=False).parts
    math_kernel = autocast_layer_activation_bytes(cfg, b, s, flash_attention=False,
                                                  dropout=True).parts
    assert flash["query"] == 2 * sbh and math_kernel["query"] == 4 * sbh
    assert math_kernel["softmax_output"] == math_kernel["softmax_dropout_output"] == 4 * scores
    assert math_kernel["softmax_dropout_mask"] == scores
    assert flash["softmax_stats"] == 4 * a * s * b and math_kernel["softmax_stats"] == 0


def _saved_activation_storages(cfg: TransformerConfig, batch: int, seq: int, recompute: str,
                                flash_attention: bool) -> int:
    """Bytes autograd saves in one forward and loss of `harness.model` under CPU bf16 autocast:
    floating-point storages with at least one dimension, each counted once (views and shared
    tensors share a data pointer), the fp32 parameters excluded (they are model states, not
    activations; their bf16 copies are counted). Token ids, targets and the loss's scalar
    weight are not activations."""
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu", checkpoint_activations=recompute == "full")
    tokens, targets = random_batch(cfg, batch, seq)
    return saved_bytes_of_step(model, lambda: lm_loss(model(tokens), targets),
                               flash_attention=flash_attention)


def _cpu_rms_norm_extra(cfg: TransformerConfig, batch: int, seq: int, norms: int) -> int:
    """CPU difference: torch's CPU rms_norm is a composite that also saves its fp32 normalised
    output (4sbh per norm); CUDA's fused kernel saves only input and rstd (checked by
    test_cuda_kernels_save_what_the_eager_model_assumes)."""
    return norms * 4 * seq * batch * cfg.hidden_size if cfg.norm == "rmsnorm" else 0


@pytest.mark.parametrize("flash_attention", [True, False], ids=["flash", "math"])
@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("cfg", TINY_CONFIGS, ids=lambda cfg: cfg.name)
def test_autocast_terms_match_what_autograd_saves_for_harness_models(
        cfg: TransformerConfig, recompute: str, flash_attention: bool) -> None:
    batch, seq = 2, 16
    one_layer = _saved_activation_storages(cfg.replace(num_layers=1), batch, seq, recompute,
                                           flash_attention)
    two_layers = _saved_activation_storages(cfg, batch, seq, recompute, flash_attention)

    # One layer: its activations plus, without full recomputation, the bf16 copies of its
    # weight matrices (a matmul's backward needs no bias, so their copies are not saved).
    block = build_model(cfg, device="meta").blocks[0]
    matrices = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    layer = autocast_layer_activation_bytes(cfg, batch, seq, recompute=recompute,
                                            flash_attention=flash_attention, dropout=False)
    copies = 0 if recompute == "full" else 2 * matrices
    norms_per_layer = 0 if recompute == "full" else 2
    assert two_layers - one_layer == layer.total + copies + _cpu_rms_norm_extra(
        cfg, batch, seq, norms_per_layer)

    # The whole step at the start of backward, less what is not a saved tensor: model states,
    # the gradients of the log-probabilities, and the fp32 RoPE tables that checkpoints hold as
    # plain arguments (ALiBi's bias is a tensor argument, saved).
    phase = autocast_step_phases(cfg, batch, seq, recompute=recompute,
                                 flash_attention=flash_attention, dropout=False)["loss_backward"]
    not_saved = {*MODEL_STATES, "logits_grad_fp32"}
    expected = sum(v for k, v in phase.parts.items() if k not in not_saved)
    if cfg.position == "rope":
        expected -= phase.parts["position_tables"]
    norms = 2 * cfg.num_layers * (recompute != "full") + 1 + cfg.embedding_norm
    assert two_layers == expected + _cpu_rms_norm_extra(cfg, batch, seq, norms)


def _saved_tensor_names(node_class: str) -> set[str]:
    """The `_saved_*` attributes of one of torch's generated autograd nodes."""
    node = getattr(torch._C._functions, node_class)
    return {name.removeprefix("_saved_") for name in dir(node) if name.startswith("_saved_")}


def test_cuda_kernels_save_what_the_eager_model_assumes() -> None:
    # The CPU verification above runs CPU kernels; these are the CUDA ones autograd would run,
    # read from torch's generated nodes (derivatives.yaml). Flash attention: Q, K, V, output,
    # log-sum-exp and a random-number state, like the CPU flash kernel (cumulative sequence
    # lengths exist only for variable-length batches); no s x s tensor.
    cpu_flash = _saved_tensor_names("ScaledDotProductFlashAttentionForCpuBackward0")
    cuda_flash = _saved_tensor_names("ScaledDotProductFlashAttentionBackward0")
    tensors = {"query", "key", "value", "output", "logsumexp"}
    assert tensors <= cpu_flash and tensors <= cuda_flash
    assert cuda_flash - cpu_flash <= {"rng_state", "unused", "cum_seq_q", "cum_seq_k", "max_q",
                                      "max_k"}
    # The memory-efficient kernel (CUDA's choice with an ALiBi attn_mask) saves the bias too.
    assert {"query", "key", "value", "output", "attn_bias"} <= _saved_tensor_names(
        "ScaledDotProductEfficientAttentionBackward0")
    # CUDA's fused RMSNorm keeps input, rstd (result1) and weight, not the normalised output.
    assert _saved_tensor_names("FusedRmsNormBackward0") == {"input", "normalized_shape",
                                                            "result1", "weight"}


def test_cpu_flash_attention_saves_query_key_value_output_and_log_sum_exp() -> None:
    b, a, s, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, a, s, d, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        node = F.scaled_dot_product_attention(q, k, v, is_causal=True).grad_fn
    assert node.name() == "ScaledDotProductFlashAttentionForCpuBackward0"
    for name in ("query", "key", "value", "output"):
        assert getattr(node, f"_saved_{name}").shape == (b, a, s, d)
    lse = node._saved_logsumexp
    assert (lse.shape, lse.dtype) == ((b, a, s), torch.float32)


def _follow_a_training_step(cfg: TransformerConfig, batch: int, seq: int,
                            recompute: str) -> LiveStorages:
    """One steady-state step as the suite takes it (zero_grad(set_to_none=True), forward and
    loss under autocast, backward, fused AdamW), followed by `LiveStorages` on the CPU."""
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu", checkpoint_activations=recompute == "full")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens, targets = random_batch(cfg, batch, seq)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(model(tokens), targets)
        loss.backward()
        optimizer.step()

    step()  # the first step creates AdamW's states, as on the GPU
    live = LiveStorages()
    for parameter in model.parameters():
        live.hold(parameter)
        assert parameter.grad is not None
        live.hold(parameter.grad)
        for state in optimizer.state[parameter].values():
            live.hold(state)
    with live:
        step()
    return live


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("cfg", [TINY_GPT.replace(vocab_size=512),
                                 TINY_LLAMA.replace(vocab_size=512)], ids=["gpt", "llama"])
def test_autocast_phases_match_live_memory_of_a_training_step(cfg: TransformerConfig,
                                                              recompute: str) -> None:
    batch, seq = 4, 64
    live = _follow_a_training_step(cfg, batch, seq, recompute)
    phases = autocast_step_phases(cfg, batch, seq, recompute=recompute, dropout=False)
    norms = 2 * cfg.num_layers * (recompute != "full") + 1
    cpu_extra = _cpu_rms_norm_extra(cfg, batch, seq, norms)
    assert live.after("aten._log_softmax.default") == phases["forward_end"].total + cpu_extra
    assert live.after("aten._log_softmax_backward_data.default") == \
        phases["loss_backward"].total + cpu_extra
    # At the optimizer step every gradient exists and a tied embedding's second gradient is
    # gone again.
    end = phases["backward_end"]
    assert live.after("aten._fused_adamw_.default") == \
        end.total - end.parts["backward_working_set"]
    if cfg.norm == "layernorm":  # CPU rms_norm's composite backward adds transients of its own
        memory = training_memory(cfg, batch, seq, precision="bf16-autocast",
                                 recompute=recompute, dropout=False)
        assert memory.phase == "loss_backward"
        assert live.peak == memory.total


def test_layer_backward_phase_estimates_the_peak_when_logits_are_small() -> None:
    # A vocabulary smaller than the hidden size: the logits no longer dominate, the peak moves
    # into the last layer's backward, whose working set is an estimate (within 1% here).
    cfg = TINY_GPT.replace(hidden_size=128, vocab_size=64)
    batch, seq = 2, 64
    memory = training_memory(cfg, batch, seq, precision="bf16-autocast", dropout=False)
    assert memory.phase == "layer_backward"
    assert _follow_a_training_step(cfg, batch, seq, "none").peak == pytest.approx(
        memory.total, rel=0.01)


# Peak allocated memory of one steady-state training step on an H100 80GB (torch 2.11, bf16
# autocast, fused AdamW, flash attention, no dropout), perf_tests/test_memory.py's sweep of the
# Llama-style model at sequence length 2048, by batch size, in GiB.
H100_SWEEP_PEAK_GIB = {1: 7.499, 2: 10.47, 4: 16.4, 8: 28.38}
# perf_tests/test_training.py on the same H100: measured peak / the "bf16-mixed" estimate
# (dropout=False) it was compared with, whose Megatron-LM model this module keeps unchanged.
H100_TRAINING_PEAK_OVER_BF16_MIXED = {"gpt-none": 1.022, "gpt-full": 0.859,
                                      "llama-none": 1.156, "llama-full": 0.822}
# The theory should describe these within 5%; the suite's band (harness.workloads.training
# .MEMORY_ESTIMATE_BAND, 15%) leaves room for GPUs and torch versions not measured here.
H100_AGREEMENT = 0.05


def test_autocast_estimate_reproduces_the_h100_memory_sweep() -> None:
    for batch, measured in H100_SWEEP_PEAK_GIB.items():
        estimate = training_memory(LLAMA_STYLE, batch, 2048, precision="bf16-autocast",
                                   dropout=False).total
        assert measured * GIB / estimate == pytest.approx(1, abs=H100_AGREEMENT), batch


@pytest.mark.parametrize("case", list(H100_TRAINING_PEAK_OVER_BF16_MIXED))
def test_autocast_estimate_reproduces_the_h100_training_peaks(case: str) -> None:
    name, recompute = case.split("-")
    workload = TRAINING_WORKLOADS[name]
    shape = (workload.config, workload.batch_size, workload.seq_len)
    measured = H100_TRAINING_PEAK_OVER_BF16_MIXED[case] * training_memory(
        *shape, precision="bf16-mixed", recompute=recompute, dropout=False).total
    estimate = training_memory(*shape, precision="bf16-autocast", recompute=recompute,
                               dropout=False).total
    assert measured / estimate == pytest.approx(1, abs=H100_AGREEMENT)


# --- properties of the autocast model -------------------------------------------------------

@given(transformer_configs(), st.data(), st.integers(1, 16), st.sampled_from(AUTOCAST_PRECISIONS),
       optimizers(), recompute_modes(), zero_stages(), st.booleans(), st.booleans())
def test_autocast_memory_never_decreases_with_batch_or_sequence(
        cfg: TransformerConfig, data: st.DataObject, batch: int, precision: str, optimizer: str,
        recompute: str, zero: int, flash: bool, dropout: bool) -> None:
    num_gpus, tp, pp = data.draw(parallel_layouts(cfg), label="num_gpus, tp, pp")
    sp = data.draw(st.booleans(), label="sp")
    seq = tp * data.draw(st.integers(1, max(1, 4096 // tp)), label="seq_len / tp")

    def total(b: int, s: int) -> int:
        return training_memory(cfg, b, s, precision, optimizer, recompute, tp, pp, sp, flash,
                               zero, num_gpus // (tp * pp), dropout).total

    base = total(batch, seq)
    assert base <= total(batch + 1, seq)
    assert base <= total(batch, seq + (tp if sp else 1))


@given(transformer_configs(), st.data(), st.integers(1, 8), st.booleans(), st.booleans())
def test_autocast_recomputation_and_parallelism_never_raise_memory(
        cfg: TransformerConfig, data: st.DataObject, batch: int, flash: bool,
        dropout: bool) -> None:
    _, tp, pp = data.draw(parallel_layouts(cfg), label="num_gpus, tp, pp")
    seq = tp * data.draw(st.integers(1, max(1, 4096 // tp)), label="seq_len / tp")

    def total(recompute: str = "none", t: int = tp, sp: bool = False) -> int:
        return training_memory(cfg, batch, seq, "bf16-autocast", "adamw", recompute, t, pp, sp,
                               flash, dropout=dropout).total

    assert total(t=tp, sp=True) <= total(t=tp) <= total(t=1)
    # Checkpoints keep fp32 position tables shared by all layers (RoPE's cos/sin, ALiBi's
    # s x s bias) that no recomputation frees: with one layer, or ALiBi's quadratic bias
    # against short rows, full recomputation can cost more than none, as it does in torch.
    if cfg.num_layers >= 2 and cfg.position != "alibi":
        assert total("full") <= total("selective") <= total("none")
