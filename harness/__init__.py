"""perf-harness: keep the training performance of PyTorch models from silently getting worse."""

from harness.config import TransformerConfig, get_model, list_models, load_hf_config

__all__ = ["TransformerConfig", "get_model", "list_models", "load_hf_config"]
