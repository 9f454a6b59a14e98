"""Tolerances of the suite's host-bound measurements, wider than the gate's defaults, with the
runs they come from: their time follows the host CPU as much as the GPU."""

from __future__ import annotations

# Host-bound measurements: their time follows the host CPU (Python, kernel launches, worker
# processes) as much as the GPU, and the host of a shared GPU runner varies far more between runs
# than the GPU does. Three runs of this suite on one H100 (2026-11-21: a recording and two
# verifications, minutes apart) moved GEMMs and the GPU-bound train steps by at most 3.6%, but:
#   - llama-full step time: medians 110, 114 and 163 ms (activation checkpointing re-launches
#     every block's small kernels; the eager Llama-style step reaches only ~18% MFU);
#   - one-token decode: 9.3, 11.3 and 9.6 ms, and in a second set of three runs 9.5, 16.4 and
#     16.7 ms (one token per step of an eager model: launch-bound by nature; it measures the
#     host, and a CUDA-graph decode would be needed to measure the GPU);
#   - DataLoader worker throughput: up to +65% (workers compete with everything else on the host).
# and between two recordings on one H200 (2026-11-21), under the 2% default tolerance:
#   - gpt-full step time: +4.1%, with a 10.8% spread (IQR/median) within the run;
#   - 256 MiB copy from pageable host memory: +6.4% (staged through a host buffer by the CPU);
#   - the misaligned/aligned SwiGLU GEMM ratio: +2.3% (it carries the noise of two GEMMs).
# Their tolerances sit just above that spread: such a gate still catches what matters there
# (recomputation or a fused path lost, workers gone to 0, decode 2x slower), not 5% drifts.
HOST_BOUND_TOLERANCE: dict[str, float] = {
    "llama-full": 0.5,
    "gpt-full": 0.15,
    "decode": 1.0,
    "dataloader_workers": 0.7,
    "h2d_pageable": 0.15,
    "gemm_ratio": 0.05,
}
