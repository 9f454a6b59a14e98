"""The model zoo: public models by name, their sizes from each model's published config.json.

`get_model("llama-2-7b")` is the shortest way to a `TransformerConfig` the tests, the `estimate`
command and the reference workloads agree on.
"""

from __future__ import annotations

from harness.theory.config import TransformerConfig


def _gpt2(name: str, layers: int, hidden: int, heads: int) -> TransformerConfig:
    # GPT-2 (Radford et al. 2019; HF gpt2* config.json): 50257 tokens, 1024 positions,
    # LayerNorm with bias, GELU MLP of 4h, biases everywhere, tied output layer.
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                             vocab_size=50257, max_position_embeddings=1024, name=name)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
           vocab: int, positions: int, *, qkv_bias: bool = False,
           sliding_window: int | None = None) -> TransformerConfig:
    # LLaMA family: RMSNorm, RoPE, SwiGLU, no biases, untied output layer.
    return TransformerConfig(num_layers=layers, hidden_size=hidden, num_heads=heads,
                             num_kv_heads=kv_heads, ffn_hidden_size=ffn, vocab_size=vocab,
                             mlp="swiglu", tied_embeddings=False, bias=False, qkv_bias=qkv_bias,
                             norm="rmsnorm", position="rope",
                             max_position_embeddings=positions, sliding_window=sliding_window,
                             name=name)


# Sizes from each model's published config.json (Hugging Face hub).
MODEL_ZOO: dict[str, TransformerConfig] = {
    c.name: c
    for c in (
        _gpt2("gpt2", 12, 768, 12),
        _gpt2("gpt2-medium", 24, 1024, 16),
        _gpt2("gpt2-large", 36, 1280, 20),
        _gpt2("gpt2-xl", 48, 1600, 25),
        # BLOOM (BigScience 2022): ALiBi, LayerNorm after the embedding, 250880 tokens, tied.
        TransformerConfig(num_layers=30, hidden_size=4096, num_heads=32, vocab_size=250880,
                          position="alibi", embedding_norm=True, max_position_embeddings=2048,
                          name="bloom-7b1"),
        _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        # Mistral 7B v0.1 attends through a 4096-token sliding window on every layer.
        _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, sliding_window=4096),
        _llama("qwen2-7b", 28, 3584, 28, 4, 18944, 152064, 32768, qkv_bias=True),
    )
}


def get_model(name: str) -> TransformerConfig:
    """A public model's configuration by name (case-insensitive), e.g. "llama-2-7b"."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODEL_ZOO:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_ZOO)} "
                         f"(or load your own with harness.load_hf_config(path))")
    return MODEL_ZOO[key]


def list_models() -> list[str]:
    """Names accepted by `get_model`."""
    return list(MODEL_ZOO)
