"""Reading a Hugging Face config.json key by key, so that no key that could change the counts
is ever ignored.

`ConfigKeys` hands out typed values (with transformers' defaults where a key is absent) and
remembers every key it was asked for; `ConfigKeys.check_all_read` then refuses the keys that
were neither read nor known to leave parameters and FLOPs alone (`NEUTRAL_KEYS`,
`NEUTRAL_KEYS_BY_TYPE`). Unknown keys are an error, not a warning: a key this loader has never
heard of may add a module (cross-attention, a projection) that the counts would miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.checks import require_bool, require_positive_int, shown

# Keys of any model type that change neither parameters nor FLOPs: serialisation and identity,
# token ids, initialisation, dropout, norm epsilons, rotary frequencies and scaling (RoPE is
# elementwise, not counted), generation defaults, the auxiliary losses of routers, and
# `quantization_config` (the logical parameters are counted; their storage format is not).
NEUTRAL_KEYS: frozenset[str] = frozenset({
    "architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "name_or_path", "auto_map", "id2label", "label2id", "num_labels", "problem_type",
    "finetuning_task", "task_specific_params", "tokenizer_class", "prefix", "bos_token_id",
    "eos_token_id", "pad_token_id", "sep_token_id", "unk_token_id", "decoder_start_token_id",
    "use_cache", "initializer_range", "init_std", "output_attentions", "output_hidden_states",
    "return_dict", "use_return_dict", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "chunk_size_feed_forward", "is_decoder", "tie_encoder_decoder",
    "cross_attention_hidden_size", "attn_implementation", "_attn_implementation_autoset",
    "quantization_config", "cache_implementation", "rope_theta", "rope_scaling",
    "rope_parameters", "partial_rotary_factor", "attention_dropout", "hidden_dropout",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "activation_dropout",
    "classifier_dropout", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon",
    "pretraining_tp", "output_router_logits", "router_aux_loss_coef", "router_jitter_noise",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "max_new_tokens",
})

# Keys neutral for one model type only (each is read by transformers for something that is no
# matmul or no parameter: softcapping, score scales, routing rules, fusions, MTP heads, ...).
_ROUTING = ("norm_topk_prob", "routed_scaling_factor", "topk_method", "n_group", "topk_group",
            "scoring_func", "aux_loss_alpha", "seq_aux", "ep_size")
_GEMMA2 = ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar")
NEUTRAL_KEYS_BY_TYPE: dict[str, frozenset[str]] = {
    "gpt2": frozenset({"n_ctx", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                       "reorder_and_upcast_attn", "summary_activation", "summary_first_dropout",
                       "summary_proj_to_labels", "summary_type", "summary_use_proj"}),
    "bloom": frozenset({"apply_residual_connection_post_layernorm", "attention_softmax_in_fp32",
                        "bias_dropout_fusion", "masked_softmax_fusion", "offset_alibi",
                        "skip_bias_add", "skip_bias_add_qkv", "slow_but_exact",
                        "n_inner"}),  # BloomMLP is always 4h: transformers never reads n_inner
    "gpt_neox": frozenset({"rotary_pct", "rotary_emb_base"}),
    "phi3": frozenset({"original_max_position_embeddings"}),
    "gemma2": frozenset(_GEMMA2),
    "gemma3_text": frozenset({*_GEMMA2, "rope_local_base_freq"}),
    "qwen2_moe": frozenset(_ROUTING),
    # Qwen3-MoE puts a window on every layer (when use_sliding_window): max_window_layers,
    # which its published configs carry, is not read by transformers.
    "qwen3_moe": frozenset({*_ROUTING, "max_window_layers"}),
    # transformers overwrites head_dim with qk_rope_head_dim and derives qk_head_dim; the
    # multi-token-prediction module (num_nextn_predict_layers) is not built by transformers and
    # not counted here (DeepSeek-V3 trains with it: its cost comes on top).
    "deepseek_v2": frozenset({*_ROUTING, "head_dim", "qk_head_dim"}),
    "deepseek_v3": frozenset({*_ROUTING, "head_dim", "qk_head_dim", "rope_interleave",
                              "num_nextn_predict_layers"}),
}

# Spellings transformers maps onto another key (`attribute_map`) per model type.
ALIASES: dict[str, dict[str, str]] = {
    "gpt2": {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
             "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"},
    "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
    "gemma3_text": {"_sliding_window_pattern": "sliding_window_pattern"},
    "mixtral": {"num_experts": "num_local_experts"},
    "qwen3_moe": {"num_local_experts": "num_experts"},
    "deepseek_v2": {"num_experts": "n_routed_experts"},
    "deepseek_v3": {"num_local_experts": "n_routed_experts",
                    "num_mtp_layers": "num_nextn_predict_layers"},
}

_REQUIRED = object()
_AS_ABSENT = object()


class ConfigKeys:
    """A config.json dict of one model type, read through typed getters that remember each key.

    An absent key takes `default` (transformers' default for the type); without one it is an
    error naming the key. A null value counts as absent unless the getter is told what null
    means (`null=`): transformers passes it on, and some configs treat it apart from their
    default (a null sliding_window is no window, an absent one Mistral's 4096).
    """

    def __init__(self, data: Mapping[str, Any], model_type: str) -> None:
        self.model_type = model_type
        self.data = dict(data)
        for alias, canonical in ALIASES.get(model_type, {}).items():
            if alias in self.data:
                value = self.data.pop(alias)
                if canonical in self.data and self.data[canonical] != value:
                    raise ValueError(f"config.json of model_type {model_type!r} sets both "
                                     f"{alias!r}={shown(value)} and {canonical!r}="
                                     f"{shown(self.data[canonical])}, which transformers treats "
                                     f"as one setting; keep one of them")
                self.data[canonical] = value
        self.read: set[str] = {"model_type"}
        # An encoder-decoder or a decoder with cross-attention has modules no reader counts.
        for key in ("is_encoder_decoder", "add_cross_attention"):
            self.require_value(key, (False,), "it adds an encoder or cross-attention blocks")
        self.require_value("pruned_heads", ({},), "pruned heads remove rows of the attention "
                           "projections, which is not modelled")

    def get(self, key: str, default: Any = _REQUIRED, null: Any = _AS_ABSENT) -> Any:
        """The raw value of `key`; `default` when it is absent (or null, unless `null` says
        what null means)."""
        self.read.add(key)
        value = self.data.get(key)
        if value is None and key in self.data and null is not _AS_ABSENT:
            return null
        if value is None:
            if default is _REQUIRED:
                raise ValueError(f"config.json of model_type {self.model_type!r} is missing "
                                 f"the key {key!r}")
            return default
        return value

    def has(self, key: str) -> bool:
        """Whether `key` is present and not null (it counts as read)."""
        self.read.add(key)
        return self.data.get(key) is not None

    def positive(self, key: str, default: Any = _REQUIRED) -> int:
        """A positive integer."""
        return require_positive_int(f"config.json key {key!r}", self.get(key, default))

    def optional_int(self, key: str, default: int | None = None,
                     null: int | None = None) -> int | None:
        """A positive integer; `default` when absent, `null` when null (both may be None)."""
        value = self.get(key, default, null=null)
        return None if value is None else require_positive_int(f"config.json key {key!r}",
                                                               value)

    def non_negative_int(self, key: str, default: int) -> int:
        """An integer >= 0."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.json key {key!r} must be a non-negative integer, "
                             f"got {shown(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """True or False."""
        return require_bool(f"config.json key {key!r}", self.get(key, default))

    def choice(self, key: str, default: str, meanings: Mapping[str, str]) -> str:
        """The meaning of a string value among `meanings`."""
        value = self.get(key, default)
        if not isinstance(value, str) or value not in meanings:
            raise ValueError(f"config.json key {key!r} is {shown(value)}; supported values: "
                             f"{', '.join(meanings)}")
        return meanings[value]

    def layer_list(self, key: str) -> tuple[int, ...]:
        """A list of integers >= 0 (empty when absent)."""
        value = self.get(key, [])
        if not isinstance(value, list) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value):
            raise ValueError(f"config.json key {key!r} must be a list of layer indices, "
                             f"got {shown(value)}")
        return tuple(value)

    def layer_types(self, num_layers: int) -> tuple[str, ...] | None:
        """transformers' per-layer attention kinds ("full_attention" / "sliding_attention"),
        or None when the config has none."""
        value = self.get("layer_types", None)
        if value is None:
            return None
        kinds = ("full_attention", "sliding_attention")
        if not isinstance(value, list) or len(value) != num_layers or any(
                kind not in kinds for kind in value):
            raise ValueError(f"config.json key 'layer_types' must list {num_layers} entries "
                             f"(one per layer), each one of {', '.join(kinds)}; got "
                             f"{shown(value)}")
        return tuple(value)

    def require_value(self, key: str, allowed: Iterable[Any], why: str) -> None:
        """Refuse `key` unless absent, null or one of `allowed`; `why` says what another
        value would mean."""
        value = self.get(key, None)
        if value is not None and value not in list(allowed):
            raise ValueError(f"config.json of model_type {self.model_type!r} has {key}="
                             f"{shown(value)}: {why}; this is not supported")

    def check_all_read(self, ignore_keys: Iterable[str]) -> None:
        """Refuse every key that was not read and is not known to leave the counts alone."""
        neutral = NEUTRAL_KEYS | NEUTRAL_KEYS_BY_TYPE.get(self.model_type, frozenset())
        unknown = sorted(set(self.data) - self.read - neutral - set(ignore_keys))
        if unknown:
            raise ValueError(
                f"config.json of model_type {self.model_type!r} has keys this loader does not "
                f"understand: {', '.join(unknown)}. Such a key may add parameters or FLOPs, "
                f"so it is never ignored silently; if it changes neither (a training or "
                f"generation setting), pass ignore_keys=[...] (estimate: --ignore-key KEY)")
