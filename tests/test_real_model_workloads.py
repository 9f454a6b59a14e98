"""The real-model workloads of the GPU suite (perf_tests/test_real_models.py) on the CPU: each
builds the model its settings describe, and the theory reads the same settings. Tiny sizes
here; the published sizes are the GPU suite's."""

from __future__ import annotations

import pytest
import torch

from harness.workloads.real_models import HF_WORKLOADS, RESNET50, HFWorkload

# Small enough to build in milliseconds, with the same kinds of parts (GQA, explicit head_dim,
# experts) as the workload itself.
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}


@pytest.mark.parametrize("name", list(HF_WORKLOADS))
def test_each_hugging_face_workload_builds_the_model_its_config_describes(name: str) -> None:
    pytest.importorskip("transformers", reason="needs transformers")
    workload = HF_WORKLOADS[name]
    overrides = dict(TINY, **({"head_dim": 32} if "head_dim" in workload.settings else {}))
    tiny = HFWorkload(name=f"tiny-{name}", settings={**workload.settings, **overrides},
                      batch_size=1, seq_len=16)
    model = tiny.build("cpu")
    assert model.config._attn_implementation == "sdpa"
    assert model.training and not model.config.use_cache
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == tiny.config().num_params()


def test_the_workloads_have_the_shapes_they_are_named_after() -> None:
    llama = HF_WORKLOADS["llama3_gqa"].config()
    assert (llama.num_heads, llama.kv_heads) == (32, 8)
    assert llama.num_params() == 1_235_814_400  # Llama 3.2 1B's published count
    qwen = HF_WORKLOADS["qwen3_head_dim"].config()
    assert qwen.head_dim * qwen.num_heads != qwen.hidden_size
    mixtral = HF_WORKLOADS["mixtral_moe"].config()
    assert mixtral.moe is not None and mixtral.moe.top_k < mixtral.moe.num_experts


def test_a_workload_without_a_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="settings must name the config's model_type"):
        HFWorkload(name="x", settings={"hidden_size": 8}, batch_size=1, seq_len=8)


def test_image_batches_are_channels_last_with_labels_in_range() -> None:
    small = type(RESNET50)(RESNET50.model_name, batch_size=2, image_size=32, num_classes=10)
    images, labels = small.batch("cpu")
    assert images.shape == (2, 3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.min() >= 0 and labels.max() < 10
