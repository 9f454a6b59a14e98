"""Data-parallel training as the distributed tests run it: the gradient bytes DDP all-reduces,
gradient accumulation under `no_sync`, and FSDP2 sharding the way torchtitan does it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

# torch.distributed re-exports GradBucket from here without declaring it (mypy's strict
# re-export rule); it is the same class.
from torch._C._distributed_c10d import GradBucket

from harness.checks import require_positive_int


class AllReduceByteCounter:
    """Counts the gradient bytes DDP all-reduces: its `hook` reduces exactly as DDP does by
    default (one all-reduce of each gradient bucket, averaged) and adds up the buckets.

    Register it with `ddp_model.register_comm_hook(None, counter.hook)` before the first
    forward.
    """

    def __init__(self) -> None:
        self.bytes = 0
        self.buckets = 0

    def hook(self, state: Any, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
        """The communication hook: count the bucket, then all-reduce it as DDP would."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        buffer = bucket.buffer()
        self.bytes += buffer.numel() * buffer.element_size()
        self.buckets += 1
        return allreduce_hook(state, bucket)

    def reset(self) -> None:
        """Start counting from zero."""
        self.bytes = 0
        self.buckets = 0


# DDP.register_comm_hook compares a hook's annotations with GradBucket and Future[Tensor] as
# objects; under `from __future__ import annotations` they are strings.
AllReduceByteCounter.hook.__annotations__ = {
    "state": Any, "bucket": GradBucket, "return": torch.futures.Future[torch.Tensor]}


def accumulate_gradients(model: torch.nn.parallel.DistributedDataParallel,
                         micro_step: Callable[[], None], grad_accum_steps: int) -> None:
    """The forward and backward passes of one optimizer step with gradient accumulation, as DDP
    training runs them: the first grad_accum_steps - 1 under `no_sync` (gradients accumulate
    locally), the last one with the all-reduce. `micro_step` runs one forward and backward."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise ValueError(f"model must be a DistributedDataParallel module, got "
                         f"{type(model).__name__}")
    require_positive_int("grad_accum_steps", grad_accum_steps)
    for _ in range(grad_accum_steps - 1):
        with model.no_sync():
            micro_step()
    micro_step()


def fsdp2() -> tuple[Callable[..., Any], type] | None:
    """torch's FSDP2 `(fully_shard, MixedPrecisionPolicy)`: from torch.distributed.fsdp since
    torch 2.6, torch.distributed._composable.fsdp in 2.4 and 2.5; None where it is missing."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import (  # type: ignore[attr-defined]
                MixedPrecisionPolicy,
                fully_shard,
            )
        except ImportError:
            return None
    return fully_shard, MixedPrecisionPolicy


def shard_with_fsdp2(model: torch.nn.Module, layers: Sequence[torch.nn.Module], *,
                     param_dtype: torch.dtype | None = torch.bfloat16,
                     reduce_dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Shard `model` with FSDP2 as torchtitan does: each of `layers` (the transformer blocks)
    is its own unit, then the root holds the rest (embedding, final norm, output layer);
    parameters all-gathered in `param_dtype`, gradients reduce-scattered in `reduce_dtype`.
    A ValueError when this torch has no FSDP2."""
    found = fsdp2()
    if found is None:
        raise ValueError(f"torch {torch.__version__} has no FSDP2 (fully_shard arrived in "
                         f"torch.distributed._composable.fsdp in 2.4)")
    fully_shard, mixed_precision_policy = found
    policy = mixed_precision_policy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
