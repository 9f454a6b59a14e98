"""The model builder: parameters exactly as counted, every style and block variant trains and
computes its published formula, checkpointing is exact, and what it does not build is refused."""

from __future__ import annotations

import math

import pytest
import torch

from harness.model import (
    alibi_causal_mask,
    alibi_slopes,
    apply_rope,
    build_model,
    lm_loss,
    random_batch,
    rope_cos_sin,
)
from harness.theory.config import TransformerConfig
from harness.theory.mla import MLA
from harness.theory.moe import MoE
from harness.theory.params import param_breakdown
from harness.theory.zoo import MODEL_ZOO, get_model
from harness.workloads.inference import allocate_kv_cache, forward_with_cache

# One tiny model per architectural style of the zoo (same switches, small sizes).
TINY: dict[str, TransformerConfig] = {
    "gpt": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                             max_position_embeddings=64, name="tiny-gpt"),
    "llama-gqa": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                                   vocab_size=97, ffn_hidden_size=48, mlp="swiglu",
                                   tied_embeddings=False, bias=False, norm="rmsnorm",
                                   position="rope", name="tiny-llama"),
    "qwen-qkv-bias": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=1,
                                       vocab_size=97, ffn_hidden_size=48, mlp="swiglu",
                                       tied_embeddings=False, bias=False, qkv_bias=True,
                                       norm="rmsnorm", position="rope", name="tiny-qwen"),
    "bloom-alibi": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                                     position="alibi", embedding_norm=True, name="tiny-bloom"),
    "geglu-nobias-layernorm": TransformerConfig(num_layers=2, hidden_size=32, num_heads=2,
                                                vocab_size=97, mlp="geglu", bias=False,
                                                name="tiny-geglu"),
    "relu": TransformerConfig(num_layers=2, hidden_size=32, num_heads=2, vocab_size=97,
                              mlp="relu", position="rope", name="tiny-relu"),
    # The block variants: heads twice hidden/heads wide with per-head query/key norms (Qwen3),
    # norms after attention and MLP with norms over all query/key channels (OLMo 2), norms
    # around them (Gemma 2), parallel blocks with two norms (GPT-NeoX) or one and an output
    # bias (Phi-2), learned positions after two offset rows (OPT).
    "qwen3-head-dim": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                                        head_dim=16, vocab_size=97, ffn_hidden_size=48,
                                        mlp="swiglu", bias=False, norm="rmsnorm",
                                        position="rope", qk_norm="head", name="tiny-qwen3"),
    "olmo2-post": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                                    ffn_hidden_size=48, mlp="swiglu", tied_embeddings=False,
                                    bias=False, norm="rmsnorm", position="rope", qk_norm="full",
                                    norm_placement="post", name="tiny-olmo2"),
    "gemma2-sandwich": TransformerConfig(num_layers=2, hidden_size=32, num_heads=2, head_dim=8,
                                         vocab_size=97, ffn_hidden_size=48, mlp="geglu",
                                         bias=False, norm="rmsnorm", position="rope",
                                         norm_placement="sandwich", name="tiny-gemma2"),
    "neox-parallel": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                                       position="rope", tied_embeddings=False,
                                       parallel_residual=True, name="tiny-neox"),
    "phi2-single": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                                     position="rope", tied_embeddings=False, output_bias=True,
                                     parallel_residual=True, norm_placement="single",
                                     name="tiny-phi2"),
    "opt-offset": TransformerConfig(num_layers=2, hidden_size=32, num_heads=4, vocab_size=97,
                                    mlp="relu", max_position_embeddings=64, position_offset=2,
                                    name="tiny-opt"),
}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_zoo_model_on_meta_has_exactly_the_counted_parameters(name: str) -> None:
    cfg = get_model(name)
    model = build_model(cfg, device="meta")
    assert count_params(model) == cfg.num_params()
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("style", sorted(TINY))
def test_modules_hold_the_parameters_of_each_breakdown_part(style: str) -> None:
    cfg = TINY[style]
    model = build_model(cfg, device="meta")
    parts = param_breakdown(cfg)
    attention = sum(count_params(block.attn) for block in model.blocks)
    mlp = sum(count_params(block.mlp) for block in model.blocks)
    norms = sum(count_params(norm) for block in model.blocks
                for norm in (block.attn_norm, block.attn_post_norm, block.mlp_norm,
                             block.mlp_post_norm) if norm is not None)
    assert attention == parts["attention"]
    assert mlp == parts["mlp"]
    assert norms == parts["layer_norms"]
    assert count_params(model.final_norm) == parts["final_norm"]
    embed_norm = 0 if model.embed_norm is None else count_params(model.embed_norm)
    assert embed_norm == parts["embedding_norm"]
    positions = 0 if model.embed_positions is None else count_params(model.embed_positions)
    assert positions == parts["position"]
    head = count_params(model.lm_head) - (model.lm_head.weight.numel() if cfg.tied_embeddings
                                          else 0)
    assert head == parts["output"]


def test_tied_output_layer_shares_the_embedding_parameter() -> None:
    model = build_model(TINY["gpt"], device="cpu")
    assert model.lm_head.weight is model.embed_tokens.weight
    inputs, targets = random_batch(TINY["gpt"], 2, 8, generator=torch.Generator().manual_seed(0))
    lm_loss(model(inputs), targets).backward()
    # One tensor, one gradient holding both uses (lookup and logits).
    assert model.embed_tokens.weight.grad is model.lm_head.weight.grad
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))


def test_untied_output_layer_is_a_separate_parameter() -> None:
    model = build_model(TINY["llama-gqa"], device="meta")
    assert model.lm_head.weight is not model.embed_tokens.weight


# --- training on CPU ---------------------------------------------------------------------------

@pytest.mark.parametrize("style", sorted(TINY))
def test_tiny_model_of_each_style_trains_with_finite_loss_and_gradients(style: str) -> None:
    cfg = TINY[style]
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    inputs, targets = random_batch(cfg, 2, 16, generator=torch.Generator().manual_seed(1))
    logits = model(inputs)
    assert logits.shape == (2, 16, cfg.vocab_size)
    loss = lm_loss(logits, targets)
    # A freshly initialised LM predicts nearly uniformly: the loss is close to log(V).
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("style", sorted(TINY))
def test_model_is_causal_future_tokens_do_not_change_past_logits(style: str) -> None:
    cfg = TINY[style]
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu", dtype=torch.float64)
    inputs, _ = random_batch(cfg, 1, 12, generator=torch.Generator().manual_seed(2))
    changed = inputs.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % cfg.vocab_size
    with torch.no_grad():
        before, after = model(inputs), model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8], rtol=0, atol=1e-12)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


@pytest.mark.parametrize("style", ["gpt", "llama-gqa", "bloom-alibi"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_the_same_loss_and_gradients(style: str, dropout: float) -> None:
    cfg = TINY[style]
    inputs, targets = random_batch(cfg, 2, 16, generator=torch.Generator().manual_seed(3))
    results = []
    for checkpoint_activations in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg, device="cpu", dtype=torch.float64, dropout=dropout,
                            checkpoint_activations=checkpoint_activations)
        torch.manual_seed(1)  # same dropout masks in both runs
        loss = lm_loss(model(inputs), targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain_grads), (ckpt_loss, ckpt_grads) = results
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-12, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-10, atol=1e-14)


def test_gqa_equals_multi_head_attention_with_repeated_key_value_heads() -> None:
    gqa_cfg = TINY["llama-gqa"]  # 4 query heads share 2 kv heads
    mha_cfg = gqa_cfg.replace(num_kv_heads=4)
    torch.manual_seed(0)
    gqa = build_model(gqa_cfg, device="cpu", dtype=torch.float64)
    mha = build_model(mha_cfg, device="cpu", dtype=torch.float64)
    state = dict(gqa.state_dict())
    head_dim, groups = gqa_cfg.head_dim, 2
    for key, value in gqa.state_dict().items():
        if key.endswith(("k_proj.weight", "v_proj.weight")):
            # Query head i reads kv head i // groups: repeat each kv head's rows `groups` times.
            heads = value.view(gqa_cfg.kv_heads, head_dim, -1)
            state[key] = heads.repeat_interleave(groups, dim=0).reshape(-1, value.shape[1])
    mha.load_state_dict(state)
    inputs, _ = random_batch(gqa_cfg, 2, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(mha(inputs), gqa(inputs), rtol=1e-12, atol=1e-12)


# --- block variants ----------------------------------------------------------------------------

def test_an_explicit_head_dim_sets_the_projection_widths() -> None:
    cfg = TINY["qwen3-head-dim"]  # 4 query heads and 2 kv heads of 16 channels, hidden 32
    attn = build_model(cfg, device="meta").blocks[0].attn
    assert (attn.q_proj.in_features, attn.q_proj.out_features) == (32, 64)
    assert attn.k_proj.out_features == attn.v_proj.out_features == 32
    assert (attn.o_proj.in_features, attn.o_proj.out_features) == (64, 32)


def _reference_attention(attn: torch.nn.Module, cfg: TransformerConfig, x: torch.Tensor,
                         rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Attention written out: query/key norms over each head or over all channels, before
    RoPE; K and V repeated for grouped queries; causal softmax(QK^T / sqrt(d)) V."""
    b, s, d = x.shape[0], x.shape[1], cfg.head_dim
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    if cfg.qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = (t.view(b, s, -1, d) for t in (q, k, v))
    if cfg.qk_norm == "head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k, v = (t.repeat_interleave(cfg.num_heads // cfg.kv_heads, dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
    out: torch.Tensor = attn.o_proj(context)
    return out


@pytest.mark.parametrize("style", ["qwen3-head-dim", "olmo2-post", "gemma2-sandwich",
                                   "neox-parallel", "phi2-single", "llama-gqa"])
def test_each_block_computes_its_published_formula(style: str) -> None:
    cfg = TINY[style]
    torch.manual_seed(0)
    block = build_model(cfg, device="cpu", dtype=torch.float64).blocks[0]
    x = torch.randn(2, 10, cfg.hidden_size, dtype=torch.float64)
    rope = tuple(t.double() for t in rope_cos_sin(10, cfg.head_dim, torch.device("cpu")))

    def attn(y: torch.Tensor) -> torch.Tensor:
        return _reference_attention(block.attn, cfg, y, rope)

    with torch.no_grad():
        if cfg.norm_placement == "single":  # Phi-2: one norm feeds both, side by side
            expected = x + attn(block.attn_norm(x)) + block.mlp(block.attn_norm(x))
        elif cfg.parallel_residual:  # GPT-NeoX
            expected = x + attn(block.attn_norm(x)) + block.mlp(block.mlp_norm(x))
        elif cfg.norm_placement == "post":  # OLMo 2
            h = x + block.attn_norm(attn(x))
            expected = h + block.mlp_norm(block.mlp(h))
        elif cfg.norm_placement == "sandwich":  # Gemma 2
            h = x + block.attn_post_norm(attn(block.attn_norm(x)))
            expected = h + block.mlp_post_norm(block.mlp(block.mlp_norm(h)))
        else:
            h = x + attn(block.attn_norm(x))
            expected = h + block.mlp(block.mlp_norm(h))
        torch.testing.assert_close(block(x, rope, None), expected, rtol=1e-12, atol=1e-12)


def test_learned_positions_start_after_the_offset_rows() -> None:
    cfg = TINY["opt-offset"]  # OPT: two rows before position 0
    model = build_model(cfg, device="cpu")
    assert model.embed_positions is not None
    assert model.embed_positions.num_embeddings == cfg.max_position_embeddings + 2
    inputs, targets = random_batch(cfg, 2, 5, generator=torch.Generator().manual_seed(0))
    lm_loss(model(inputs), targets).backward()
    grad = model.embed_positions.weight.grad
    assert grad is not None
    assert (grad[:2] == 0).all() and (grad[2:7] != 0).any(dim=1).all() and (grad[7:] == 0).all()


def test_an_output_bias_is_its_own_parameter_beside_a_tied_table() -> None:
    cfg = TINY["gpt"].replace(output_bias=True)
    model = build_model(cfg, device="meta")
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.lm_head.bias is not None and model.lm_head.bias.shape == (cfg.vocab_size,)
    assert count_params(model) == cfg.num_params()


def test_a_sliding_window_model_runs_up_to_its_window_and_refuses_beyond() -> None:
    windowed = TINY["llama-gqa"].replace(sliding_window=8, name="tiny-mistral")
    torch.manual_seed(0)
    model = build_model(windowed, device="cpu", dtype=torch.float64)
    full = build_model(TINY["llama-gqa"], device="cpu", dtype=torch.float64)
    full.load_state_dict(model.state_dict())
    inputs, _ = random_batch(windowed, 2, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Up to the window every query sees its whole past: windowed attention is causal.
        torch.testing.assert_close(model(inputs[:, :8]), full(inputs[:, :8]), rtol=0, atol=0)
        with pytest.raises(ValueError, match="seq_len=9 exceeds the sliding window of 8 tokens "
                                             "of 'tiny-mistral'.*AutoModelForCausalLM"):
            model(inputs)


def test_zoo_mistral_builds_and_names_its_4096_token_window() -> None:
    cfg = get_model("mistral-7b")
    model = build_model(cfg, device="meta")
    assert count_params(model) == cfg.num_params()
    with pytest.raises(ValueError, match="sliding window of 4096 tokens"):
        model(torch.zeros(1, 4097, dtype=torch.long, device="meta"))


@pytest.mark.parametrize(("change", "field"), [
    ({"moe": MoE(num_experts=4, top_k=2, expert_ffn_hidden_size=16)}, "moe"),
    ({"mla": MLA(kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)}, "mla"),
])
def test_experts_and_latent_attention_are_refused_naming_the_field(
        change: dict[str, object], field: str) -> None:
    cfg = TINY["llama-gqa"].replace(num_kv_heads=None, **change)
    with pytest.raises(ValueError, match=f"'tiny-llama' has .*{field}=.* harness.model does not "
                                         f"build; build it with transformers"):
        build_model(cfg, device="meta")


@pytest.mark.parametrize("style", ["qwen3-head-dim", "olmo2-post", "gemma2-sandwich",
                                   "neox-parallel", "phi2-single", "opt-offset"])
def test_the_cached_decode_refuses_blocks_it_does_not_run(style: str) -> None:
    # harness.workloads.inference runs the classic pre-norm block by hand, layer by layer.
    cfg = TINY[style]
    model = build_model(cfg, device="cpu")
    cache = allocate_kv_cache(cfg, 1, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="forward_with_cache runs the classic pre-norm block"):
        forward_with_cache(model, torch.zeros(1, 4, dtype=torch.long), cache, start=0)


# --- position encodings ------------------------------------------------------------------------

def test_rope_scores_depend_only_on_the_relative_offset() -> None:
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(8, dtype=torch.float64, generator=gen)
    k = torch.randn(8, dtype=torch.float64, generator=gen)
    cos, sin = rope_cos_sin(32, 8, torch.device("cpu"))
    cos, sin = cos.double(), sin.double()

    def score(m: int, n: int) -> torch.Tensor:
        rq = apply_rope(q.expand(1, 1, 32, 8), cos, sin)[0, 0, m]
        rk = apply_rope(k.expand(1, 1, 32, 8), cos, sin)[0, 0, n]
        return rq @ rk

    torch.testing.assert_close(score(5, 2), score(20, 17), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(score(3, 3), q @ k, rtol=1e-6, atol=1e-6)


def test_rope_tables_from_a_start_position_are_the_rows_of_the_full_tables() -> None:
    # A KV-cached decode step rotates one token at position 20: row 20 of the 21-row tables.
    cos, sin = rope_cos_sin(21, 8, torch.device("cpu"))
    cos_20, sin_20 = rope_cos_sin(1, 8, torch.device("cpu"), start=20)
    assert torch.equal(cos_20, cos[20:]) and torch.equal(sin_20, sin[20:])


def test_alibi_slopes_follow_the_paper() -> None:
    # Press et al. 2022: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    # Not a power of two: the 8 slopes of 8 heads, then every other slope of 16 heads.
    sixteen = alibi_slopes(16)
    assert alibi_slopes(12) == pytest.approx(alibi_slopes(8) + sixteen[0::2][:4])


def test_alibi_mask_is_causal_and_linear_in_distance() -> None:
    mask = alibi_causal_mask(4, 5, torch.device("cpu"))
    assert mask.shape == (1, 4, 5, 5)
    assert torch.isinf(mask[0, :, 1, 2:]).all()
    slope = alibi_slopes(4)[1]
    assert mask[0, 1, 4, 1].item() == pytest.approx(-3 * slope)
    assert mask[0, 1, 3, 3].item() == 0.0


# --- helpers -----------------------------------------------------------------------------------

def test_random_batch_targets_are_inputs_shifted_by_one_and_reproducible() -> None:
    cfg = TINY["gpt"]
    inputs, targets = random_batch(cfg, 3, 9, generator=torch.Generator().manual_seed(7))
    again, _ = random_batch(cfg, 3, 9, generator=torch.Generator().manual_seed(7))
    assert inputs.shape == targets.shape == (3, 9)
    torch.testing.assert_close(inputs[:, 1:], targets[:, :-1])
    torch.testing.assert_close(inputs, again)
    assert int(inputs.max()) < cfg.vocab_size and int(inputs.min()) >= 0


def test_lm_loss_is_computed_in_fp32_for_bf16_logits() -> None:
    logits = torch.zeros(2, 3, 50, dtype=torch.bfloat16)
    loss = lm_loss(logits, torch.zeros(2, 3, dtype=torch.long))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(50), rel=1e-6)


# --- argument validation -----------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "tpu"}, "device 'tpu' is not a device torch knows"),
    ({"device": 3}, "device must be a str or torch.device"),
    ({"dtype": torch.int64}, "dtype must be a floating torch.dtype"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
    ({"checkpoint_activations": 1}, "checkpoint_activations must be True or False, got 1"),
])
def test_build_model_rejects_bad_arguments_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(TINY["gpt"], **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without "
                                                      "CUDA")
def test_cuda_device_without_cuda_says_so() -> None:
    with pytest.raises(ValueError, match="asks for CUDA but torch.cuda.is_available"):
        build_model(TINY["gpt"], device="cuda")


def test_rope_with_odd_head_dim_is_refused_with_the_sizes() -> None:
    cfg = TransformerConfig(num_layers=1, hidden_size=12, num_heads=4, vocab_size=10,
                            position="rope", name="odd")
    with pytest.raises(ValueError, match="needs an even head_dim; 'odd' has head_dim=3"):
        build_model(cfg)


def test_sequence_longer_than_learned_positions_is_refused() -> None:
    cfg = TINY["gpt"]
    model = build_model(cfg, device="meta")
    with pytest.raises(ValueError, match="seq_len=65 exceeds max_position_embeddings=64"):
        model(torch.zeros(1, 65, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="seq_len=65 exceeds max_position_embeddings=64"):
        random_batch(cfg, 1, 65)


def test_float_input_ids_are_refused() -> None:
    model = build_model(TINY["gpt"], device="meta")
    with pytest.raises(ValueError, match="input_ids must be an integer tensor of shape"):
        model(torch.zeros(1, 4, device="meta"))


def test_lm_loss_rejects_mismatched_targets() -> None:
    with pytest.raises(ValueError, match=r"targets must be a tensor of shape \(2, 3\)"):
        lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_random_batch_rejects_a_generator_on_another_device() -> None:
    with pytest.raises(ValueError, match="generator lives on 'cpu' but device is 'meta'"):
        random_batch(TINY["gpt"], 1, 4, device="meta", generator=torch.Generator())


def test_random_batch_rejects_zero_batch() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        random_batch(TINY["gpt"], 0, 4)


# --- CUDA ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast needs CUDA")
@pytest.mark.parametrize("style", sorted(TINY))
@pytest.mark.parametrize("checkpoint_activations", [False, True])
def test_bf16_autocast_trains_on_cuda(style: str, checkpoint_activations: bool) -> None:
    cfg = TINY[style]
    model = build_model(cfg, device="cuda", checkpoint_activations=checkpoint_activations)
    inputs, targets = random_batch(cfg, 2, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(inputs)
    assert logits.dtype == torch.bfloat16
    loss = lm_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
