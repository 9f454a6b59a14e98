"""The input pipeline: DataLoader worker scaling, pinned against pageable host-to-device copies,
and the share of a training step spent waiting for data (source 001, "DataLoader").

The dataset does a fixed amount of single-threaded CPU work per image (workloads.SyntheticImages),
as decoding and augmenting real images does, so more workers should mean more batches per second
until the GPU side or the main process becomes the limit.
"""

from __future__ import annotations

import gc
import statistics

import pytest
import torch

from harness.pytest_plugin.fixture import Perf
from perf_tests import workloads as w

pytestmark = pytest.mark.gpu


def test_two_workers_deliver_more_batches_per_second_than_none(perf: Perf) -> None:
    rates: dict[int, float] = {}
    for workers in w.LOADER_WORKER_COUNTS:
        loader = w.image_loader(workers)
        prefix = f"workers{workers}_"
        measured = perf.dataloader(loader, steps=w.LOADER_STEPS, name_prefix=prefix,
                                   tolerance=w.HOST_BOUND_TOLERANCE["dataloader_workers"])
        rates[workers] = measured[f"{prefix}batches_per_s"].median
        # Persistent workers stop when their loader is collected: before the next measurement.
        del loader, measured
        gc.collect()
    # Theory: with the transform as the only cost, n workers make n batches in the time one
    # process makes one; pinning, collation and the copy in the main process keep it below.
    perf.metric("two_worker_speedup", rates[2] / rates[0], unit="x", better="higher",
                kind="dataloader", theory=2.0,
                tolerance=w.HOST_BOUND_TOLERANCE["dataloader_workers"])
    assert rates[2] > rates[0], (
        f"2 workers delivered {rates[2]:.1f} batches/s, no more than the main process alone "
        f"({rates[0]:.1f}): the workers do not run in parallel")


def test_pinned_host_memory_copies_faster_than_pageable(perf: Perf) -> None:
    nbytes = w.H2D_BYTES
    device_buffer = torch.empty(nbytes, dtype=torch.uint8, device=perf.device)
    pinned = w.host_buffer(nbytes, pinned=True)
    pageable = w.host_buffer(nbytes, pinned=False)
    # No L2 flush: a 256 MiB copy streams through L2 many times over; flushing adds nothing.
    measured_pinned = perf.time(lambda: device_buffer.copy_(pinned, non_blocking=True),
                                name="h2d_pinned", bytes=nbytes, flush_l2=False)
    measured_pageable = perf.time(lambda: device_buffer.copy_(pageable, non_blocking=True),
                                  name="h2d_pageable", bytes=nbytes, flush_l2=False,
                                  tolerance=w.HOST_BOUND_TOLERANCE["h2d_pageable"])
    pinned_gbps = measured_pinned["h2d_pinned_gbps"].samples
    pageable_gbps = measured_pageable["h2d_pageable_gbps"].samples
    # Independent sample sets, paired in order: the ratios carry the noise of both.
    ratios = [fast / slow for fast, slow in zip(pinned_gbps, pageable_gbps)]
    perf.metric("pinned_over_pageable", ratios, unit="x", better="higher",
                kind="dataloader", tolerance=w.HOST_BOUND_TOLERANCE["h2d_pageable"])
    del device_buffer, pinned, pageable
    assert statistics.median(ratios) > 1, (
        f"pinned copies ran at {statistics.median(pinned_gbps):.1f} GB/s and pageable ones at "
        f"{statistics.median(pageable_gbps):.1f} GB/s: page-locked memory should be faster, "
        f"since the driver copies pageable memory through a staging buffer first")


def _data_wait(perf: Perf, workers: int) -> list[float]:
    """Per-step fraction of wall time spent waiting for data while SmallConvNet trains."""
    loader = w.image_loader(workers, length=w.DATA_WAIT_LENGTH)
    model = w.SmallConvNet().to(perf.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=w.TRAINING_LR, fused=True)
    fractions = w.data_wait_fractions(model, loader, optimizer, steps=w.DATA_WAIT_STEPS,
                                      device=perf.device)
    del loader, model, optimizer
    gc.collect()
    return fractions


def test_two_workers_cut_the_time_a_step_waits_for_data(perf: Perf) -> None:
    alone = _data_wait(perf, workers=0)
    with_workers = _data_wait(perf, workers=2)
    perf.metric("data_wait_fraction_workers0", alone, unit="ratio", better="lower",
                kind="dataloader")
    perf.metric("data_wait_fraction", with_workers, unit="ratio", better="lower",
                kind="dataloader")
    for fractions in (alone, with_workers):
        assert all(0 <= f < 1 for f in fractions), (
            f"a fraction of a step must lie in [0, 1): {fractions}")
    # Without workers every batch is made while the step waits; two workers make the next
    # batches while the GPU trains, so a step waits for at most what they cannot hide.
    assert statistics.median(with_workers) < statistics.median(alone), (
        f"with 2 workers a step waited {statistics.median(with_workers):.1%} of its time for "
        f"data, not less than the {statistics.median(alone):.1%} without workers")
