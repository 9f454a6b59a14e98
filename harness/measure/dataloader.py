"""How fast a data loader feeds the device: time blocked waiting for a batch, host-to-device copy.

A training step that waits on `next(loader)` or on a pageable copy loses throughput without any
kernel getting slower; these metrics make that visible (pinned memory plus non-blocking copies
is the usual fix).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from harness.checks import require_positive_int
from harness.gate.results import Metric
from harness.measure.clocks import (
    Clock,
    HostClock,
    check_device,
    elapsed_seconds,
    timing_event,
)


def batch_tensors(batch: object) -> list[torch.Tensor]:
    """Every tensor in a batch, looking into tuples, lists and dicts (nested)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return [t for value in batch.values() for t in batch_tensors(value)]
    if isinstance(batch, (tuple, list)):
        return [t for value in batch for t in batch_tensors(value)]
    return []


def _pinned_note(pinned: int, total: int) -> str:
    if pinned == total:
        return "all batch tensors were in pinned memory"
    if pinned == 0:
        return ("no batch tensor was in pinned memory (DataLoader(pin_memory=True) makes "
                "non-blocking copies asynchronous)")
    return f"{pinned} of {total} batch tensors were in pinned memory"


def _next_batch(iterator: Iterator[Any], index: int, steps: int) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        raise ValueError(f"the loader ran out after {index} batch(es), but steps={steps} needs "
                         f"{steps + 1} (one warm-up batch plus {steps} measured); use a "
                         f"longer loader or fewer steps") from None


def _fetch_into(holder: list[Any], iterator: Iterator[Any], index: int, steps: int) -> None:
    """Put batch `index` of `iterator` into `holder` (the call the wait clock times)."""
    holder.append(_next_batch(iterator, index, steps))


def measure_dataloader(loader: Iterable[Any], *, device: str, steps: int,
                       clock: Clock | None = None) -> dict[str, Metric]:
    """Iterate `steps` batches after one warm-up batch (which starts the workers) and measure.

    Metrics: `wait_time` (s per batch blocked in `next()`, timed by `clock`, by default the host
    clock without CUDA synchronisation) and `batches_per_s`, each with one sample per window of
    consecutive batches (see `window_size`): a worker pool delivers in bursts, so single waits
    are bimodal (near 0 when a batch was prefetched, long when not) and their median says little,
    while the mean over whole worker cycles is stable. On CUDA also `h2d_time` (s per batch for
    `.to(device, non_blocking=True)` of every tensor in it, CUDA events, synchronised) and
    `h2d_bandwidth` (GB/s, 1e9 bytes); their note says whether the batches were pinned. On CPU
    there is no copy, so no copy metrics; neither are there for a loader that yields tensors
    already on the device.
    """
    device_type = check_device(device)
    require_positive_int("steps", steps)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} needs CUDA, but torch.cuda.is_available() is "
                         f"False on this machine")
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:  # an iterable dataset has no length: checked while iterating instead
        length = None
    if length is not None and length < steps + 1:
        raise ValueError(f"the loader has {length} batch(es), but steps={steps} needs "
                         f"{steps + 1} (one warm-up batch plus {steps} measured)")
    if clock is None:
        clock = HostClock(synchronize=False)

    iterator = iter(loader)
    first = _next_batch(iterator, 0, steps)
    if not batch_tensors(first):
        raise ValueError(f"the loader must yield tensors (or tuples, lists or dicts of them); "
                         f"its first batch is a {type(first).__name__}")

    waits: list[float] = []
    batch_ends: list[float] = []
    copy_seconds: list[float] = []
    copy_bytes: list[int] = []
    pinned = 0
    total = 0
    holder: list[Any] = []
    loop_start = time.perf_counter()
    for index in range(1, steps + 1):
        holder.clear()
        # The partial binds this iteration's index and lives only for the call, so that
        # `del iterator` below still drops the last reference to the loader's workers.
        waits.append(clock.time(functools.partial(_fetch_into, holder, iterator, index, steps), 1))
        tensors = batch_tensors(holder[0])
        if not tensors:
            raise ValueError(f"batch {index} of the loader holds no tensors "
                             f"(a {type(holder[0]).__name__})")
        host_tensors = [t for t in tensors if t.device.type == "cpu"]
        pinned += sum(1 for t in host_tensors if t.is_pinned())
        total += len(host_tensors)
        if device_type == "cuda" and host_tensors:
            seconds, nbytes = _copy_to_device(host_tensors, device)
            copy_seconds.append(seconds)
            copy_bytes.append(nbytes)
        batch_ends.append(time.perf_counter())
    del iterator  # shuts down the loader's worker processes

    note = _pinned_note(pinned, total) if total else "the batches were already on the device"
    window = window_size(steps, getattr(loader, "num_workers", 0))
    starts = [loop_start, *batch_ends[:-1]]
    batch_seconds = [end - start for start, end in zip(starts, batch_ends, strict=True)]
    metrics = {
        "wait_time": Metric(name="wait_time", unit="s", better="lower", kind="dataloader",
                            samples=tuple(_window_means(waits, window)),
                            note=f"time blocked in next(), mean per batch over windows of "
                                 f"{window} batch(es); {note}"),
        "batches_per_s": Metric(name="batches_per_s", unit="batches/s", better="higher",
                                kind="dataloader",
                                samples=tuple(1 / m for m in _window_means(batch_seconds, window)),
                                note=f"batches per second of loop wall time, over windows of "
                                     f"{window} batch(es)"),
    }
    if copy_seconds:
        metrics["h2d_time"] = Metric(
            name="h2d_time", unit="s", better="lower", kind="dataloader",
            samples=tuple(copy_seconds),
            note=f".to({device!r}, non_blocking=True) of every host tensor of {len(copy_seconds)} "
                 f"batch(es), CUDA events; {note}")
        metrics["h2d_bandwidth"] = Metric(
            name="h2d_bandwidth", unit="GB/s", better="higher", kind="dataloader",
            samples=tuple(b / s / 1e9 for b, s in zip(copy_bytes, copy_seconds, strict=True)),
            note=f"batch bytes / copy time (1 GB = 1e9 B); {note}")
    return metrics


# Samples per dataloader metric the window aims for: enough for quartiles and a rank test of
# the verdict, few enough that each window still spans whole worker cycles at 16-32 steps.
TARGET_WINDOWS = 8


def window_size(steps: int, num_workers: int) -> int:
    """Batches per sample: a whole number of worker cycles (each worker delivers one batch in
    turn), as many as still leave TARGET_WINDOWS samples, and at least one cycle."""
    cycle = max(1, num_workers)
    return cycle * max(1, steps // (TARGET_WINDOWS * cycle))


def _window_means(values: list[float], window: int) -> list[float]:
    """Means of consecutive full windows (a trailing partial window is dropped); the plain
    mean when there are fewer values than one window."""
    full = len(values) // window
    if full == 0:
        return [sum(values) / len(values)]
    return [sum(values[i * window:(i + 1) * window]) / window for i in range(full)]


def _copy_to_device(tensors: list[torch.Tensor], device: str) -> tuple[float, int]:
    """Seconds (CUDA events, synchronised) and bytes of copying the tensors to the device."""
    stream = torch.cuda.current_stream(torch.device(device))
    start, end = timing_event(), timing_event()
    start.record(stream)
    copies = [t.to(device, non_blocking=True) for t in tensors]
    end.record(stream)
    end.synchronize()
    del copies
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return elapsed_seconds(start, end), nbytes
