"""FLOP formulas against torch's FlopCounterMode, the published closed forms and worked examples."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.model import build_model, lm_loss, random_batch
from harness.theory.config import TransformerConfig
from harness.theory.flops import (
    Flops,
    achieved_tflops,
    approximation_error,
    decode_flops,
    flop_counter_flops,
    flops_to_macs,
    forward_flops,
    forward_flops_breakdown,
    hfu,
    macs_to_flops,
    mfu,
    prefill_flops,
    quick_tflops_estimate,
    six_nd,
    train_flops,
    two_n,
)
from harness.theory.mla import MLA
from harness.theory.moe import MoE
from harness.theory.params import matmul_params, num_params
from harness.theory.zoo import MODEL_ZOO, get_model

# A GPT block with a 4h MLP and no GQA: the shape every closed form in the literature assumes.
GPT_LIKE = TransformerConfig(num_layers=24, hidden_size=2048, num_heads=16, vocab_size=51200)


def counted_train_step(cfg: TransformerConfig, batch_size: int, seq_len: int,
                       checkpoint_activations: bool = False, device: str = "meta") -> int:
    """FLOPs FlopCounterMode sees in one forward + backward of the built model."""
    model = build_model(cfg, device=device, checkpoint_activations=checkpoint_activations)
    inputs, targets = random_batch(cfg, batch_size, seq_len, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        lm_loss(model(inputs), targets).backward()
    return counter.get_total_flops()


# --- (a) FlopCounterMode -------------------------------------------------------------------
# On meta tensors SDPA runs its math fallback, so FlopCounterMode sees plain bmm ops for QK^T and
# softmax.V, whose backward is exactly 2 x forward, and it ignores the causal mask. That is the
# non-causal, no-recompute count: train_flops(...).hardware must equal it exactly. (On CUDA the
# fused kernels are counted as 2.5 x forward in backward; see the CUDA test below.)
# Every zoo architecture is built at full width (hidden, heads, kv heads, ffn, vocab: every shape
# that differs) with two layers; the layers are identical, and on meta each one costs ~20 ms of
# dispatch, so full depth for all twelve would spend half a minute proving nothing more.
# One zoo model is also counted at full depth.

@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_flop_counter_equals_train_flops_for_every_zoo_architecture(name: str) -> None:
    cfg = get_model(name).replace(num_layers=2)
    counted = counted_train_step(cfg, batch_size=2, seq_len=16)
    assert counted == train_flops(cfg, 2, 16, recompute="none").hardware
    assert counted == flop_counter_flops(cfg, 2, 16, fused_attention=False)


def test_flop_counter_equals_train_flops_for_full_depth_gpt2() -> None:
    cfg = get_model("gpt2")
    assert counted_train_step(cfg, batch_size=1, seq_len=32) == train_flops(cfg, 1, 32).hardware


@pytest.mark.parametrize("name", ["gpt2", "bloom-7b1", "llama-3-8b"])
def test_flop_counter_sees_full_recompute_with_checkpointing(name: str) -> None:
    cfg = get_model(name).replace(num_layers=2)
    counted = counted_train_step(cfg, batch_size=1, seq_len=16, checkpoint_activations=True)
    flops = train_flops(cfg, 1, 16, recompute="full")
    assert counted == flops.hardware
    assert counted > flops.model


# Small models of the three attention styles: learned positions, RoPE with GQA, ALiBi (a float
# mask, which selects the memory-efficient kernel instead of flash).
CUDA_STYLES: dict[str, TransformerConfig] = {
    "gpt": TransformerConfig(num_layers=2, hidden_size=256, num_heads=4, vocab_size=1000),
    "llama-gqa": TransformerConfig(num_layers=2, hidden_size=256, num_heads=4, num_kv_heads=2,
                                   vocab_size=1000, mlp="swiglu", norm="rmsnorm",
                                   position="rope", bias=False, tied_embeddings=False),
    "bloom-alibi": TransformerConfig(num_layers=2, hidden_size=256, num_heads=4,
                                     vocab_size=1000, position="alibi", embedding_norm=True),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused SDPA kernels need CUDA")
@pytest.mark.parametrize("style", sorted(CUDA_STYLES))
@pytest.mark.parametrize("checkpoint_activations", [False, True])
def test_flop_counter_counts_fused_attention_backward_as_two_and_a_half_forwards(
        style: str, checkpoint_activations: bool) -> None:
    cfg = CUDA_STYLES[style]
    model = build_model(cfg, device="cuda", dtype=torch.bfloat16,
                        checkpoint_activations=checkpoint_activations)
    inputs, targets = random_batch(cfg, 2, 128, device="cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        lm_loss(model(inputs), targets).backward()
    recompute = "full" if checkpoint_activations else "none"
    assert counter.get_total_flops() == flop_counter_flops(cfg, 2, 128, recompute=recompute,
                                                           fused_attention=True)


def test_fused_attention_convention_adds_one_score_matmul_per_layer() -> None:
    cfg = get_model("llama-2-7b")
    parts = forward_flops_breakdown(cfg, 1, 4096)
    fused = flop_counter_flops(cfg, 1, 4096, fused_attention=True)
    assert fused - train_flops(cfg, 1, 4096).hardware == parts["attention_scores"]
    # i.e. the attention core costs 1 + 2.5 = 3.5 forwards instead of 3.
    core = parts["attention_scores"] + parts["attention_values"]
    assert Fraction(3 * core + parts["attention_scores"], core) == Fraction(7, 2)


# --- Megatron-LM closed forms --------------------------------------------------------------

def test_full_recompute_hardware_flops_equal_narayanan_eq3() -> None:
    # Narayanan et al. 2021, eq. 3 (source 003, section 4.3): 96 b s l h^2 (1 + s/6h + V/16lh);
    # the logits layer is counted 3x (forward + backward), not recomputed.
    cfg, b, s = GPT_LIKE, 4, 2048
    L, h, v = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    closed = 96 * b * s * L * h * h * (1 + Fraction(s, 6 * h) + Fraction(v, 16 * L * h))
    assert train_flops(cfg, b, s, recompute="full").hardware == closed


def test_model_flops_equal_the_72_form_with_v_over_12lh() -> None:
    # Without recomputation: 72 b s l h^2 (1 + s/6h + V/12lh) (Korthikanti et al. 2022, app. A).
    cfg, b, s = GPT_LIKE, 4, 2048
    L, h, v = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    closed = 72 * b * s * L * h * h * (1 + Fraction(s, 6 * h) + Fraction(v, 12 * L * h))
    flops = train_flops(cfg, b, s, recompute="none")
    assert flops.model == closed
    assert flops.hardware == flops.model


def test_megatron_deepspeed_factor_three_form_undercounts_logits_by_a_quarter() -> None:
    # Source 003 quotes the Megatron-DeepSpeed code: 24 * 3 * b s l h^2 (1 + s/6h + V/16lh).
    # V/16lh is right only for the factor 4 (logits 6bshV out of 96); with 3 it charges the
    # logits 4.5 bshV instead of 6 bshV.
    cfg, b, s = GPT_LIKE, 4, 2048
    L, h, v = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    code_form = 24 * 3 * b * s * L * h * h * (1 + Fraction(s, 6 * h) + Fraction(v, 16 * L * h))
    assert train_flops(cfg, b, s).model - code_form == Fraction(3, 2) * b * s * h * v


# --- (c) worked examples of source 003 ------------------------------------------------------

def test_forward_per_layer_is_24bsh2_plus_4bs2h() -> None:
    cfg, b, s = GPT_LIKE, 2, 1024
    h, L = cfg.hidden_size, cfg.num_layers
    parts = forward_flops_breakdown(cfg, b, s)
    layers = sum(v for k, v in parts.items() if k != "logits")
    assert layers == L * (24 * b * s * h * h + 4 * b * s * s * h)
    assert parts["logits"] == 2 * b * s * h * cfg.vocab_size


def test_forward_parts_match_the_source_table() -> None:
    cfg, b, s = GPT_LIKE, 2, 1024
    h, L = cfg.hidden_size, cfg.num_layers
    parts = forward_flops_breakdown(cfg, b, s)
    assert parts["qkv_projection"] == L * 6 * b * s * h * h
    assert parts["attention_scores"] == L * 2 * b * s * s * h
    assert parts["attention_values"] == L * 2 * b * s * s * h
    assert parts["attention_output"] == L * 2 * b * s * h * h
    assert parts["mlp"] == L * 16 * b * s * h * h


def test_prefill_is_24lh2bs_plus_4lhbs2_plus_2bshv() -> None:
    cfg, b, s = GPT_LIKE, 3, 512
    h, L, v = cfg.hidden_size, cfg.num_layers, cfg.vocab_size
    assert prefill_flops(cfg, b, s) == 24 * L * h * h * b * s + 4 * L * h * b * s * s \
        + 2 * b * s * h * v


def test_decode_is_24lh2b_plus_4lhb_s_plus_1_plus_2bhv() -> None:
    cfg, b, s = GPT_LIKE, 3, 512
    h, L, v = cfg.hidden_size, cfg.num_layers, cfg.vocab_size
    assert decode_flops(cfg, b, s) == 24 * L * h * h * b + 4 * L * h * b * (s + 1) + 2 * b * h * v


def test_decode_with_gqa_is_two_flops_per_matmul_weight_plus_attention_over_the_cache() -> None:
    cfg, b, c = get_model("llama-2-70b"), 8, 4000
    expected = 2 * b * matmul_params(cfg) + 4 * cfg.num_layers * cfg.hidden_size * b * (c + 1)
    assert decode_flops(cfg, b, c) == expected


def test_decode_with_an_empty_cache_is_a_one_token_forward() -> None:
    cfg = get_model("mistral-7b")
    assert decode_flops(cfg, 4, 0) == forward_flops(cfg, 4, 1)


# --- conventions -----------------------------------------------------------------------------

def test_causal_halves_exactly_the_attention_core() -> None:
    cfg, b, s = get_model("llama-3-8b"), 2, 8192
    full = forward_flops_breakdown(cfg, b, s)
    causal = forward_flops_breakdown(cfg, b, s, causal=True)
    assert causal["attention_scores"] * 2 == full["attention_scores"]
    assert causal["attention_values"] * 2 == full["attention_values"]
    for key in ("qkv_projection", "attention_output", "mlp", "logits"):
        assert causal[key] == full[key]


def test_model_flops_are_three_forwards() -> None:
    cfg = get_model("qwen2-7b")
    for causal in (False, True):
        assert train_flops(cfg, 2, 4096, causal=causal).model == \
            3 * forward_flops(cfg, 2, 4096, causal=causal)


def test_selective_recompute_adds_the_attention_core_once() -> None:
    cfg = get_model("llama-2-13b")
    parts = forward_flops_breakdown(cfg, 1, 4096)
    flops = train_flops(cfg, 1, 4096, recompute="selective")
    assert flops.hardware - flops.model == parts["attention_scores"] + parts["attention_values"]


def test_full_recompute_adds_the_layers_but_not_the_logits() -> None:
    cfg = get_model("llama-3-8b")
    flops = train_flops(cfg, 1, 2048, recompute="full")
    assert flops.hardware - flops.model == forward_flops(cfg, 1, 2048) \
        - forward_flops_breakdown(cfg, 1, 2048)["logits"]


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_model_flops_never_exceed_hardware_flops(name: str) -> None:
    cfg = get_model(name)
    none = train_flops(cfg, 1, 1024, "none")
    selective = train_flops(cfg, 1, 1024, "selective")
    full = train_flops(cfg, 1, 1024, "full")
    assert none.model == selective.model == full.model == none.hardware
    assert none.hardware < selective.hardware < full.hardware


def test_gqa_narrows_the_key_and_value_projections() -> None:
    cfg, b, s = get_model("llama-2-70b"), 1, 128
    h = cfg.hidden_size
    assert forward_flops_breakdown(cfg, b, s)["qkv_projection"] == \
        cfg.num_layers * 2 * b * s * h * (h + 2 * 1024)


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_model_flops_are_six_n_matmul_plus_palm_attention_term(name: str) -> None:
    # PaLM (Chowdhery et al. 2022, app. B): 6N + 12 L H Q T per token, N the matmul parameters.
    cfg, b, s = get_model(name), 2, 2048
    tokens = b * s
    expected = six_nd(matmul_params(cfg), tokens) + 12 * cfg.num_layers * cfg.hidden_size * s \
        * tokens
    assert train_flops(cfg, b, s).model == expected


def test_flops_rejects_model_above_hardware() -> None:
    with pytest.raises(ValueError, match="Flops.model=10 exceeds Flops.hardware=9"):
        Flops(model=10, hardware=9)


def test_recompute_overhead_of_full_recompute_is_about_a_third() -> None:
    flops = train_flops(GPT_LIKE, 1, 2048, recompute="full")
    L, h, s, v = GPT_LIKE.num_layers, GPT_LIKE.hidden_size, 2048, GPT_LIKE.vocab_size
    # Extra forward of the layers over 3 forwards of everything: (1+s/6h) / (3(1+s/6h+V/12lh)).
    expected = (1 + Fraction(s, 6 * h)) / (3 * (1 + Fraction(s, 6 * h) + Fraction(v, 12 * L * h)))
    assert flops.recompute_overhead == pytest.approx(float(expected), rel=1e-12)


# --- 6ND, 2N and the MAC conversions ---------------------------------------------------------

def test_six_nd_and_two_n() -> None:
    assert six_nd(7_000_000_000, 2_000_000_000_000) == 84 * 10**21
    assert two_n(124_439_808) == 248_879_616


def test_six_nd_overestimates_short_sequences_and_underestimates_long_ones() -> None:
    cfg = get_model("llama-2-7b")
    # Short: the untied input embedding (131M parameters, no matmul) dominates the error.
    short = approximation_error(cfg, 1, 16)
    assert short > 0
    expected = Fraction(six_nd(num_params(cfg), 16) - train_flops(cfg, 1, 16).model,
                        train_flops(cfg, 1, 16).model)
    assert short == pytest.approx(float(expected), rel=1e-12)
    # Long: attention (12 L h s per token) is ignored by 6ND.
    assert approximation_error(cfg, 1, 4096) < 0


def test_macs_and_flops_convert_by_two() -> None:
    assert macs_to_flops(21) == 42
    assert flops_to_macs(42) == 21
    with pytest.raises(ValueError, match="macs must be a non-negative finite number"):
        macs_to_flops(-1)


# --- utilisation -----------------------------------------------------------------------------

def test_quick_estimate_reproduces_the_handbook_command() -> None:
    # Source 001: perl -le '$ng=64; $ms=52; $gbs=1024; $sp=127; $seqlen=2048;
    #                      print $ms*4*2*$seqlen*$gbs / ( $sp * $ng * 1e3)'
    tflops = quick_tflops_estimate(52, 2048, 1024, 127, 64, recompute=True)
    assert tflops == pytest.approx(52 * 4 * 2 * 2048 * 1024 / (127 * 64 * 1e3), rel=1e-15)
    assert round(tflops, 2) == 107.33
    without = quick_tflops_estimate(52, 2048, 1024, 127, 64, recompute=False)
    assert without == pytest.approx(tflops * 3 / 4, rel=1e-15)


def test_quick_estimate_is_six_nd_per_second_per_gpu() -> None:
    tokens = 2048 * 1024
    assert quick_tflops_estimate(52, 2048, 1024, 127.0, 64, recompute=False) == pytest.approx(
        achieved_tflops(six_nd(52 * 10**9, tokens), 127.0, 64), rel=1e-12)


def test_palm_540b_published_mfu_is_reproduced() -> None:
    # Chowdhery et al. 2022 (PaLM), section 4 and appendix B: 540.35B parameters, 118 layers,
    # 48 heads of 256 channels, 2048-token sequences, 238.3K tokens/s on 6144 TPU v4 chips of
    # 275 TFLOP/s (bf16): 46.2% MFU, counting 6N + 12 L H Q T FLOPs per token.
    n, layers, heads, head_dim, seq = 540_350_000_000, 118, 48, 256, 2048
    tokens_per_second = 238_300
    flops_per_token = two_n(n) * 3 + 12 * layers * heads * head_dim * seq
    utilisation = mfu(flops_per_token * tokens_per_second, 1.0, 6144, 275e12)
    assert round(utilisation, 3) == 0.462


def test_achieved_tflops_mfu_and_hfu() -> None:
    flops = train_flops(get_model("llama-2-7b"), 4, 4096, recompute="full")
    seconds, gpus, peak = 2.5, 8, 989e12
    assert achieved_tflops(flops.model, seconds, gpus) == pytest.approx(
        flops.model / seconds / gpus / 1e12)
    model_util = mfu(flops.model, seconds, gpus, peak)
    hardware_util = hfu(flops.hardware, seconds, gpus, peak)
    assert model_util == pytest.approx(achieved_tflops(flops.model, seconds, gpus) * 1e12 / peak)
    assert model_util < hardware_util
    assert hardware_util / model_util == pytest.approx(flops.hardware / flops.model)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seconds": 0.0}, "seconds must be a positive finite number, got 0.0"),
    ({"seconds": math.nan}, "seconds must be a positive finite number, got nan"),
    ({"num_gpus": 0}, "num_gpus must be a positive integer, got 0"),
    ({"num_gpus": True}, "num_gpus must be a positive integer, got True"),
    ({"peak_flops_per_gpu": -1.0}, "peak_flops_per_gpu must be a positive finite number"),
    ({"model_flops": math.inf}, "model_flops must be a non-negative finite number, got inf"),
])
def test_mfu_rejects_bad_input_naming_the_argument(kwargs: dict, message: str) -> None:
    args = {"model_flops": 1e15, "seconds": 1.0, "num_gpus": 1, "peak_flops_per_gpu": 989e12}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mfu(**args)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: forward_flops(GPT_LIKE, 0, 128), "batch_size must be a positive integer, got 0"),
    (lambda: forward_flops(GPT_LIKE, 1, 12.5), "seq_len must be a positive integer, got 12.5"),
    (lambda: forward_flops(GPT_LIKE, 1, 8, causal=1), "causal must be True or False, got 1"),
    (lambda: train_flops(GPT_LIKE, 1, 8, recompute="partial"),
     "recompute must be one of 'none', 'selective', 'full'; got 'partial'"),
    (lambda: decode_flops(GPT_LIKE, 1, -1), "context_len must be a non-negative integer"),
    (lambda: six_nd(0, 10), "num_params must be a positive integer, got 0"),
    (lambda: quick_tflops_estimate(52, 2048, 1024, 127, 64, recompute="yes"),
     "recompute must be True or False, got 'yes'"),
    (lambda: forward_flops("gpt2", 1, 8), "cfg must be a harness.TransformerConfig, got str"),
])
def test_bad_arguments_are_value_errors_naming_them(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- head widths, windows, experts, latent attention -------------------------------------------

def test_palm_attention_term_uses_its_256_channel_heads() -> None:
    # PaLM 540B (Chowdhery et al. 2022): 48 heads of 256 channels on d_model 18432, one
    # key/value head, parallel layers. 12 L H Q T per token with Q = 256, not d_model / H = 384.
    cfg = TransformerConfig(num_layers=118, hidden_size=18432, num_heads=48, head_dim=256,
                            num_kv_heads=1, vocab_size=256000, ffn_hidden_size=4 * 18432,
                            mlp="swiglu", bias=False, position="rope", parallel_residual=True,
                            norm_placement="single")
    seq = 2048
    per_token = train_flops(cfg, 1, seq).model // seq
    assert per_token == 6 * matmul_params(cfg) + 12 * 118 * 48 * 256 * seq


def test_a_sliding_window_bounds_the_keys_of_every_query() -> None:
    cfg, b, s = get_model("mistral-7b"), 1, 16384  # 32 layers, window 4096
    w, layers, h = 4096, 32, 4096
    parts = forward_flops_breakdown(cfg, b, s)
    assert parts["attention_scores"] == layers * 2 * b * s * w * h
    causal = forward_flops_breakdown(cfg, b, s, causal=True)
    # The causal band: s^2/2 - (s - w)^2/2 query-key pairs.
    assert causal["attention_scores"] == layers * b * w * (2 * s - w) * h
    full = forward_flops_breakdown(cfg.replace(sliding_window=None), b, s, causal=True)
    assert causal["attention_scores"] < full["attention_scores"]


def test_global_layers_keep_full_attention_beside_windowed_ones() -> None:
    cfg = get_model("llama-2-7b").replace(sliding_window=1024, global_layers=(1, 3))
    b, s = 1, 4096
    windowed = forward_flops_breakdown(cfg, b, s)["attention_scores"]
    per_layer_full = 2 * b * s * s * 4096
    per_layer_window = 2 * b * s * 1024 * 4096
    assert windowed == 2 * per_layer_full + 30 * per_layer_window


def test_decode_reads_at_most_the_window_of_keys() -> None:
    cfg = get_model("mistral-7b")
    assert decode_flops(cfg, 1, 100_000) == decode_flops(cfg, 1, 4095)
    assert decode_flops(cfg, 1, 100) < decode_flops(cfg, 1, 4095)


def test_flop_counter_convention_counts_windowed_layers_in_full() -> None:
    cfg = get_model("mistral-7b").replace(num_layers=2)
    assert flop_counter_flops(cfg, 1, 8192, fused_attention=False) == \
        train_flops(cfg.replace(sliding_window=None), 1, 8192).hardware
    assert counted_train_step(cfg, 1, 16) == flop_counter_flops(cfg, 1, 16,
                                                                fused_attention=False)


def _mixtral_like() -> TransformerConfig:
    moe = MoE(num_experts=8, top_k=2, expert_ffn_hidden_size=14336)
    return get_model("mistral-7b").replace(sliding_window=None, moe=moe)


def test_expert_flops_follow_active_parameters_as_megatron_and_torchtitan_count_them() -> None:
    cfg, b, s = _mixtral_like(), 2, 4096
    parts = forward_flops_breakdown(cfg, b, s)
    tokens = b * s
    assert parts["mlp"] == 0
    assert parts["experts"] == 32 * 2 * tokens * 2 * 3 * 4096 * 14336  # two experts a token
    assert parts["router"] == 32 * 2 * tokens * 4096 * 8
    # torchtitan: 6 * (active parameters - embedding) + 12 L H Q T per token.
    per_token = train_flops(cfg, b, s).model // tokens
    assert per_token == 6 * matmul_params(cfg) + 12 * 32 * 32 * 128 * s
    # Megatron-LM's closed form, which leaves out the router's h x E matmul.
    h, layers, v = 4096, 32, 32000
    megatron = 12 * tokens * layers * h * h * (
        (1 + 8 / 32 + s / h) + (14336 / h) * 2 * 3 / 2 + v / (2 * layers * h))
    router = 3 * parts["router"]
    assert train_flops(cfg, b, s).model - router == pytest.approx(megatron, rel=1e-12)


def test_six_nd_uses_active_parameters_for_experts() -> None:
    cfg = _mixtral_like()
    rule = six_nd(cfg.active_params(), 4096)
    exact = train_flops(cfg, 1, 4096).model
    assert approximation_error(cfg, 1, 4096) == pytest.approx((rule - exact) / exact)


def test_latent_attention_scores_over_its_qk_width_and_decodes_over_the_latent() -> None:
    mla = MLA(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    cfg = TransformerConfig(num_layers=2, hidden_size=2048, num_heads=16, vocab_size=1000,
                            mlp="swiglu", bias=False, norm="rmsnorm", position="rope", mla=mla)
    b, s = 1, 1024
    parts = forward_flops_breakdown(cfg, b, s)
    assert parts["attention_scores"] == 2 * 2 * b * s * s * 16 * 192
    assert parts["attention_values"] == 2 * 2 * b * s * s * 16 * 128
    # Absorbed decode: every head scores over the 576 cached channels and sums 512.
    one_token = forward_flops(cfg, b, 1) - 2 * 2 * b * 16 * (192 + 128)
    assert decode_flops(cfg, b, 999) == one_token + 2 * 2 * b * 16 * (576 + 512) * 1000
