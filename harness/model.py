"""A real decoder-only language model built from a `TransformerConfig`, for measuring.

The measured tests train this model, so it must have exactly the parameters and matmuls that the
formulas count: `sum(p.numel())` equals `cfg.num_params()` for every config it builds, and
FlopCounterMode sees the matmuls of `harness.theory.flops`. GPT, LLaMA and BLOOM styles and the
block variants of the config (explicit head_dim, query/key norms, norm placements, a parallel
block, an output bias, a position offset) come from the same few modules. Experts and latent
attention are refused by name (`build_model`); a sliding window by refusing longer sequences.

Building on the meta device allocates nothing, so even the 70B zoo models can be counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from harness.theory.config import TransformerConfig

DeviceLike = str | torch.device
# device= and dtype= for every parameter-holding module, so parameters are born where they live.
FactoryKwargs = dict[str, Any]

# RoPE base frequency of LLaMA-1/2 (Su et al. 2021; LLaMA reference code). TransformerConfig does
# not carry rope_theta: it changes neither parameters nor FLOPs, only which positions rotate how.
ROPE_THETA = 10000.0
# Standard deviation of the initial weights (GPT-2, Radford et al. 2019); the models here are
# measured, not trained to convergence, but real values keep the numerics (and timings) honest.
INIT_STD = 0.02
# Epsilon of the norms: LayerNorm's 1e-5 as in GPT-2/BLOOM, RMSNorm's 1e-5 as in LLaMA-2.
NORM_EPS = 1e-5


def _check_config(cfg: object) -> TransformerConfig:
    if not isinstance(cfg, TransformerConfig):
        raise ValueError(f"cfg must be a harness.TransformerConfig, got {type(cfg).__name__}")
    return cfg


def _check_device(device: object) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be a str or torch.device such as 'meta', 'cpu' or "
                         f"'cuda', got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device torch knows; use 'meta', 'cpu', "
                         f"'cuda' or 'cuda:<index>'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA but torch.cuda.is_available() is "
                         f"False; use 'cpu' or 'meta' on this machine")
    return dev


def _check_seq_len(cfg: TransformerConfig, seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if cfg.position == "learned" and seq_len > cfg.max_position_embeddings:
        raise ValueError(f"seq_len={seq_len} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings} of {cfg.name!r}, whose learned position "
                         f"table has no rows beyond it")


def _check_window(cfg: TransformerConfig, seq_len: int) -> None:
    """Up to its window, windowed attention is the causal attention the model computes."""
    windows = [window for window in cfg.window_counts() if window is not None]
    if windows and seq_len > min(windows):
        raise ValueError(f"seq_len={seq_len} exceeds the sliding window of {min(windows)} "
                         f"tokens of {cfg.name!r}: harness.model computes full causal "
                         f"attention, which equals the windowed attention only up to "
                         f"{min(windows)} tokens; use a shorter sequence, or build the model "
                         f"with transformers (AutoModelForCausalLM.from_config)")


def _make_norm(cfg: TransformerConfig, factory: FactoryKwargs,
               width: int | None = None) -> nn.Module:
    channels = cfg.hidden_size if width is None else width
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(channels, eps=NORM_EPS, **factory)
    return nn.LayerNorm(channels, eps=NORM_EPS, bias=cfg.bias, **factory)


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022): a geometric sequence from 2^(-8/n); for a head
    count that is not a power of two, the odd-indexed slopes of the next power are appended."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return slopes


def alibi_causal_mask(num_heads: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Additive fp32 attention bias of shape (1, heads, s, s): slope * (j - i) on and below the
    diagonal, -inf above it (so it also carries the causal mask). BLOOM adds slope * j instead;
    the two differ by a constant per row, which softmax cancels."""
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    distance = positions[None, :] - positions[:, None]  # j - i, <= 0 where attention is allowed
    slopes = torch.tensor(alibi_slopes(num_heads), device=device, dtype=torch.float32)
    bias = slopes[:, None, None] * distance[None, :, :]
    future = torch.ones(seq_len, seq_len, device=device, dtype=torch.bool).triu(1)
    return bias.masked_fill(future, float("-inf")).unsqueeze(0)


def rope_cos_sin(seq_len: int, head_dim: int, device: torch.device, theta: float = ROPE_THETA,
                 *, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cosines and sines of the rotary angles at positions start..start+seq_len-1, each
    (seq_len, head_dim), computed once per forward and shared by all layers (no buffers, so
    parameters stay exactly those counted). `start` > 0 serves a KV-cached decode step."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device,
                                             dtype=torch.float32) / head_dim))
    positions = torch.arange(start, start + seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x shaped (batch, heads, seq, head_dim);
    channel i is paired with i + head_dim/2, as in the Hugging Face LLaMA port."""
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with separate Q, K, V projections (K and V narrower under GQA) of
    num_heads (kv_heads) heads of head_dim channels, computed by `scaled_dot_product_attention`.
    Query/key norms normalise Q and K before RoPE: one norm of head_dim shared by all heads
    ("head", Qwen3) or one over all query and one over all key channels ("full", OLMo 2)."""

    def __init__(self, cfg: TransformerConfig, dropout: float, factory: FactoryKwargs) -> None:
        super().__init__()
        h, kv = cfg.hidden_size, cfg.kv_hidden_size
        self.num_heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.dropout = dropout
        self.norm_all_channels = cfg.qk_norm == "full"
        qkv_bias = bool(cfg.qkv_bias)  # None only before validation fills it in
        self.q_proj = nn.Linear(h, cfg.query_width, bias=qkv_bias, **factory)
        self.k_proj = nn.Linear(h, kv, bias=qkv_bias, **factory)
        self.v_proj = nn.Linear(h, kv, bias=qkv_bias, **factory)
        self.o_proj = nn.Linear(cfg.attention_width, h, bias=cfg.bias, **factory)
        widths = {"head": (cfg.head_dim, cfg.head_dim), "full": (cfg.query_width, kv)}
        q_width, k_width = widths.get(cfg.qk_norm, (0, 0))
        self.q_norm = _make_norm(cfg, factory, q_width) if q_width else nn.Identity()
        self.k_norm = _make_norm(cfg, factory, k_width) if k_width else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                alibi: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if self.norm_all_channels:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(batch, seq, self.num_heads, self.head_dim)
        k = k.view(batch, seq, self.kv_heads, self.head_dim)
        if not self.norm_all_channels:  # per head, or nn.Identity without query/key norms
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kv_heads != self.num_heads:
            # GQA by repetition: SDPA's enable_gqa needs torch>=2.5, the package supports 2.4.
            groups = self.num_heads // self.kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        dropout_p = self.dropout if self.training else 0.0
        if alibi is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=alibi.to(q.dtype),
                                                 dropout_p=dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(
            batch, seq, self.num_heads * self.head_dim))
        return projected


class MLP(nn.Module):
    """Feed-forward block: up -> activation -> down, or for SwiGLU/GeGLU
    act(gate) * up -> down."""

    def __init__(self, cfg: TransformerConfig, factory: FactoryKwargs) -> None:
        super().__init__()
        h, f = cfg.hidden_size, cfg.ffn_size
        self.kind = cfg.mlp
        self.gate_proj = nn.Linear(h, f, bias=cfg.bias, **factory) if cfg.gated_mlp else None
        self.up_proj = nn.Linear(h, f, bias=cfg.bias, **factory)
        self.down_proj = nn.Linear(f, h, bias=cfg.bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            gate = self.gate_proj(x)
            gate = F.silu(gate) if self.kind == "swiglu" else F.gelu(gate, approximate="tanh")
            gated: torch.Tensor = self.down_proj(gate * self.up_proj(x))
            return gated
        up = self.up_proj(x)
        up = F.relu(up) if self.kind == "relu" else F.gelu(up, approximate="tanh")
        down: torch.Tensor = self.down_proj(up)
        return down


class Block(nn.Module):
    """One transformer block, by the config's norm_placement and parallel_residual:
    "pre": x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)) (GPT-2, LLaMA); "post":
    x + attn_norm(attn(x)), then the same for the MLP (OLMo 2); "sandwich":
    x + attn_post_norm(attn(attn_norm(x))), then the same for the MLP (Gemma 2/3); parallel:
    x + attn(attn_norm(x)) + mlp(mlp_norm(x)) (GPT-NeoX), with "single" one norm n = attn_norm(x)
    for both, x + attn(n) + mlp(n) (Phi-2)."""

    def __init__(self, cfg: TransformerConfig, dropout: float, factory: FactoryKwargs) -> None:
        super().__init__()
        self.placement, self.parallel = cfg.norm_placement, cfg.parallel_residual
        sandwich = self.placement == "sandwich"
        self.attn_norm = _make_norm(cfg, factory)
        self.attn_post_norm = _make_norm(cfg, factory) if sandwich else None
        self.attn = Attention(cfg, dropout, factory)
        # "single": the MLP reads the attention's norm (see forward); nothing of its own.
        self.mlp_norm = nn.Identity() if self.placement == "single" else _make_norm(cfg, factory)
        self.mlp_post_norm = _make_norm(cfg, factory) if sandwich else None
        self.mlp = MLP(cfg, factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                alibi: torch.Tensor | None) -> torch.Tensor:
        attention = partial(self.attn, rope=rope, alibi=alibi)
        if self.placement == "single":  # one norm feeds attention and MLP in parallel
            normed = self.attn_norm(x)
            both: torch.Tensor = self.dropout(attention(normed)) + self.dropout(self.mlp(normed))
            return x + both
        attended = self._sublayer(attention, x, self.attn_norm, self.attn_post_norm)
        if self.parallel:
            return x + attended + self._sublayer(self.mlp, x, self.mlp_norm, None)
        x = x + attended
        return x + self._sublayer(self.mlp, x, self.mlp_norm, self.mlp_post_norm)

    def _sublayer(self, layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  norm: nn.Module, post_norm: nn.Module | None) -> torch.Tensor:
        """What one sublayer adds to the residual stream, with its norms where they sit."""
        out = norm(layer(x)) if self.placement == "post" else layer(norm(x))
        dropped: torch.Tensor = self.dropout(out if post_norm is None else post_norm(out))
        return dropped


class DecoderLM(nn.Module):
    """Token embedding (+ learned positions, + embedding norm) -> blocks -> final norm -> logits.

    A tied output layer shares the embedding's Parameter object, so it is counted, stored and
    updated once.
    """

    def __init__(self, cfg: TransformerConfig, *, checkpoint_activations: bool, dropout: float,
                 factory: FactoryKwargs) -> None:
        super().__init__()
        self.config = cfg
        self.checkpoint_activations = checkpoint_activations
        h = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h, **factory)
        # OPT keeps position_offset rows before position 0 (its positions start at 2).
        self.embed_positions = (nn.Embedding(cfg.max_position_embeddings + cfg.position_offset,
                                             h, **factory)
                                if cfg.position == "learned" else None)
        self.embed_norm = _make_norm(cfg, factory) if cfg.embedding_norm else None
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(cfg, dropout, factory) for _ in range(cfg.num_layers))
        self.final_norm = _make_norm(cfg, factory)
        self.lm_head = nn.Linear(h, cfg.vocab_size, bias=cfg.output_bias, **factory)
        if factory["device"].type != "meta":  # meta tensors hold no values to initialise
            self._init_weights()
        if cfg.tied_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab_size) for token ids of shape (batch, seq)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq), got "
                             f"{_describe(input_ids)}")
        _check_seq_len(self.config, input_ids.shape[1])
        _check_window(self.config, input_ids.shape[1])
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = x + self.embed_positions(positions + self.config.position_offset)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embed_dropout(x)
        seq, device = input_ids.shape[1], input_ids.device
        rope = (rope_cos_sin(seq, self.config.head_dim, device)
                if self.config.position == "rope" else None)
        alibi = (alibi_causal_mask(self.config.num_heads, seq, device)
                 if self.config.position == "alibi" else None)
        for block in self.blocks:
            if self.checkpoint_activations and torch.is_grad_enabled():
                # Early stop would skip the block's last matmul (its output is not needed for
                # backward); off, the recomputation is one full forward of the block, the
                # "full" recompute that train_flops and Megatron-LM count.
                with set_checkpoint_early_stop(False):
                    x = checkpoint(block, x, rope, alibi, use_reentrant=False)
            else:
                x = block(x, rope, alibi)
        logits: torch.Tensor = self.lm_head(self.final_norm(x))
        return logits


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def build_model(cfg: TransformerConfig, *, device: DeviceLike = "meta",
                dtype: torch.dtype = torch.float32, checkpoint_activations: bool = False,
                dropout: float = 0.0) -> DecoderLM:
    """A decoder-only LM for `cfg`, created directly on `device` in `dtype` (meta: no memory).

    `checkpoint_activations` recomputes each block in full in backward, the work
    `train_flops(..., recompute="full").hardware` counts. Experts (`moe`) and latent attention
    (`mla`) are refused with a ValueError naming the field: build such models with transformers
    (`AutoModelForCausalLM.from_config`). A sliding window is built as causal attention, and
    the forward refuses sequences longer than the window, where the two would differ.
    """
    cfg = _check_config(cfg)
    for field, what in (("moe", "experts"), ("mla", "latent attention")):
        if getattr(cfg, field) is not None:
            raise ValueError(
                f"{cfg.name!r} has {what} ({field}={getattr(cfg, field)!r}), which "
                f"harness.model does not build; build it with transformers "
                f"(AutoModelForCausalLM.from_config, as harness.workloads.real_models does) "
                f"and measure that model")
    if cfg.position == "rope" and cfg.head_dim % 2:
        raise ValueError(f"position='rope' rotates channel pairs and needs an even head_dim; "
                         f"{cfg.name!r} has head_dim={cfg.head_dim} (hidden_size="
                         f"{cfg.hidden_size} / num_heads={cfg.num_heads})")
    dev = _check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32 or "
                         f"torch.bfloat16, got {dtype!r}")
    if not isinstance(checkpoint_activations, bool):
        raise ValueError(f"checkpoint_activations must be True or False, "
                         f"got {checkpoint_activations!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    factory = {"device": dev, "dtype": dtype}
    return DecoderLM(cfg, checkpoint_activations=checkpoint_activations, dropout=float(dropout),
                     factory=factory)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the flattened vocabulary, computed in fp32 as mixed-precision
    training does (bf16 logits lose too much precision in log-softmax)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a tensor of shape (batch, seq, vocab), got "
                         f"{_describe(logits)}")
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"targets must be a tensor of shape {tuple(logits.shape[:2])} to match "
                         f"logits, got {_describe(targets)}")
    vocab = logits.shape[-1]
    return F.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))


def random_batch(cfg: TransformerConfig, batch_size: int, seq_len: int,
                 device: DeviceLike = "cpu", generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random token ids and their next-token targets, each (batch_size, seq_len):
    the targets are the inputs shifted by one, as in language-model training."""
    cfg = _check_config(cfg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_seq_len(cfg, seq_len)
    dev = _check_device(device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {generator!r}")
        if generator.device.type != dev.type:
            raise ValueError(f"generator lives on {generator.device.type!r} but device is "
                             f"{dev.type!r}; create it with torch.Generator(device={dev.type!r})")
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=dev,
                           generator=generator)
    return tokens[:, :-1], tokens[:, 1:]
