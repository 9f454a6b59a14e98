"""The input pipeline: DataLoader worker scaling, pinned against pageable host-to-device copies,
and the share of a training step spent waiting for data (source 001, "DataLoader").

The dataset does a fixed amount of single-threaded CPU work per image
(`harness.workloads.dataloader.SyntheticImages`), as decoding and augmenting real images does, so
more workers should mean more batches per second until the GPU side or the main process becomes
the limit.
"""

from __future__ import annotations

import gc
import statistics

import pytest
import torch

from harness.pytest_plugin.fixture import Perf
from harness.workloads.dataloader import (
    DATA_WAIT_LENGTH,
    DATA_WAIT_STEPS,
    H2D_BYTES,
    LOADER_STEPS,
    LOADER_WORKER_COUNTS,
    SmallConvNet,
    data_wait_fractions,
    host_buffer,
    image_loader,
)
from harness.workloads.tolerances import HOST_BOUND_TOLERANCE
from harness.workloads.training import TRAINING_LR

pytestmark = pytest.mark.gpu


def test_two_workers_deliver_more_batches_per_second_than_none(perf: Perf) -> None:
    rates: dict[int, float] = {}
    for workers in LOADER_WORKER_COUNTS:
        loader = image_loader(workers)
        prefix = f"workers{workers}_"
        measured = perf.dataloader(loader, steps=LOADER_STEPS, name_prefix=prefix,
                                   tolerance=HOST_BOUND_TOLERANCE["dataloader_workers"])
        rates[workers] = measured[f"{prefix}batches_per_s"].median
        # Persistent workers stop when their loader is collected: before the next measurement.
        del loader, measured
        gc.collect()
    # Theory: with the transform as the only cost, n workers make n batches in the time one
    # process makes one; pinning, collation and the copy in the main process keep it below.
    perf.metric("two_worker_speedup", rates[2] / rates[0], unit="x", better="higher",
                kind="dataloader", theory=2.0,
                tolerance=HOST_BOUND_TOLERANCE["dataloader_workers"])
    assert rates[2] > rates[0], (
        f"2 workers delivered {rates[2]:.1f} batches/s, no more than the main process alone "
        f"({rates[0]:.1f}): the workers do not run in parallel")


def _copy_gbps(perf: Perf, nbytes: int) -> tuple[list[float], list[float]]:
    """GB/s per sample of a host-to-device copy of `nbytes` from pinned and from pageable
    memory. The buffers live only in this function, so no assertion keeps them alive."""
    device_buffer = torch.empty(nbytes, dtype=torch.uint8, device=perf.device)
    pinned = host_buffer(nbytes, pinned=True)
    pageable = host_buffer(nbytes, pinned=False)
    # No L2 flush: a 256 MiB copy streams through L2 many times over; flushing adds nothing.
    measured_pinned = perf.time(lambda: device_buffer.copy_(pinned, non_blocking=True),
                                name="h2d_pinned", bytes=nbytes, flush_l2=False)
    measured_pageable = perf.time(lambda: device_buffer.copy_(pageable, non_blocking=True),
                                  name="h2d_pageable", bytes=nbytes, flush_l2=False,
                                  tolerance=HOST_BOUND_TOLERANCE["h2d_pageable"])
    return (list(measured_pinned["h2d_pinned_gbps"].samples),
            list(measured_pageable["h2d_pageable_gbps"].samples))


def test_pinned_host_memory_copies_faster_than_pageable(perf: Perf) -> None:
    pinned_gbps, pageable_gbps = _copy_gbps(perf, H2D_BYTES)
    # Independent sample sets, paired in order: the ratios carry the noise of both. Each
    # measurement stops on its own time budget, so one may hold more samples than the other;
    # the pairs end with the shorter.
    ratios = [fast / slow for fast, slow in zip(pinned_gbps, pageable_gbps, strict=False)]
    perf.metric("pinned_over_pageable", ratios, unit="x", better="higher",
                kind="dataloader", tolerance=HOST_BOUND_TOLERANCE["h2d_pageable"])
    assert statistics.median(ratios) > 1, (
        f"pinned copies ran at {statistics.median(pinned_gbps):.1f} GB/s and pageable ones at "
        f"{statistics.median(pageable_gbps):.1f} GB/s: page-locked memory should be faster, "
        f"since the driver copies pageable memory through a staging buffer first")


def _data_wait(perf: Perf, workers: int) -> list[float]:
    """Per-step fraction of wall time spent waiting for data while SmallConvNet trains."""
    loader = image_loader(workers, length=DATA_WAIT_LENGTH)
    model = SmallConvNet().to(perf.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING_LR, fused=True)
    fractions = data_wait_fractions(model, loader, optimizer, steps=DATA_WAIT_STEPS,
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
