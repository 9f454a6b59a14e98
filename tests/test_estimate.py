"""`python -m harness estimate`: tables for a zoo model or a config.json, JSON that agrees with the
formulas, a clear verdict when training does not fit, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.cli.estimate import render_estimate
from harness.gate.formatting import format_count
from harness.theory.estimate import default_seq_len, estimate
from harness.theory.flops import decode_flops, forward_flops, six_nd, train_flops
from harness.theory.hardware import gpu_spec
from harness.theory.hf import load_hf_config
from harness.theory.memory.breakdown import CUDA_CONTEXT_BYTES_RANGE, DISTRIBUTED_BUFFER_BYTES_RANGE
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.theory.params import non_embedding_params
from harness.theory.zoo import get_model

# A Llama-style config.json as transformers writes it (TinyLlama-1.1B's published shape).
TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_attention_heads": 32, "num_hidden_layers": 22, "num_key_value_heads": 4,
    "vocab_size": 32000, "max_position_embeddings": 2048, "hidden_act": "silu",
    "tie_word_embeddings": False,
}


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_zoo_model_prints_every_section_with_the_exact_parameter_count(capsys):
    assert main(["estimate", "gpt2"]) == 0
    out = capsys.readouterr().out
    for title in ("Parameters", "FLOPs", "Training memory per GPU", "Parallel layout",
                  "Training speed at the assumed MFU", "Inference on one H100 SXM",
                  "Sizing rules"):
        assert title in out
    assert f"{get_model('gpt2').num_params():,}" in out
    assert out.startswith("gpt2 on 1 x H100 SXM: micro-batch 1, sequence 1,024")


def test_config_file_is_read_and_estimated_like_a_zoo_model(tmp_path: Path, capsys):
    path = tmp_path / "tinyllama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_LLAMA))
    result = _run_json(capsys, "--config", str(path), "--seq", "2048")
    assert result["model"]["name"] == "tinyllama"
    assert result["model"]["num_kv_heads"] == 4
    # TinyLlama-1.1B: 1,100,048,384 parameters (the published count).
    assert result["parameters"]["total"] == 1_100_048_384


def test_json_agrees_with_the_formulas(capsys):
    cfg = get_model("llama-2-13b")
    result = _run_json(capsys, "llama-2-13b", "--gpu", "H200", "--batch", "2", "--seq", "4096",
                       "--num-gpus", "16", "--tp", "4", "--pp", "2", "--sp", "--zero", "1",
                       "--grad-accum", "8", "--recompute", "selective", "--mfu", "0.5")
    dp, gbs = 2, 2 * 2 * 8
    assert result["parallel"]["dp"] == dp
    assert result["parallel"]["global_batch_size"] == gbs
    assert result["parallel"]["tokens_per_step"] == gbs * 4096

    assert result["parameters"]["total"] == cfg.num_params()
    assert result["parameters"]["non_embedding"] == non_embedding_params(cfg)

    step = train_flops(cfg, gbs, 4096, "selective")
    assert result["flops"]["model_per_step"] == step.model
    assert result["flops"]["hardware_per_step"] == step.hardware
    assert result["flops"]["six_nd_per_step"] == six_nd(cfg.num_params(), gbs * 4096)
    assert result["flops"]["model_per_micro_batch"] == train_flops(cfg, 2, 4096,
                                                                   "selective").model

    memory = training_memory(cfg, 2, 4096, "bf16-mixed", "adamw", "selective", tp=4, pp=2,
                             sp=True, zero_stage=1, dp=dp)
    assert result["training_memory"]["parts"] == memory.parts
    reserve = CUDA_CONTEXT_BYTES_RANGE[1] + DISTRIBUTED_BUFFER_BYTES_RANGE[1]
    assert result["training_memory"]["needed_bytes"] == memory.total + reserve

    spec = gpu_spec("H200")
    peak = spec.peak_flops("bf16")
    assert result["time"]["step_seconds"] == pytest.approx(step.model / (16 * peak * 0.5))
    assert result["time"]["tokens_per_second"] == \
        pytest.approx(gbs * 4096 * 16 * peak * 0.5 / step.model)

    inference = result["inference"]
    assert inference["kv_cache_bytes_per_token"] == kv_cache_bytes(cfg, 1, 1)
    assert inference["kv_cache_bytes_per_request"] == kv_cache_bytes(cfg, 1, 4096)
    assert inference["prefill_seconds_lower_bound"] == pytest.approx(
        forward_flops(cfg, 1, 4096) / peak)
    weights = inference_memory(cfg, 1, 4096).parts["weights"]
    assert inference["decode_tokens_per_second_bandwidth_bound"] == pytest.approx(
        spec.memory_bandwidth_bytes_per_s / (weights + kv_cache_bytes(cfg, 1, 4096)))
    assert inference["decode_tokens_per_second_compute_bound"] == pytest.approx(
        peak / decode_flops(cfg, 1, 4096))


def test_concurrent_requests_are_the_most_that_fit_beside_the_cuda_context():
    cfg = get_model("llama-3-8b")
    result = estimate(cfg, seq_len=8192, gpu="A100")
    requests = result.inference.max_concurrent_requests
    capacity = gpu_spec("A100").memory_bytes - CUDA_CONTEXT_BYTES_RANGE[1]
    assert requests >= 1
    assert inference_memory(cfg, requests, 8192).total <= capacity
    assert inference_memory(cfg, requests + 1, 8192).total > capacity


def test_model_whose_weights_alone_overflow_the_gpu_serves_no_requests():
    result = estimate(get_model("llama-2-70b"), seq_len=4096, gpu="H100")
    assert result.inference.max_concurrent_requests == 0


def test_model_that_does_not_fit_says_so(capsys):
    assert main(["estimate", "llama-2-70b", "--gpu", "H100", "--optimizer", "adamw"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit: short by" in out
    assert estimate(get_model("llama-2-70b"), gpu="H100").training_memory.fits is False


def test_small_model_fits_and_says_how_much_is_spare(capsys):
    assert main(["estimate", "gpt2", "--gpu", "A100"]) == 0
    assert "fits, " in capsys.readouterr().out
    assert estimate(get_model("gpt2"), gpu="A100").training_memory.fits is True


def test_default_sequence_is_the_model_context_capped_at_2048():
    assert default_seq_len(get_model("gpt2")) == 1024
    assert default_seq_len(get_model("mistral-7b")) == 2048
    assert estimate(get_model("gpt2")).workload.seq_len == 1024


def test_causal_flag_halves_the_attention_in_every_flops_figure(capsys):
    cfg = get_model("gpt2")
    result = _run_json(capsys, "gpt2", "--causal")
    assert result["flops"]["model_per_step"] == train_flops(cfg, 1, 1024, causal=True).model
    assert "causal attention halved" in render_estimate(estimate(cfg, causal=True))


def test_render_is_a_pure_function_of_the_result(capsys):
    result = estimate(get_model("llama-2-7b"), seq_len=4096)
    assert render_estimate(result) == render_estimate(result)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, named", [
    (["no-such-model"], "'no-such-model'"),
    (["gpt2", "--gpu", "X100"], "'X100'"),
    (["gpt2", "--batch", "0"], "--batch must be a positive integer, got 0"),
    (["gpt2", "--seq", "-5"], "--seq must be a positive integer, got -5"),
    (["gpt2", "--seq", "4096"], "seq_len=4096"),
    (["gpt2", "--mfu", "1.5"], "--mfu must be a fraction in (0, 1]"),
    (["gpt2", "--mfu", "0"], "--mfu must be a fraction in (0, 1]"),
    (["llama-2-7b", "--tp", "3", "--num-gpus", "3"], "tp=3 does not divide num_heads=32"),
    (["gpt2", "--num-gpus", "3", "--tp", "2"], "num_gpus=3"),
    (["gpt2", "--recompute", "sometimes"], "'sometimes'"),
    (["gpt2", "--zero", "5"], "--zero must be one of 0, 1, 2, 3; got 5"),
    (["llama-2-7b", "--gpu", "V100"], "precisions it runs: fp32, fp16-mixed"),
    ([], "name a model"),
])
def test_bad_input_exits_2_with_one_line_naming_the_value(capsys, argv, named):
    assert main(["estimate", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert captured.err.count("\n") == 1
    assert named in captured.err


def test_missing_config_file_exits_2_naming_the_file(tmp_path: Path, capsys):
    missing = tmp_path / "config.json"
    assert main(["estimate", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_non_numeric_flag_is_refused_by_the_parser_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "gpt2", "--batch", "two"])
    assert exit_info.value.code == 2
    assert "'two'" in capsys.readouterr().err


# -- communication and parallel memory ----------------------------------------------------------


def test_communication_bounds_the_gradient_all_reduce_at_the_nvlink_bandwidth(capsys):
    cfg = get_model("llama-2-7b")
    result = _run_json(capsys, "llama-2-7b", "--gpu", "H100", "--num-gpus", "8", "--seq", "4096")
    comm = result["communication"]
    gradients = cfg.num_params() * 4  # bf16-mixed reduces fp32 gradients
    data = comm["data_parallel"]
    assert data["payload_bytes"] == {"all_reduce": gradients, "all_gather": 0,
                                     "reduce_scatter": 0}
    # A ring all-reduce over 8 GPUs sends 2 * 7/8 of the buffer from every GPU; H100 NVLink 4
    # carries 450 GB/s each way.
    assert data["bytes_sent_per_gpu"] == pytest.approx(1.75 * gradients)
    assert comm["link_bandwidth_bytes_per_s"] == 450e9
    assert comm["seconds_lower_bound"] == pytest.approx(1.75 * gradients / 450e9)
    assert comm["tensor_parallel"] is None and comm["pipeline_parallel"] is None
    step = result["time"]["step_seconds"]
    assert comm["compute_seconds"] == step
    bound = comm["seconds_lower_bound"]
    assert comm["share_without_overlap"] == pytest.approx(bound / (bound + step))


def test_gradient_accumulation_divides_ddp_traffic_per_micro_step(capsys):
    one = _run_json(capsys, "gpt2", "--num-gpus", "4")["communication"]["data_parallel"]
    eight = _run_json(capsys, "gpt2", "--num-gpus", "4",
                      "--grad-accum", "8")["communication"]["data_parallel"]
    assert eight["payload_bytes"] == one["payload_bytes"]
    assert eight["payload_bytes_per_micro_step"] == one["payload_bytes_per_micro_step"] / 8


def test_tensor_and_pipeline_traffic_appear_when_the_layout_uses_them(capsys):
    cfg = get_model("llama-2-13b")
    comm = _run_json(capsys, "llama-2-13b", "--gpu", "H200", "--num-gpus", "16", "--tp", "4",
                     "--pp", "2", "--batch", "2", "--seq", "4096", "--grad-accum", "8",
                     "--zero", "1")["communication"]
    activation = 2 * 4096 * cfg.hidden_size * 2  # b * s * h bf16 elements
    tensor = comm["tensor_parallel"]
    # 4 all-reduces per layer and micro-batch, 20 layers per stage, 8 micro-batches.
    assert tensor["payload_bytes"]["all_reduce"] == 8 * 20 * 4 * activation
    assert tensor["bytes_sent_per_gpu"] == pytest.approx(1.5 * 8 * 20 * 4 * activation)
    assert comm["pipeline_parallel"]["bytes_sent_per_gpu"] == 2 * 8 * activation
    data = comm["data_parallel"]
    assert data["ranks"] == 2 and data["zero_stage"] == 1
    assert data["payload_bytes"]["reduce_scatter"] == 4 * data["params_per_gpu"]
    assert data["payload_bytes"]["all_gather"] == 2 * data["params_per_gpu"]
    parts = [tensor, comm["pipeline_parallel"], data]
    assert comm["seconds_lower_bound"] == pytest.approx(
        sum(part["seconds_lower_bound"] for part in parts))


def test_link_bandwidth_flag_replaces_the_gpu_figure(capsys):
    comm = _run_json(capsys, "gpt2", "--num-gpus", "2",
                     "--link-bandwidth", "50")["communication"]
    assert comm["link_bandwidth_bytes_per_s"] == 50e9
    assert comm["link_source"] == "--link-bandwidth"


def test_a_gpu_without_a_link_figure_leaves_the_time_bounds_open(capsys):
    result = _run_json(capsys, "gpt2", "--gpu", "MI250X", "--num-gpus", "2")
    comm = result["communication"]
    assert comm["link_bandwidth_bytes_per_s"] is None
    assert comm["seconds_lower_bound"] is None and comm["share_without_overlap"] is None
    assert comm["data_parallel"]["bytes_sent_per_gpu"] > 0
    assert "no link bandwidth known: pass --link-bandwidth" in render_estimate(
        estimate(get_model("gpt2"), gpu="MI250X", num_gpus=2))


def test_more_gpus_than_a_node_notes_that_the_network_is_slower(capsys):
    notes = _run_json(capsys, "gpt2", "--num-gpus", "16")["notes"]
    assert any("span more than one 8-GPU node" in note for note in notes)
    assert not _run_json(capsys, "gpt2", "--num-gpus", "16", "--link-bandwidth", "50")["notes"]


def test_parallel_memory_shows_what_each_kind_of_parallelism_divides(capsys):
    rows = {row["layout"]: row for row in _run_json(
        capsys, "llama-2-7b", "--num-gpus", "8", "--tp", "2", "--zero", "3",
        "--seq", "4096")["parallel_memory"]}
    assert list(rows) == ["1 GPU", "DP=8, ZeRO 3", "TP=8", "PP=8",
                          "chosen: DP=4, TP=2, PP=1, ZeRO 3"]
    alone, zero3, tensor, pipeline = (rows[k] for k in ("1 GPU", "DP=8, ZeRO 3", "TP=8", "PP=8"))
    cfg = get_model("llama-2-7b")
    assert alone["model_state_bytes"] == 20 * cfg.num_params()  # bf16-mixed with AdamW
    # ZeRO 3 shards every model state over the 8 replicas but leaves activations alone.
    assert zero3["model_state_bytes"] == pytest.approx(alone["model_state_bytes"] / 8, rel=1e-6)
    assert zero3["activation_bytes"] == alone["activation_bytes"]
    # Tensor parallelism splits the activations too; the first pipeline stage keeps them all.
    assert tensor["activation_bytes"] < alone["activation_bytes"]
    assert pipeline["activation_bytes"] >= alone["activation_bytes"] * 0.9
    assert pipeline["model_state_bytes"] < alone["model_state_bytes"] / 7
    chosen = training_memory(cfg, 1, 4096, "bf16-mixed", "adamw", "none", 2, 1, False,
                             flash_attention=True, zero_stage=3, dp=4)
    assert rows["chosen: DP=4, TP=2, PP=1, ZeRO 3"]["total_bytes"] == chosen.total


def test_the_chosen_layout_is_marked_where_it_is_one_of_the_pure_ones(capsys):
    rows = _run_json(capsys, "gpt2", "--num-gpus", "4")["parallel_memory"]
    assert [row["layout"] for row in rows] == ["1 GPU", "DP=4, ZeRO 0 (chosen)", "TP=4", "PP=4"]


def test_a_layout_the_model_cannot_take_says_why(capsys):
    rows = _run_json(capsys, "llama-2-13b", "--num-gpus", "16")["parallel_memory"]
    impossible = {row["layout"]: row["not_possible"] for row in rows if "not_possible" in row}
    assert impossible["TP=16"].startswith("tp=16 does not divide num_heads=40")
    assert impossible["PP=16"].startswith("pp=16 does not divide num_layers=40")


def test_the_tables_show_the_communication_and_parallel_memory_sections(capsys):
    assert main(["estimate", "llama-2-7b", "--num-gpus", "8", "--tp", "2"]) == 0
    out = capsys.readouterr().out
    assert "Per-GPU training memory by parallelism" in out
    assert "Communication per optimizer step, bandwidth bounds (450 GB/s per direction" in out
    assert "tensor parallel over 2 (activations)" in out


def test_a_bad_link_bandwidth_exits_2_naming_the_flag(capsys):
    assert main(["estimate", "gpt2", "--link-bandwidth", "0"]) == 2
    assert "--link-bandwidth must be a positive number of GB/s, got 0.0" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="link_bandwidth must be a positive finite number"):
        estimate(get_model("gpt2"), link_bandwidth=-1.0)


def test_json_is_the_estimate_as_plain_data(capsys):
    printed = _run_json(capsys, "llama-2-7b", "--num-gpus", "8", "--tp", "2", "--pp", "2")
    result = estimate(get_model("llama-2-7b"), num_gpus=8, tp=2, pp=2)
    assert printed == json.loads(json.dumps(result.to_dict()))
    assert list(printed) == ["model", "workload", "parameters", "flops", "training_memory",
                             "parallel", "parallel_memory", "communication", "time", "inference",
                             "sizing", "notes"]


def test_the_estimate_is_frozen():
    result = estimate(get_model("gpt2"))
    with pytest.raises(AttributeError):
        result.workload.seq_len = 2  # type: ignore[misc]


# -- Hugging Face model directories and architectures beyond the dense block ---------------------

QWEN3_MOE_TINY = {  # Qwen3-30B-A3B's shape, shrunk: 4 layers, 16 experts of which 4 per token
    "model_type": "qwen3_moe", "hidden_size": 256, "intermediate_size": 768,
    "moe_intermediate_size": 96, "num_attention_heads": 8, "num_key_value_heads": 2,
    "head_dim": 64, "num_hidden_layers": 4, "num_experts": 16, "num_experts_per_tok": 4,
    "vocab_size": 1024, "max_position_embeddings": 4096, "mlp_only_layers": [],
    "decoder_sparse_step": 1, "tie_word_embeddings": False, "norm_topk_prob": True,
}


def test_a_model_directory_estimates_total_and_active_parameters(tmp_path: Path, capsys):
    folder = tmp_path / "qwen3-moe-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_MOE_TINY))
    assert main(["estimate", "--config", str(folder), "--seq", "512"]) == 0
    out = capsys.readouterr().out
    cfg = load_hf_config(folder)
    assert f"{cfg.num_params():,}" in out
    assert f"active per token (top-k experts)  {format_count(cfg.active_params())}" in out
    assert "active parameters only" in out
    assert "route each token to 4 of 16 experts" in out
    result = _run_json(capsys, "--config", str(folder), "--seq", "512")
    assert result["parameters"]["active"] == cfg.active_params() < cfg.num_params()
    assert result["flops"]["six_nd_per_step"] == six_nd(cfg.active_params(), 512)
    assert result["model"]["moe"]["num_experts"] == 16


def test_a_directory_without_config_json_exits_2_saying_what_to_pass(tmp_path: Path, capsys):
    assert main(["estimate", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "has no config.json" in err


def test_an_unknown_key_is_refused_until_the_user_vouches_for_it(tmp_path: Path, capsys):
    path = tmp_path / "tinyllama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**TINY_LLAMA, "my_lab_flag": 1}))
    assert main(["estimate", "--config", str(path)]) == 2
    assert "my_lab_flag" in capsys.readouterr().err
    result = _run_json(capsys, "--config", str(path), "--ignore-key", "my_lab_flag")
    assert result["parameters"]["total"] == 1_100_048_384


def test_ignore_key_without_a_config_is_refused(capsys):
    assert main(["estimate", "gpt2", "--ignore-key", "x"]) == 2
    assert "--ignore-key applies to --config" in capsys.readouterr().err


def test_sliding_windows_are_noted_and_shrink_the_kv_cache(capsys):
    result = _run_json(capsys, "mistral-7b", "--seq", "16384")
    assert any("sliding windows: 32 layers attend to the last 4,096 tokens" in note
               for note in result["notes"])
    cfg = get_model("mistral-7b")
    assert result["inference"]["kv_cache_bytes_per_request"] == kv_cache_bytes(cfg, 1, 4096)
