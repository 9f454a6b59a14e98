"""Source 001's sizing rules and the tile/wave quantization model of `harness.theory.sizing`."""

from __future__ import annotations

import pytest

from harness.theory.config import TransformerConfig
from harness.theory.mla import MLA
from harness.theory.moe import MoE
from harness.theory.sizing import (
    Finding,
    gemm_quantization,
    largest_power_of_two_dividing,
    sizing_findings,
    swiglu_ffn_candidates,
)
from harness.theory.zoo import get_model


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.rule: finding for finding in findings}


def test_llama_2_7b_passes_every_rule() -> None:
    findings = sizing_findings(get_model("llama-2-7b"), 1, 4096, tp=1)
    assert [f.rule for f in findings] == [
        "vocab_multiple_of_64", "head_dim_power_of_two", "hidden_per_tp_power_of_two",
        "tokens_power_of_two", "batch_heads_divisible_by_tp", "tp_within_node", "ffn_alignment"]
    assert all(f.ok and f.suggestion is None for f in findings)


def test_gpt2_vocabulary_is_padded_to_the_next_multiple_of_64() -> None:
    vocab = by_rule(sizing_findings(get_model("gpt2"), 8, 1024))["vocab_multiple_of_64"]
    assert not vocab.ok
    assert "50257" in vocab.detail
    assert vocab.suggestion == "pad the vocabulary to 50304"


def test_head_dim_reports_its_largest_power_of_two() -> None:
    cfg = TransformerConfig(num_layers=2, hidden_size=2560, num_heads=32, vocab_size=50304)
    head = by_rule(sizing_findings(cfg, 1, 2048))["head_dim_power_of_two"]
    assert not head.ok
    assert "h/a = 80 is divisible by 16" in head.detail
    assert head.suggestion is not None and "e.g. 128" in head.suggestion


def test_tokens_per_micro_batch_must_be_well_aligned() -> None:
    tokens = by_rule(sizing_findings(get_model("llama-2-7b"), 3, 1000))["tokens_power_of_two"]
    assert not tokens.ok
    assert "b*s = 3000 is divisible by 8" in tokens.detail


def test_batch_times_heads_must_split_over_tp() -> None:
    finding = by_rule(sizing_findings(get_model("gpt2"), 1, 1024, tp=8))[
        "batch_heads_divisible_by_tp"]
    assert not finding.ok
    assert finding.detail == "(b*a)/t = (1*12)/8 is not an integer"
    assert by_rule(sizing_findings(get_model("gpt2"), 2, 1024, tp=8))[
        "batch_heads_divisible_by_tp"].ok


def test_hidden_not_divisible_by_tp_is_reported_not_raised() -> None:
    finding = by_rule(sizing_findings(get_model("gpt2"), 1, 1024, tp=5))[
        "hidden_per_tp_power_of_two"]
    assert not finding.ok
    assert finding.detail == "h/t = 768/5 is not an integer"


def test_tensor_parallelism_beyond_a_node_is_flagged() -> None:
    cfg = get_model("llama-2-70b")
    assert by_rule(sizing_findings(cfg, 1, 4096, tp=8))["tp_within_node"].ok
    beyond = by_rule(sizing_findings(cfg, 1, 4096, tp=16))["tp_within_node"]
    assert not beyond.ok
    assert beyond.suggestion is not None and "pipeline or data parallelism" in beyond.suggestion


def test_swiglu_candidates_around_8h_over_3_for_h_4096() -> None:
    # Source 001: 8/3 * 4096 = 10922 is misaligned; 10944 and 11008 (Llama-2-7B) are aligned.
    candidates = swiglu_ffn_candidates(4096)
    assert candidates == [10752, 10880, 10944, 11008]
    assert all(c % 64 == 0 for c in candidates)


def test_misaligned_swiglu_ffn_suggests_aligned_widths() -> None:
    cfg = TransformerConfig(num_layers=2, hidden_size=4096, num_heads=32, vocab_size=32000,
                            ffn_hidden_size=10922, mlp="swiglu")
    ffn = by_rule(sizing_findings(cfg, 1, 4096))["ffn_alignment"]
    assert not ffn.ok
    assert "d_ff = 10922 (2.6665h; 8h/3 = 10922.7), not a multiple of 64" == ffn.detail
    assert ffn.suggestion == "benchmark d_ff in 10752, 10880, 10944, 11008"


def test_aligned_widths_around_8h_over_3_are_offered_when_d_ff_is_elsewhere() -> None:
    cfg = TransformerConfig(num_layers=2, hidden_size=4096, num_heads=32, vocab_size=32000,
                            ffn_hidden_size=14000, mlp="swiglu")
    ffn = by_rule(sizing_findings(cfg, 1, 4096))["ffn_alignment"]
    assert ffn.suggestion == ("benchmark d_ff in 13824, 13952, 14016, 14080; aligned widths "
                              "around 8h/3: 10752, 10880, 10944, 11008")


def test_ffn_alignment_is_judged_per_tensor_parallel_rank() -> None:
    cfg = TransformerConfig(num_layers=2, hidden_size=4096, num_heads=32, vocab_size=32000,
                            ffn_hidden_size=11008, mlp="swiglu")
    assert by_rule(sizing_findings(cfg, 1, 4096, tp=2))["ffn_alignment"].ok  # 5504 = 86 * 64
    per_rank = by_rule(sizing_findings(cfg, 1, 4096, tp=8))["ffn_alignment"]  # 1376 = 21.5 * 64
    assert not per_rank.ok
    assert per_rank.detail.startswith("d_ff/t = 11008/8 = 1376")
    assert per_rank.suggestion == "benchmark d_ff in 10240, 10752, 11264, 12288"


def test_largest_power_of_two_dividing() -> None:
    assert [largest_power_of_two_dividing(n) for n in (1, 3, 80, 128, 4096 * 3)] == \
        [1, 1, 16, 128, 4096]
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        largest_power_of_two_dividing(0)


def test_133_tiles_on_an_h100_take_two_waves_at_half_efficiency() -> None:
    gemm = gemm_quantization(133 * 128, 128, 4096, num_sms=132)
    assert (gemm.tiles, gemm.waves, gemm.last_wave_tiles) == (133, 2, 1)
    assert gemm.efficiency == pytest.approx(133 / 264)
    assert round(gemm.efficiency, 3) == 0.504
    assert gemm.last_wave_wasted_fraction == pytest.approx(131 / 132)
    assert gemm.tile_efficiency == 1.0


def test_a_full_wave_wastes_nothing() -> None:
    gemm = gemm_quantization(132 * 128, 128, 4096, num_sms=132)
    assert (gemm.waves, gemm.efficiency, gemm.last_wave_wasted_fraction) == (1, 1.0, 0.0)


def test_source_001_a100_example_109_blocks_need_two_waves() -> None:
    gemm = gemm_quantization(109 * 256, 128, 1024, num_sms=108, tile=(256, 128))
    assert (gemm.tiles, gemm.waves, gemm.last_wave_tiles) == (109, 2, 1)


def test_partial_tiles_lower_tile_efficiency() -> None:
    gemm = gemm_quantization(129, 128, 64, num_sms=108)
    assert gemm.tiles == 2
    assert gemm.tile_efficiency == pytest.approx(129 / 256)
    assert gemm.useful_fraction == pytest.approx(gemm.efficiency * 129 / 256)
    assert gemm.flops == 2 * 129 * 128 * 64


@pytest.mark.parametrize("tile", [(128,), (0, 128), (128.0, 128), [128, 128], (True, 128)])
def test_tile_must_be_a_pair_of_positive_ints(tile: object) -> None:
    with pytest.raises(ValueError, match="tile must be a pair of positive integers"):
        gemm_quantization(128, 128, 128, 132, tile=tile)  # type: ignore[arg-type]


def test_gemm_dimensions_are_validated_by_name() -> None:
    with pytest.raises(ValueError, match="num_sms must be a positive integer, got 0"):
        gemm_quantization(128, 128, 128, 0)
    with pytest.raises(ValueError, match="k must be a positive integer, got -1"):
        gemm_quantization(128, 128, -1, 132)


def test_sizing_rejects_bad_arguments_by_name() -> None:
    with pytest.raises(ValueError, match="cfg must be a harness.TransformerConfig"):
        sizing_findings({"hidden_size": 4096}, 1, 128)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        sizing_findings(get_model("gpt2"), 1, 0)


def test_head_rule_judges_the_head_width_the_model_has() -> None:
    # Mistral-Nemo: head_dim 128 on a 5120-wide model with 32 heads (h/a would be 160).
    nemo = get_model("llama-3-8b").replace(hidden_size=5120, head_dim=128)
    head = by_rule(sizing_findings(nemo, 1, 2048))["head_dim_power_of_two"]
    assert head.ok and head.detail == "head_dim = 128 is divisible by 128"
    mla = nemo.replace(mla=MLA(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                               v_head_dim=128), num_kv_heads=None)
    head = by_rule(sizing_findings(mla, 1, 2048))["head_dim_power_of_two"]
    assert head.ok and head.detail == "qk_head_dim = 192 is divisible by 64"


def test_expert_widths_are_judged_and_an_unused_dense_width_is_not() -> None:
    moe = MoE(num_experts=128, top_k=8, expert_ffn_hidden_size=700)
    cfg = get_model("llama-2-7b").replace(moe=moe)
    findings = by_rule(sizing_findings(cfg, 1, 4096))
    assert "ffn_alignment" not in findings  # no layer has the dense MLP
    expert = findings["expert_ffn_alignment"]
    assert not expert.ok
    assert expert.detail == "expert d_ff = 700, not a multiple of 64"
    assert expert.suggestion == "benchmark expert d_ff in 512, 640, 704, 768"
    dense_first = cfg.replace(moe=MoE(num_experts=128, top_k=8, expert_ffn_hidden_size=768,
                                      dense_layers=(0,)))
    assert by_rule(sizing_findings(dense_first, 1, 4096))["ffn_alignment"].ok
