"""GPU memory of training and inference, in bytes: one module per concern, import from each.

- `breakdown`: `MemoryBreakdown` (the result type), the CUDA context and NCCL buffer ranges the
  allocator never sees, `device_reserve_bytes` and `fits`.
- `states`: precisions, optimizers, bytes per parameter, model states sharded by ZeRO.
- `activations`: activations after Korthikanti et al. 2022 (Megatron-LM precisions).
- `autocast`: eager PyTorch under torch.autocast, the peak over the moments of a step, for
  harness.model's block or (`huggingface`) transformers' Llama-family blocks; `copies`: the
  16-bit weight copies autocast makes.
- `training`: `training_memory` (states plus activations on the busiest GPU, naming the block
  implementation it models) and `memory_by_layout` (the same step under each kind of
  parallelism).
- `inference`: `kv_cache_bytes`, `inference_memory` and `max_concurrent_requests`.

What the estimates leave out: allocator fragmentation and rounding, GEMM workspaces (cuBLAS keeps
a few tens of MiB per handle), and the CUDA context and communication buffers that torch's
allocator never sees (`breakdown.CUDA_CONTEXT_BYTES_RANGE`,
`breakdown.DISTRIBUTED_BUFFER_BYTES_RANGE`).
"""
