"""Model-state, activation, KV-cache and whole-step memory of `harness.formulas.memory`."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from harness.config import TransformerConfig, get_model
from harness.formulas.memory import (
    CUDA_CONTEXT_BYTES_RANGE,
    DISTRIBUTED_BUFFER_BYTES_RANGE,
    GIB,
    MemoryBreakdown,
    activation_bytes,
    bytes_per_param,
    fits,
    inference_memory,
    kv_cache_bytes,
    layer_activation_bytes,
    model_state_bytes,
    training_memory,
)
from harness.formulas.parallel import params_per_rank


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
    with pytest.raises(ValueError, match="bytes_per_param must be a positive number, got 0"):
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
