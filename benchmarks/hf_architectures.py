"""Published architectures against transformers: parameters and training FLOPs of
`harness.load_hf_config`'s reading of each model's config.json beside those of the model
transformers builds from the same file, on the meta device (CPU only, no weights, no network).

    python -m benchmarks.hf_architectures [--seq 256] [--only NAME ...]

The config.json files are written out below as published on the Hugging Face hub (keys that do
not describe the architecture included, as the loader must accept them). transformers counts
parameters with `sum(p.numel())` (tied weights once) and FLOPs with FlopCounterMode over one
forward and backward of batch 1 x seq tokens, attention eager (FlopCounterMode sees its matmuls
on any device) and experts as `batched_mm` (each token through its top_k experts); the harness
side is `TransformerConfig.num_params()` and `flop_counter_flops(..., fused_attention=False)`.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from harness.gate.formatting import format_count, format_flops
from harness.theory.flops import flop_counter_flops
from harness.theory.hf import config_from_hf

_LLAMA_TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
                 "torch_dtype": "bfloat16", "use_cache": True, "attention_dropout": 0.0}

# name -> config.json as published (transformers_version and similar left as they were).
PUBLISHED: dict[str, dict[str, Any]] = {
    "Llama-3-8B": {
        **_LLAMA_TOKENS, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 8192,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
        "attention_bias": False, "transformers_version": "4.40.0.dev0"},
    "Mistral-7B-v0.1": {
        **_LLAMA_TOKENS, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000},
    "Mistral-Nemo-Base-2407": {
        **_LLAMA_TOKENS, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 14336,
        "max_position_embeddings": 1024000, "num_attention_heads": 32, "num_hidden_layers": 40,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 131072},
    "Mixtral-8x7B-v0.1": {
        **_LLAMA_TOKENS, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "num_attention_heads": 32, "num_experts_per_tok": 2,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1e6,
        "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
        "vocab_size": 32000},
    "Qwen2-7B": {
        **_LLAMA_TOKENS, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 131072,
        "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 131072, "tie_word_embeddings": False, "use_sliding_window": False,
        "vocab_size": 152064},
    "Qwen1.5-MoE-A2.7B": {
        **_LLAMA_TOKENS, "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
        "bos_token_id": 151643, "eos_token_id": 151643, "decoder_sparse_step": 1,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632,
        "max_position_embeddings": 8192, "max_window_layers": 21,
        "moe_intermediate_size": 1408, "norm_topk_prob": False, "num_attention_heads": 16,
        "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24,
        "num_key_value_heads": 16, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 5632, "sliding_window": 32768,
        "tie_word_embeddings": False, "use_sliding_window": False, "vocab_size": 151936},
    "Qwen3-0.6B": {
        **_LLAMA_TOKENS, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072,
        "max_position_embeddings": 40960, "max_window_layers": 28, "num_attention_heads": 16,
        "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
        "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936},
    "Qwen3-30B-A3B": {
        **_LLAMA_TOKENS, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645,
        "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 6144, "max_position_embeddings": 40960, "max_window_layers": 48,
        "mlp_only_layers": [], "moe_intermediate_size": 768, "norm_topk_prob": True,
        "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
        "use_sliding_window": False, "vocab_size": 151936},
    "Gemma-7B": {
        **_LLAMA_TOKENS, "architectures": ["GemmaForCausalLM"], "model_type": "gemma",
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "head_dim": 256,
        "hidden_act": "gelu", "hidden_size": 3072, "intermediate_size": 24576,
        "max_position_embeddings": 8192, "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 16, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 10000.0, "vocab_size": 256000},
    "Gemma-2-9B": {
        **_LLAMA_TOKENS, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "attention_bias": False, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
        "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0,
        "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584,
        "intermediate_size": 14336, "max_position_embeddings": 8192,
        "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8,
        "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000},
    "Gemma-3-1B": {
        **_LLAMA_TOKENS, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "attention_bias": False, "attn_logit_softcapping": None, "bos_token_id": 2,
        "cache_implementation": "hybrid", "eos_token_id": [1, 106],
        "final_logit_softcapping": None, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
        "intermediate_size": 6912, "max_position_embeddings": 32768,
        "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
        "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144},
    "OLMo-2-1124-7B": {
        **_LLAMA_TOKENS, "architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2",
        "attention_bias": False, "bos_token_id": None, "eos_token_id": 100257,
        "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
        "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 32, "pad_token_id": 100277, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False,
        "vocab_size": 100352},
    "Phi-2": {
        **_LLAMA_TOKENS, "architectures": ["PhiForCausalLM"], "model_type": "phi",
        "bos_token_id": 50256, "eos_token_id": 50256, "embd_pdrop": 0.0,
        "hidden_act": "gelu_new", "hidden_size": 2560, "intermediate_size": 10240,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
        "qk_layernorm": False, "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "vocab_size": 51200},
    "Phi-3-mini-4k": {
        **_LLAMA_TOKENS, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 3072,
        "intermediate_size": 8192, "max_position_embeddings": 4096,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "vocab_size": 32064},
    "Pythia-1.4B": {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "bos_token_id": 0,
        "eos_token_id": 0, "hidden_act": "gelu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "num_attention_heads": 16, "num_hidden_layers": 24, "rotary_emb_base": 10000,
        "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float16",
        "use_cache": True, "use_parallel_residual": True, "vocab_size": 50304},
    "OPT-1.3B": {
        "_remove_final_layer_norm": False, "activation_dropout": 0.0,
        "activation_function": "relu", "architectures": ["OPTForCausalLM"],
        "attention_dropout": 0.0, "bos_token_id": 2, "do_layer_norm_before": True,
        "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 8192, "hidden_size": 2048,
        "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048,
        "model_type": "opt", "num_attention_heads": 32, "num_hidden_layers": 24,
        "pad_token_id": 1, "prefix": "</s>", "torch_dtype": "float16", "use_cache": True,
        "vocab_size": 50272, "word_embed_proj_dim": 2048},
    "GPT-2": {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
        "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "vocab_size": 50257},
    "BLOOM-560m": {
        "apply_residual_connection_post_layernorm": False, "architectures": ["BloomForCausalLM"],
        "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_dropout": 0.0, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "masked_softmax_fusion": True, "model_type": "bloom",
        "n_embed": 1024, "n_head": 16, "n_inner": None, "n_layer": 24, "offset_alibi": 100,
        "pad_token_id": 3, "pretraining_tp": 1, "skip_bias_add": True,
        "skip_bias_add_qkv": False, "slow_but_exact": False, "unk_token_id": 0,
        "use_cache": True, "vocab_size": 250880},
    "DeepSeek-V2-Lite": {
        **_LLAMA_TOKENS, "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2", "attention_bias": False, "aux_loss_alpha": 0.001,
        "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10944,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 1408,
        "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
        "num_hidden_layers": 27, "num_key_value_heads": 16, "pretraining_tp": 1,
        "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 1.0,
        "scoring_func": "softmax", "seq_aux": True, "tie_word_embeddings": False,
        "topk_group": 1, "topk_method": "greedy", "v_head_dim": 128, "vocab_size": 102400},
    "DeepSeek-V3": {
        **_LLAMA_TOKENS, "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3", "attention_bias": False, "aux_loss_alpha": 0.001,
        "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "intermediate_size": 18432,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048,
        "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
        "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
        "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid", "tie_word_embeddings": False, "topk_group": 4,
        "topk_method": "noaux_tc", "v_head_dim": 128, "vocab_size": 129280},
}


def transformers_counts(data: dict[str, Any], seq_len: int) -> tuple[int, int]:
    """(parameters, FlopCounterMode FLOPs of one forward + backward of 1 x seq_len tokens) of
    the model transformers builds from `data` on the meta device."""
    import torch
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    transformers.logging.set_verbosity_error()  # e.g. Gemma's note on its legacy "gelu"
    fields = {key: value for key, value in data.items() if key != "model_type"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = transformers.AutoConfig.for_model(data["model_type"], **fields)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(
                hf_config, attn_implementation="eager", experts_implementation="batched_mm")
    params = sum(p.numel() for p in model.parameters())
    ids = torch.zeros((1, seq_len), dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids).logits.float().sum().backward()
    return params, int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 1 when any count differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help=f"models to check (default all: {', '.join(PUBLISHED)})")
    args = parser.parse_args(argv)
    names = args.only or list(PUBLISHED)
    unknown = sorted(set(names) - set(PUBLISHED))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(PUBLISHED)}")
    header = ("model", "model_type", "params (harness)", "params (transformers)", "active",
              "train FLOPs (harness)", "FlopCounterMode", "diff")
    rows = []
    all_equal = True
    for name in names:
        data = PUBLISHED[name]
        started = time.perf_counter()
        cfg = config_from_hf(data, name=name)
        params, counted = transformers_counts(data, args.seq)
        ours = flop_counter_flops(cfg, 1, args.seq, fused_attention=False)
        equal = cfg.num_params() == params and ours == counted
        all_equal &= equal
        diff = "exact" if equal else (f"params {cfg.num_params() - params:+,}, FLOPs "
                                      f"{(ours - counted) / counted:+.4%}")
        rows.append((name, data["model_type"], f"{cfg.num_params():,}", f"{params:,}",
                     format_count(cfg.active_params()), format_flops(ours),
                     format_flops(counted), diff))
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"\nbatch 1 x {args.seq} tokens, forward + backward, meta device; FLOPs exact to the "
          f"FLOP where the diff says exact")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
