"""Bad input is refused with a ValueError that names the argument, never passed through to a
wrong number or a traceback from deep inside: invalid configs, and invalid batch sizes, sequence
lengths and parallel degrees for every public formula."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given

from harness.theory.config import TransformerConfig
from harness.theory.flops import decode_flops, forward_flops, train_flops
from harness.theory.memory.activations import activation_bytes, layer_activation_bytes
from harness.theory.memory.inference import inference_memory, kv_cache_bytes
from harness.theory.memory.training import training_memory
from harness.theory.parallel import (
    check_pipeline_parallel,
    check_tensor_parallel,
    data_parallel_size,
    global_batch_size,
    grad_accum_steps,
    params_per_rank,
    tokens_per_step,
)
from harness.theory.sizing import sizing_findings
from perf_tests.strategies import bad_sizes, invalid_config_kwargs, transformer_configs

# Each entry feeds one bad value into one size argument of one public function; the message must
# name that argument.
SIZE_ARGUMENTS: dict[str, tuple[str, Callable[[TransformerConfig, Any], object]]] = {
    "forward_flops(batch_size)": ("batch_size", lambda c, v: forward_flops(c, v, 8)),
    "forward_flops(seq_len)": ("seq_len", lambda c, v: forward_flops(c, 2, v)),
    "train_flops(batch_size)": ("batch_size", lambda c, v: train_flops(c, v, 8)),
    "train_flops(seq_len)": ("seq_len", lambda c, v: train_flops(c, 2, v, "full")),
    "decode_flops(batch_size)": ("batch_size", lambda c, v: decode_flops(c, v, 8)),
    "kv_cache_bytes(batch_size)": ("batch_size", lambda c, v: kv_cache_bytes(c, v, 8)),
    "kv_cache_bytes(seq_len)": ("seq_len", lambda c, v: kv_cache_bytes(c, 2, v)),
    "training_memory(batch_size)": ("batch_size", lambda c, v: training_memory(c, v, 8)),
    "training_memory(seq_len)": ("seq_len", lambda c, v: training_memory(c, 2, v)),
    "training_memory(tp)": ("tp", lambda c, v: training_memory(c, 2, 8, tp=v)),
    "training_memory(pp)": ("pp", lambda c, v: training_memory(c, 2, 8, pp=v)),
    "training_memory(dp)": ("dp", lambda c, v: training_memory(c, 2, 8, dp=v)),
    "activation_bytes(tp)": ("tp", lambda c, v: activation_bytes(c, 2, 8, tp=v)),
    "layer_activation_bytes(seq_len)": ("seq_len", lambda c, v: layer_activation_bytes(c, 2, v)),
    "inference_memory(batch_size)": ("batch_size", lambda c, v: inference_memory(c, v, 8)),
    "inference_memory(seq_len)": ("seq_len", lambda c, v: inference_memory(c, 2, v)),
    "sizing_findings(tp)": ("tp", lambda c, v: sizing_findings(c, 2, 8, tp=v)),
    "sizing_findings(batch_size)": ("batch_size", lambda c, v: sizing_findings(c, v, 8)),
    "check_tensor_parallel(tp)": ("tp", lambda c, v: check_tensor_parallel(c, v)),
    "check_pipeline_parallel(pp)": ("pp", lambda c, v: check_pipeline_parallel(c, v)),
    "params_per_rank(tp)": ("tp", lambda c, v: params_per_rank(c, tp=v)),
    "data_parallel_size(num_gpus)": ("num_gpus", lambda c, v: data_parallel_size(v, 1, 1)),
    "data_parallel_size(tp)": ("tp", lambda c, v: data_parallel_size(8, v, 1)),
    "data_parallel_size(pp)": ("pp", lambda c, v: data_parallel_size(8, 1, v)),
    "global_batch_size(micro_batch_size)": ("micro_batch_size",
                                            lambda c, v: global_batch_size(v, 2, 2)),
    "global_batch_size(grad_accum_steps)": ("grad_accum_steps",
                                            lambda c, v: global_batch_size(2, 2, v)),
    "grad_accum_steps(global_batch_size)": ("global_batch_size",
                                            lambda c, v: grad_accum_steps(v, 1, 1)),
    "tokens_per_step(seq_len)": ("seq_len", lambda c, v: tokens_per_step(8, v)),
}


@given(invalid_config_kwargs())
def test_invalid_configs_always_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        TransformerConfig(**kwargs)


@given(cfg=transformer_configs(max_layers=4, max_hidden=256), bad=bad_sizes())
def test_public_formulas_reject_bad_sizes_naming_the_argument(cfg, bad):
    for call, (argument, function) in SIZE_ARGUMENTS.items():
        try:  # any other exception propagates and fails the test with its traceback
            function(cfg, bad)
        except ValueError as error:
            assert argument in str(error), f"{call}: {error}"
        else:
            pytest.fail(f"{call} accepted {bad!r}")


@given(cfg=transformer_configs(max_layers=4, max_hidden=256), bad=bad_sizes())
def test_decode_rejects_a_bad_context_but_accepts_an_empty_cache(cfg, bad):
    if type(bad) is int and bad == 0:  # noqa: E721 - bool and float zeros must still fail
        assert decode_flops(cfg, 1, bad) == forward_flops(cfg, 1, 1)
    else:
        with pytest.raises(ValueError, match="context_len"):
            decode_flops(cfg, 1, bad)
