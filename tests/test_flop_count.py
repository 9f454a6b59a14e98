"""FLOP counting of the ops torch's FlopCounterMode lacks or refuses: grouped-query attention,
every fused SDPA variant (the CUDA ones on meta tensors, the CPU flash kernel for real), grouped
GEMMs; and an op that cannot be counted is named, never a crash."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.gate.results import Metric
from harness.measure import flop_count
from harness.measure.flop_count import (
    UncountedFlopsWarning,
    attention_backward_flops,
    attention_flops,
    count_flops,
    grouped_mm_flops,
    is_compute_op,
)
from harness.measure.sampling import TimingPolicy
from harness.measure.train_step import measure_train_step
from harness.testing import FakeClock
from harness.theory.config import TransformerConfig
from harness.theory.flops import flop_counter_flops

aten = torch.ops.aten

POLICY = TimingPolicy(warmup_seconds=0.0, budget_seconds=1e9, min_samples=3, max_samples=3,
                      min_sample_seconds=1e-6)


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def core(batch: int, q_heads: int, q_len: int, kv_len: int, dim: int) -> int:
    """QK^T and P.V of every query head: 2 matmuls of 2*s_q*s_k*d FLOPs each."""
    return 2 * (2 * batch * q_heads * q_len * kv_len * dim)


# attention formulas


@pytest.mark.parametrize("kv_heads", [1, 2, 4, 8])
def test_cpu_sdpa_with_enable_gqa_counts_every_query_head_forward_and_backward(
        kv_heads: int) -> None:
    torch.manual_seed(0)
    b, heads, s, d = 2, 8, 16, 32
    q = torch.randn(b, heads, s, d, requires_grad=True)
    k = torch.randn(b, kv_heads, s, d, requires_grad=True)
    v = torch.randn(b, kv_heads, s, d, requires_grad=True)

    def step() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()

    _, count = count_flops(step)
    # The fused backward recomputes QK^T: 5 matmuls against the forward's 2 (2.5x).
    assert count.total == core(b, heads, s, s, d) * (1 + 2.5)
    assert count.total == attention_flops(q.shape, k.shape, v.shape) \
        + attention_backward_flops(q.shape, k.shape, v.shape)
    assert count.complete


def test_key_value_heads_that_do_not_divide_the_query_heads_are_refused() -> None:
    with pytest.raises(ValueError, match="key/value heads \\(3\\) must divide the query heads "
                                         "\\(8\\)"):
        attention_flops((1, 8, 4, 16), (1, 3, 4, 16), (1, 3, 4, 16))


def test_value_width_other_than_the_query_width_is_counted_per_matmul() -> None:
    # MLA-style heads: q/k of 192 channels, v of 128; QK^T uses 192, P.V 128.
    assert attention_flops((1, 4, 8, 192), (1, 4, 8, 192), (1, 4, 8, 128)) \
        == 2 * 4 * 8 * 8 * (192 + 128)
    assert attention_backward_flops((1, 4, 8, 192), (1, 4, 8, 192), (1, 4, 8, 128)) \
        == 2 * 4 * 8 * 8 * (3 * 192 + 2 * 128)


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta", dtype=torch.bfloat16)


Q, KV = _meta(2, 8, 128, 64), _meta(2, 2, 128, 64)
CUDA_FORWARD_OPS: dict[str, Callable[[], object]] = {
    "flash": lambda: aten._scaled_dot_product_flash_attention(Q, KV, KV),
    "efficient": lambda: aten._scaled_dot_product_efficient_attention(Q, KV, KV, None, True),
    "cudnn": lambda: aten._scaled_dot_product_cudnn_attention(Q, KV, KV, None, True),
    # The low-level flash op takes (batch, length, heads, dim).
    "flash_forward": lambda: aten._flash_attention_forward(
        Q.transpose(1, 2), KV.transpose(1, 2), KV.transpose(1, 2), None, None, 128, 128, 0.0,
        False, False),
}


@pytest.mark.parametrize("op", list(CUDA_FORWARD_OPS))
def test_cuda_sdpa_variants_count_grouped_query_attention(op: str) -> None:
    # Meta tensors run the ops' shape functions: the counter sees exactly what a GPU runs.
    _, count = count_flops(CUDA_FORWARD_OPS[op])
    assert count.total == core(2, 8, 128, 128, 64)
    assert count.complete


def test_cuda_flash_backward_counts_the_recomputed_scores() -> None:
    lse = torch.empty(2, 8, 128, device="meta")
    empty = torch.empty(0, device="meta")
    seed = torch.empty(2, device="meta", dtype=torch.int64)
    _, count = count_flops(lambda: aten._scaled_dot_product_flash_attention_backward(
        Q, Q, KV, KV, Q, lse, empty, empty, 128, 128, 0.0, True, seed, empty))
    assert count.total == core(2, 8, 128, 128, 64) * 5 // 2


# whole models


def test_harness_llama_style_gqa_step_on_cpu_counts_what_the_formula_predicts() -> None:
    from harness.model import build_model, lm_loss, random_batch

    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_heads=8, num_kv_heads=2,
                            vocab_size=96, mlp="swiglu", tied_embeddings=False, bias=False,
                            norm="rmsnorm", position="rope", max_position_embeddings=32)
    torch.manual_seed(0)
    model = build_model(cfg, device="cpu")
    tokens, targets = random_batch(cfg, 2, 32)
    _, count = count_flops(lambda: lm_loss(model(tokens), targets).backward())
    assert count.total == flop_counter_flops(cfg, 2, 32, fused_attention=True)


def test_hugging_face_llama_with_grouped_query_attention_counts_on_cpu() -> None:
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    from harness.theory.hf import config_from_hf

    hf = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2, vocab_size=96,
                                  max_position_embeddings=32, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf)
    tokens = torch.randint(0, 96, (2, 32))

    def step() -> None:
        logits = model(tokens).logits
        F.cross_entropy(logits.float().reshape(-1, 96), tokens.reshape(-1)).backward()

    _, count = count_flops(step)
    cfg = config_from_hf({"model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
                          "num_hidden_layers": 2, "num_attention_heads": 8,
                          "num_key_value_heads": 2, "vocab_size": 96,
                          "max_position_embeddings": 32})
    assert count.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    assert count.total == flop_counter_flops(cfg, 2, 32, fused_attention=True)


# grouped GEMMs


def test_grouped_gemm_of_routed_tokens_counts_each_token_once() -> None:
    torch.manual_seed(0)
    tokens, experts = torch.randn(10, 16), torch.randn(3, 16, 8)
    offsets = torch.tensor([3, 7, 10], dtype=torch.int32)
    _, count = count_flops(lambda: torch._grouped_mm(tokens, experts, offs=offsets))
    # Each of the 10 rows meets one 16 x 8 expert.
    assert count.total == 2 * 10 * 16 * 8 == grouped_mm_flops(tokens.shape, experts.shape)


@pytest.mark.parametrize(("a", "b", "flops"), [
    ((10, 16), (3, 16, 8), 2 * 10 * 16 * 8),       # tokens routed to experts
    ((3, 10, 16), (3, 16, 8), 2 * 3 * 10 * 16 * 8),  # batched
    ((3, 10, 16), (16, 24), 2 * 10 * 16 * 24),     # columns split in groups
    ((10, 48), (48, 8), 2 * 10 * 48 * 8),          # the inner dimension split (weight grads)
])
def test_grouped_gemm_shapes(a: tuple[int, ...], b: tuple[int, ...], flops: int) -> None:
    assert grouped_mm_flops(a, b) == flops


# what cannot be counted


@torch.library.custom_op("perf_harness_test::fused_attention", mutates_args=())
def fused_attention(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for a custom attention kernel that FlopCounterMode has no formula for."""
    return x * 2


@fused_attention.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _fused_attention_backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
    return grad * 2


fused_attention.register_autograd(_fused_attention_backward)


def test_a_custom_compute_op_without_a_formula_is_named_as_uncounted() -> None:
    _, count = count_flops(lambda: fused_attention(torch.ones(4)))
    assert count.total == 0
    assert not count.complete
    assert count.uncounted == {"perf_harness_test.fused_attention": "no FLOP formula for this op"}
    assert "perf_harness_test.fused_attention (no FLOP formula" in count.describe_uncounted()


def test_a_formula_that_refuses_its_shapes_is_named_instead_of_crashing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing(*args: object, **kwargs: object) -> int:
        raise AssertionError("sdpa_flop_count: query/key/value shapes are incompatible")

    refusing._get_raw = True  # type: ignore[attr-defined]
    monkeypatch.setitem(flop_count.FORMULAS, aten._scaled_dot_product_flash_attention_for_cpu,
                        refusing)
    q = torch.randn(1, 4, 8, 16)
    kv = torch.randn(1, 2, 8, 16)
    _, count = count_flops(lambda: F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True))
    assert set(count.uncounted) == {"aten._scaled_dot_product_flash_attention_for_cpu"}
    assert "query/key/value shapes are incompatible" in count.describe_uncounted()


@pytest.mark.parametrize(("name", "compute"), [
    ("aten._grouped_mm", True), ("flash_attn._flash_attn_forward", True),
    ("transformers.grouped_mm_fallback", True), ("aten._cudnn_rnn", True),
    ("aten._fused_sdp_choice", False), ("aten.rms_norm", False), ("aten.add", False),
    ("torchvision.nms", False),
])
def test_ops_named_like_matmuls_or_attention_are_compute_ops(name: str, compute: bool) -> None:
    assert is_compute_op(name) is compute


class CustomKernelLM(nn.Module):
    """Token embedding and output layer with a custom kernel between them that the counter
    cannot see into."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(fused_attention(self.embed(tokens)))


CUSTOM_KERNEL_LM = TransformerConfig(num_layers=1, hidden_size=8, num_heads=2, vocab_size=16,
                                     max_position_embeddings=8, name="custom-kernel-lm")


def _measure_custom_kernel_lm(config: TransformerConfig | None) -> dict[str, Metric]:
    from harness.model import lm_loss, random_batch

    torch.manual_seed(0)
    model = CustomKernelLM(CUSTOM_KERNEL_LM)
    inputs = random_batch(CUSTOM_KERNEL_LM, 2, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return measure_train_step(model, inputs, lm_loss, optimizer, clock=FakeClock(0, 0.01),
                                   policy=POLICY, device="cpu", config=config,
                                   autocast_dtype=None)


def test_train_step_with_an_uncounted_op_falls_back_to_the_analytic_count() -> None:
    with pytest.warns(UncountedFlopsWarning,
                      match="could not count perf_harness_test.fused_attention \\(no FLOP "
                            "formula for this op\\); the analytic count for the config stands "
                            "in"):
        metrics = _measure_custom_kernel_lm(CUSTOM_KERNEL_LM)
    flops = metrics["flops_per_step"]
    assert flops.median == flop_counter_flops(CUSTOM_KERNEL_LM, 2, 8)
    assert "analytic count (flop_counter_flops): FlopCounterMode could not count " \
           "perf_harness_test.fused_attention" in flops.note


def test_train_step_with_an_uncounted_op_and_no_config_says_the_count_is_partial() -> None:
    with pytest.warns(UncountedFlopsWarning, match="the count misses their FLOPs"):
        metrics = _measure_custom_kernel_lm(None)
    flops = metrics["flops_per_step"]
    # The output layer's forward, weight gradient and input gradient (3 x 2*16*8*16: the
    # embedding below it trains), nothing of the kernel.
    assert flops.median == 3 * (2 * 16 * 8 * 16)
    assert "without the uncounted perf_harness_test.fused_attention" in \
        flops.note
