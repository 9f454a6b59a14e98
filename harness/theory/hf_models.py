"""One reader per Hugging Face `model_type`: the keys transformers 5 reads to build that model,
with its defaults, mapped onto a `TransformerConfig`.

Each reader follows the modeling file of its type (which modules exist, their widths and
biases, which layers hold experts or a sliding window) and refuses values whose model
`TransformerConfig` cannot describe, naming the key (`ConfigKeys.require_value`). The key
bookkeeping lives in `harness.theory.hf_keys`; the public entry points in `harness.theory.hf`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.theory.config import TransformerConfig
from harness.theory.hf_keys import ConfigKeys
from harness.theory.mla import MLA
from harness.theory.moe import MoE

# `activation_function` / `hidden_act` of plain (two-matrix) MLPs: transformers' ACT2FN names.
PLAIN_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu", "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
# `hidden_act` of gated MLPs (LLaMA style): the activation of the gate.
GATED_ACTIVATIONS: dict[str, str] = {
    "silu": "swiglu", "swish": "swiglu",
    "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu",
}
# BLOOM's config.json has no position limit (ALiBi has no table); its models were trained on
# 2048-token sequences (BigScience 2022), which `seq_length` states where present.
BLOOM_TRAINING_SEQ_LEN = 2048

Fields = dict[str, Any]
_FALSE = (False,)


def _core(k: ConfigKeys) -> Fields:
    """The sizes every LLaMA-style config names with the same keys."""
    return dict(num_layers=k.positive("num_hidden_layers"), hidden_size=k.positive("hidden_size"),
                num_heads=k.positive("num_attention_heads"), vocab_size=k.positive("vocab_size"),
                max_position_embeddings=k.positive("max_position_embeddings"))


def _kv_heads(k: ConfigKeys, heads: int, default: int | None = None) -> int:
    """num_key_value_heads: absent is the type's default (None: heads), null is heads."""
    value = k.optional_int("num_key_value_heads", default, null=heads)
    return heads if value is None else value


def _head_dim(k: ConfigKeys, default: int | None = None) -> int:
    """head_dim: absent is the type's default (None: hidden / heads, which 0 asks for)."""
    value = k.optional_int("head_dim", default)
    return 0 if value is None else value


def _no_attention_bias(k: ConfigKeys) -> None:
    # These types put attention_bias on q, k, v and the output projection but never on the
    # MLP; TransformerConfig.bias covers the output projection and the MLP together.
    k.require_value("attention_bias", _FALSE, "it adds biases to q, k, v and the output "
                    "projection while the MLP has none, which TransformerConfig cannot express")


def _gated(k: ConfigKeys, key: str = "hidden_act", default: str = "silu") -> str:
    return k.choice(key, default, GATED_ACTIVATIONS)


def _gemma_activation(k: ConfigKeys, default_key: str) -> str:
    """Gemma configs spell the activation `hidden_act` or `hidden_activation` (both may be
    present); every spelling must name a gated GELU."""
    mlp = _gated(k, default_key, "gelu_pytorch_tanh")
    other = "hidden_activation" if default_key == "hidden_act" else "hidden_act"
    if k.has(other) and _gated(k, other, "gelu_pytorch_tanh") != mlp:
        raise ValueError(f"config.json has {default_key} and {other} naming different MLPs")
    return mlp


def _all_windowed(k: ConfigKeys, default: int | None) -> Fields:
    """Every layer attends through `sliding_window` (Mistral, Mixtral, Phi-3); null: none."""
    return dict(sliding_window=k.optional_int("sliding_window", default, null=None))


def _windows_from_layer_types(k: ConfigKeys, window: int | None, num_layers: int,
                              sliding: Callable[[int], bool]) -> Fields:
    """A window on the layers `layer_types` marks sliding (default: those `sliding` picks)."""
    kinds = k.layer_types(num_layers)
    if window is None:
        return {}
    if kinds is None:
        kinds = tuple("sliding_attention" if sliding(i) else "full_attention"
                      for i in range(num_layers))
    if "sliding_attention" not in kinds:
        return {}
    return dict(sliding_window=window,
                global_layers=tuple(i for i, kind in enumerate(kinds)
                                    if kind == "full_attention"))


def _qwen_windows(k: ConfigKeys, num_layers: int, moe_rule: bool = False) -> Fields:
    """Qwen2/Qwen3: windows only with use_sliding_window; by default on layers from
    max_window_layers on (Qwen2-MoE: every other layer below max_window_layers)."""
    use = k.flag("use_sliding_window", False)
    # transformers stores 0 (Qwen2-MoE) or null for "no window" when use_sliding_window is off.
    window = None if k.get("sliding_window", 4096) == 0 else k.optional_int("sliding_window",
                                                                         4096, null=None)
    first = k.non_negative_int("max_window_layers", 28)
    if moe_rule:
        return _windows_from_layer_types(k, window if use else None, num_layers,
                                         lambda i: bool((i + 1) % 2) and i < first)
    return _windows_from_layer_types(k, window if use else None, num_layers,
                                     lambda i: i >= first)


def _gemma_windows(k: ConfigKeys, num_layers: int, pattern: int) -> Fields:
    """Gemma 2/3: every `pattern`-th layer global, the others sliding (4096 by default)."""
    k.require_value("use_bidirectional_attention", _FALSE,
                    "attention without a causal mask is an encoder, not a decoder")
    window = k.optional_int("sliding_window", 4096, null=None)
    return _windows_from_layer_types(k, window, num_layers, lambda i: bool((i + 1) % pattern))


def _qwen_moe(k: ConfigKeys, num_layers: int, experts: int, top_k: int, width: int,
              shared: int | None = None) -> MoE | None:
    """Experts on layers not in mlp_only_layers whose (index + 1) is a multiple of
    decoder_sparse_step; None when every layer stays dense."""
    step = k.positive("decoder_sparse_step", 1)
    dense_only = set(k.layer_list("mlp_only_layers"))
    dense = tuple(i for i in range(num_layers) if i in dense_only or (i + 1) % step)
    if len(dense) == num_layers:
        return None
    return MoE(num_experts=experts, top_k=top_k, expert_ffn_hidden_size=width,
               num_shared_experts=0 if shared is None else 1, shared_ffn_hidden_size=shared,
               shared_expert_gate=shared is not None, dense_layers=dense)


def llama(k: ConfigKeys) -> Fields:
    """LlamaForCausalLM: RMSNorm, RoPE, gated MLP; attention_bias and mlp_bias together."""
    core = _core(k)
    attention_bias = k.flag("attention_bias", False)
    mlp_bias = k.flag("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ValueError(
            f"config.json has attention_bias={attention_bias} but mlp_bias={mlp_bias}; "
            f"TransformerConfig.bias covers the attention output and the MLP together, so "
            f"only equal values (both true or both false) are supported")
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"]), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=attention_bias,
                qkv_bias=attention_bias)


def mistral(k: ConfigKeys) -> Fields:
    """MistralForCausalLM: LLaMA without biases; every layer windowed (4096 by default)."""
    core = _core(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 8), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                **_all_windowed(k, 4096))


def mixtral(k: ConfigKeys) -> Fields:
    """MixtralForCausalLM: Mistral with num_local_experts experts of intermediate_size on
    every layer, num_experts_per_tok per token, no shared expert."""
    fields = mistral(k)
    width = fields["ffn_hidden_size"]
    fields.update(moe=MoE(num_experts=k.positive("num_local_experts", 8),
                          top_k=k.positive("num_experts_per_tok", 2), expert_ffn_hidden_size=width),
                  **_all_windowed(k, None))
    return fields


def qwen2(k: ConfigKeys) -> Fields:
    """Qwen2ForCausalLM: biases on q, k, v only."""
    core = _core(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 32), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                qkv_bias=True, **_qwen_windows(k, core["num_layers"]))


def qwen2_moe(k: ConfigKeys) -> Fields:
    """Qwen2MoeForCausalLM: q, k, v biases (qkv_bias), routed experts plus one gated shared
    expert."""
    core = _core(k)
    moe = _qwen_moe(k, core["num_layers"], k.positive("num_experts", 60),
                    k.positive("num_experts_per_tok", 4), k.positive("moe_intermediate_size", 1408),
                    shared=k.positive("shared_expert_intermediate_size", 5632))
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 16), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size", 5632), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                qkv_bias=k.flag("qkv_bias", True), moe=moe,
                **_qwen_windows(k, core["num_layers"], moe_rule=True))


def qwen3(k: ConfigKeys) -> Fields:
    """Qwen3ForCausalLM: head_dim 128 by default, per-head RMSNorm on queries and keys."""
    core = _core(k)
    _no_attention_bias(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 32),
                head_dim=_head_dim(k, 128), ffn_hidden_size=k.positive("intermediate_size"),
                mlp=_gated(k), tied_embeddings=k.flag("tie_word_embeddings", False),
                bias=False, qk_norm="head", **_qwen_windows(k, core["num_layers"]))


def qwen3_moe(k: ConfigKeys) -> Fields:
    """Qwen3MoeForCausalLM: Qwen3 attention, routed experts without a shared one; a window
    on every layer when use_sliding_window."""
    core = _core(k)
    _no_attention_bias(k)
    moe = _qwen_moe(k, core["num_layers"], k.positive("num_experts", 128),
                    k.positive("num_experts_per_tok", 8), k.positive("moe_intermediate_size", 768))
    window = k.optional_int("sliding_window", 4096, null=None)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 4), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size", 6144), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                qk_norm="head", moe=moe,
                sliding_window=window if k.flag("use_sliding_window", False) else None)


def gemma(k: ConfigKeys) -> Fields:
    """GemmaForCausalLM: head_dim 256 by default, gated GELU, tied embeddings."""
    core = _core(k)
    _no_attention_bias(k)
    k.require_value("use_bidirectional_attention", _FALSE,
                    "attention without a causal mask is an encoder, not a decoder")
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 16),
                head_dim=_head_dim(k, 256), ffn_hidden_size=k.positive("intermediate_size"),
                mlp=_gemma_activation(k, "hidden_act"),
                tied_embeddings=k.flag("tie_word_embeddings", True), bias=False)


def gemma2(k: ConfigKeys, pattern: int = 2, qk_norm: str = "none") -> Fields:
    """Gemma2ForCausalLM: sandwich norms, every second layer global (window 4096)."""
    core = _core(k)
    _no_attention_bias(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"], 4),
                head_dim=_head_dim(k, 256), ffn_hidden_size=k.positive("intermediate_size"),
                mlp=_gemma_activation(k, "hidden_activation"),
                tied_embeddings=k.flag("tie_word_embeddings", True), bias=False,
                norm_placement="sandwich", qk_norm=qk_norm,
                **_gemma_windows(k, core["num_layers"], pattern))


def gemma3_text(k: ConfigKeys) -> Fields:
    """Gemma3ForCausalLM: Gemma 2 with per-head query/key norms and every
    sliding_window_pattern-th layer global (6 by default)."""
    return gemma2(k, pattern=k.positive("sliding_window_pattern", 6), qk_norm="head")


def olmo2(k: ConfigKeys) -> Fields:
    """Olmo2ForCausalLM: norms after attention and MLP (no pre-norms), RMSNorm over all query
    and all key channels."""
    core = _core(k)
    _no_attention_bias(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"]), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                norm_placement="post", qk_norm="full")


def phi(k: ConfigKeys) -> Fields:
    """PhiForCausalLM (Phi-1/2): one LayerNorm feeding attention and MLP in parallel, biases
    everywhere, an output layer with bias; qk_layernorm adds per-head LayerNorms."""
    core = _core(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"]), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"),
                mlp=k.choice("hidden_act", "gelu_new", PLAIN_ACTIVATIONS),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=True,
                output_bias=True, parallel_residual=True, norm_placement="single",
                qk_norm="head" if k.flag("qk_layernorm", False) else "none")


def phi3(k: ConfigKeys) -> Fields:
    """Phi3ForCausalLM: LLaMA with fused qkv and gate/up matrices (same sizes), every layer
    windowed when sliding_window is set."""
    core = _core(k)
    return dict(core, num_kv_heads=_kv_heads(k, core["num_heads"]), head_dim=_head_dim(k),
                ffn_hidden_size=k.positive("intermediate_size"), mlp=_gated(k),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=False,
                **_all_windowed(k, None))


def gpt_neox(k: ConfigKeys) -> Fields:
    """GPTNeoXForCausalLM (Pythia): LayerNorms and biases, fused qkv of 3h, parallel residual
    with two norms by default, untied output layer."""
    core = _core(k)
    k.require_value("attention_bias", (True,), "the attention would lose its biases while the "
                    "MLP and LayerNorms keep theirs, which TransformerConfig cannot express")
    return dict(core, ffn_hidden_size=k.positive("intermediate_size"),
                mlp=k.choice("hidden_act", "gelu", PLAIN_ACTIVATIONS),
                tied_embeddings=k.flag("tie_word_embeddings", False), bias=True,
                norm="layernorm", parallel_residual=k.flag("use_parallel_residual", True))


def opt(k: ConfigKeys) -> Fields:
    """OPTForCausalLM: pre-LayerNorm GPT with learned positions offset by 2, tied output."""
    hidden = k.positive("hidden_size")
    k.require_value("do_layer_norm_before", (True,), "post-LayerNorm OPT (350m) has no final "
                    "norm, which TransformerConfig does not model")
    k.require_value("_remove_final_layer_norm", _FALSE, "it drops the final LayerNorm")
    k.require_value("word_embed_proj_dim", (hidden,), "embeddings narrower than hidden_size "
                    "add project_in/project_out matrices (OPT-350m), which are not modelled")
    k.require_value("enable_bias", (True,), "the linear layers lose their biases while the "
                    "LayerNorms keep theirs")
    k.require_value("layer_norm_elementwise_affine", (True,), "LayerNorms without weights")
    k.require_value("layerdrop", (0, 0.0), "layers skipped at random change the FLOPs of a step")
    return dict(num_layers=k.positive("num_hidden_layers"), hidden_size=hidden,
                num_heads=k.positive("num_attention_heads"), vocab_size=k.positive("vocab_size"),
                max_position_embeddings=k.positive("max_position_embeddings"),
                ffn_hidden_size=k.positive("ffn_dim"),
                mlp=k.choice("activation_function", "relu", PLAIN_ACTIVATIONS),
                tied_embeddings=k.flag("tie_word_embeddings", True), bias=True,
                position="learned", position_offset=2)


def gpt2(k: ConfigKeys) -> Fields:
    """GPT2LMHeadModel: learned positions, LayerNorm, biases, 4h MLP unless n_inner."""
    n_inner = k.optional_int("n_inner")  # null or absent: 4 * n_embd (GPT2MLP)
    return dict(num_layers=k.positive("n_layer"), hidden_size=k.positive("n_embd"),
                num_heads=k.positive("n_head"), vocab_size=k.positive("vocab_size"),
                ffn_hidden_size=n_inner,
                mlp=k.choice("activation_function", "gelu_new", PLAIN_ACTIVATIONS),
                tied_embeddings=k.flag("tie_word_embeddings", True), bias=True,
                norm="layernorm", position="learned",
                max_position_embeddings=k.positive("n_positions"))


def bloom(k: ConfigKeys) -> Fields:
    """BloomForCausalLM: ALiBi, a LayerNorm after the embedding, 4h MLP, tied output."""
    # Small BLOOMs spell the width `n_embed`, the larger ones `hidden_size`.
    width_key = "hidden_size" if k.has("hidden_size") else "n_embed"
    k.read.add("n_embed")
    return dict(num_layers=k.positive("n_layer"), hidden_size=k.positive(width_key),
                num_heads=k.positive("n_head"), vocab_size=k.positive("vocab_size"),
                ffn_hidden_size=None, mlp="gelu",
                tied_embeddings=k.flag("tie_word_embeddings", True), bias=True,
                norm="layernorm", position="alibi",
                max_position_embeddings=k.positive("seq_length", BLOOM_TRAINING_SEQ_LEN),
                embedding_norm=True)


def deepseek(k: ConfigKeys, v3: bool) -> Fields:
    """DeepseekV2/V3ForCausalLM: MLA attention; the first first_k_dense_replace layers dense
    (intermediate_size), the others n_routed_experts experts (num_experts_per_tok per token)
    plus n_shared_experts shared ones, all of moe_intermediate_size."""
    core = _core(k)
    heads, layers = core["num_heads"], core["num_layers"]
    kv_heads = _kv_heads(k, heads, 128 if v3 else None)
    if kv_heads != heads:
        raise ValueError(f"config.json has num_key_value_heads={kv_heads} but "
                         f"num_attention_heads={heads}; MLA expands its latent to every head")
    k.require_value("attention_bias", _FALSE, "it adds biases to the output projection while "
                    "the routed experts have none, which TransformerConfig cannot express")
    if not v3:
        k.require_value("mlp_bias", _FALSE, "it adds biases to the dense and shared MLPs but "
                        "not to the routed experts")
    # DeepSeek's own code puts experts on every moe_layer_freq-th layer; transformers ignores
    # the key (experts on every layer from first_k_dense_replace), so only 1 is unambiguous.
    k.require_value("moe_layer_freq", (1,), "transformers ignores it while DeepSeek's code "
                    "puts experts on every moe_layer_freq-th layer only")
    first_dense = k.non_negative_int("first_k_dense_replace", 3 if v3 else 0)
    top_k = k.positive("num_experts_per_tok", 8) if v3 else k.positive("num_experts_per_tok")
    moe = MoE(num_experts=k.positive("n_routed_experts", 256 if v3 else 64), top_k=top_k,
              expert_ffn_hidden_size=k.positive("moe_intermediate_size", 2048 if v3 else 1407),
              num_shared_experts=k.non_negative_int("n_shared_experts", 1 if v3 else 2),
              dense_layers=tuple(range(min(first_dense, layers))))
    mla = MLA(kv_lora_rank=k.positive("kv_lora_rank", 512),
              q_lora_rank=k.optional_int("q_lora_rank", 1536, null=None),
              qk_nope_head_dim=k.positive("qk_nope_head_dim", 128),
              qk_rope_head_dim=k.positive("qk_rope_head_dim", 64),
              v_head_dim=k.positive("v_head_dim", 128))
    return dict(core, ffn_hidden_size=k.positive("intermediate_size", 18432 if v3 else 11008),
                mlp=_gated(k), tied_embeddings=k.flag("tie_word_embeddings", False),
                bias=False, moe=moe if first_dense < layers else None, mla=mla)


_LLAMA_STYLE = dict(norm="rmsnorm", position="rope")
_READERS: dict[str, tuple[Callable[[ConfigKeys], Fields], Fields]] = {
    "llama": (llama, _LLAMA_STYLE),
    "mistral": (mistral, _LLAMA_STYLE),
    "qwen2": (qwen2, _LLAMA_STYLE),
    "gpt2": (gpt2, {}),
    "bloom": (bloom, {}),
    "mixtral": (mixtral, _LLAMA_STYLE),
    "qwen2_moe": (qwen2_moe, _LLAMA_STYLE),
    "qwen3": (qwen3, _LLAMA_STYLE),
    "qwen3_moe": (qwen3_moe, _LLAMA_STYLE),
    "gemma": (gemma, _LLAMA_STYLE),
    "gemma2": (gemma2, _LLAMA_STYLE),
    "gemma3_text": (gemma3_text, _LLAMA_STYLE),
    "olmo2": (olmo2, _LLAMA_STYLE),
    "phi": (phi, dict(norm="layernorm", position="rope")),
    "phi3": (phi3, _LLAMA_STYLE),
    "gpt_neox": (gpt_neox, dict(position="rope")),
    "opt": (opt, {}),
    "deepseek_v2": (lambda k: deepseek(k, v3=False), _LLAMA_STYLE),
    "deepseek_v3": (lambda k: deepseek(k, v3=True), _LLAMA_STYLE),
}
HF_MODEL_TYPES: tuple[str, ...] = tuple(_READERS)


def read_config(k: ConfigKeys, name: str) -> TransformerConfig:
    """The `TransformerConfig` of `k.model_type` (one of HF_MODEL_TYPES)."""
    reader, style = _READERS[k.model_type]
    return TransformerConfig(**style, **reader(k), name=name)
