"""Batch-size arithmetic and the tensor/pipeline-parallel checks of `harness.theory.parallel`."""

from __future__ import annotations

import pytest

from harness.theory.config import TransformerConfig
from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    data_parallel_size,
    global_batch_size,
    grad_accum_steps,
    padded_vocab_size,
    params_per_rank,
    tokens_per_step,
)
from harness.theory.zoo import get_model, list_models


def test_data_parallel_size_follows_source_001_examples() -> None:
    # Source 001: 8 GPUs with TP=2, PP=2 give DP = 8 / (2*2) = 2; plain DP on 8 GPUs is 8.
    assert data_parallel_size(8, tp=2, pp=2) == 2
    assert data_parallel_size(8) == 8
    assert data_parallel_size(64, tp=8) == 8


def test_data_parallel_size_error_names_gpus_tp_and_pp() -> None:
    with pytest.raises(ValueError, match=r"num_gpus=8 .*tp \* pp = 3 \* 1 = 3"):
        data_parallel_size(8, tp=3, pp=1)


def test_global_batch_size_follows_source_001_examples() -> None:
    assert global_batch_size(4, dp=8) == 32
    assert global_batch_size(4, dp=2) == 8
    assert global_batch_size(4, dp=8, grad_accum_steps=4) == 128


def test_grad_accum_steps_inverts_global_batch_size() -> None:
    assert grad_accum_steps(128, micro_batch_size=4, dp=8) == 4
    assert grad_accum_steps(1024, micro_batch_size=1, dp=64) == 16


def test_grad_accum_steps_suggests_the_nearest_valid_global_batch() -> None:
    with pytest.raises(ValueError, match=r"global_batch_size=100 .* 4 \* 8 = 32.* 96 or 128"):
        grad_accum_steps(100, micro_batch_size=4, dp=8)
    with pytest.raises(ValueError, match=r"nearest valid global batch sizes are 32"):
        grad_accum_steps(20, micro_batch_size=4, dp=8)


def test_tokens_per_step_is_global_batch_times_sequence() -> None:
    assert tokens_per_step(1024, 2048) == 2_097_152


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8", None])
def test_every_count_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="num_gpus must be a positive integer"):
        data_parallel_size(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        data_parallel_size(8, tp=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_accum_steps must be a positive integer"):
        global_batch_size(1, 1, grad_accum_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        tokens_per_step(1, bad)  # type: ignore[arg-type]


def test_vocab_is_padded_like_megatron() -> None:
    # GPT-2's 50257 tokens become 50304 = 393 * 128 in Megatron-LM at tp=1.
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(50257, tp=2) == 50432  # multiple of 128 * 2
    assert padded_vocab_size(32000, tp=8) == 32768


def test_tensor_parallel_layout_of_llama_2_70b() -> None:
    layout = check_tensor_parallel(get_model("llama-2-70b"), 8)
    assert (layout.heads_per_rank, layout.kv_heads_per_rank, layout.ffn_per_rank) == (8, 1, 3584)
    assert layout.padded_vocab_size == 32768
    assert layout.vocab_per_rank == 4096


def test_kv_heads_fewer_than_tp_are_refused_with_valid_sizes() -> None:
    with pytest.raises(ValueError, match=r"tp=16 does not divide num_kv_heads=8 .*: 1, 2, 4, 8$"):
        check_tensor_parallel(get_model("llama-2-70b"), 16)


def test_misaligned_ffn_is_refused_by_tensor_parallelism() -> None:
    cfg = TransformerConfig(num_layers=2, hidden_size=4096, num_heads=32, vocab_size=32000,
                            ffn_hidden_size=10922, mlp="swiglu")
    with pytest.raises(ValueError, match=r"tp=4 does not divide ffn_hidden_size=10922"):
        check_tensor_parallel(cfg, 4)
    assert check_tensor_parallel(cfg, 2).ffn_per_rank == 5461


def test_pipeline_stages_must_split_layers_evenly() -> None:
    assert check_pipeline_parallel(get_model("llama-2-7b"), 4) == 8
    with pytest.raises(ValueError,
                       match=r"pp=5 does not divide num_layers=32 .*: 1, 2, 4, 8, 16, 32"):
        check_pipeline_parallel(get_model("llama-2-7b"), 5)


def test_checks_reject_something_that_is_not_a_config() -> None:
    with pytest.raises(ValueError, match="cfg must be a harness.TransformerConfig"):
        check_tensor_parallel("llama-2-7b", 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list_models())
def test_one_rank_without_parallelism_holds_every_parameter(name: str) -> None:
    cfg = get_model(name)
    assert params_per_rank(cfg) == cfg.num_params()


def test_params_per_rank_splits_llama_layers_and_vocabulary() -> None:
    cfg = get_model("llama-2-7b")  # no biases, RMSNorm, untied output layer
    h, f, vocab, layers = 4096, 11008, 32000, 32
    split_layer = 4 * h * h + 3 * h * f
    expected_tp2 = (layers * (split_layer // 2 + 2 * h)  # weights split, two norms whole
                    + 2 * (vocab // 2) * h                 # embedding and output, by vocabulary
                    + h)                                   # final norm
    assert params_per_rank(cfg, tp=2) == expected_tp2
    # The first of two stages: the embedding and 16 layers, no final norm or output layer.
    assert params_per_rank(cfg, pp=2) == vocab * h + 16 * (split_layer + 2 * h)


def test_row_parallel_biases_and_positions_stay_whole_under_tensor_parallelism() -> None:
    cfg = get_model("gpt2")  # biases everywhere, LayerNorm with bias, learned positions, tied
    h, f = 768, 3072
    whole_per_layer = 2 * h + 2 * (2 * h)  # out-proj and down-proj biases, two LayerNorms
    split_per_layer = (4 * h * h + 3 * h) + (2 * h * f + f)
    expected = (12 * (split_per_layer // 2 + whole_per_layer)
                + (50257 + 1) // 2 * h  # embedding rows: ceil(50257 / 2)
                + 1024 * h              # learned positions
                + 2 * h)                # final LayerNorm
    assert params_per_rank(cfg, tp=2) == expected
