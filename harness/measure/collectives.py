"""Collectives measured: one all-reduce, all-gather or reduce-scatter of the default process group
as a function to time, and its time and nccl-tests bus bandwidth as metrics.

The caller owns the process group (`harness.distributed.group.start`) and the clock; this module
only builds the call and turns the seconds it took into metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from harness.checks import require_positive_int
from harness.gate.formatting import format_size
from harness.gate.results import Metric
from harness.theory.comm import COLLECTIVES, bus_bandwidth, bus_bandwidth_factor


def _gather_into(output: torch.Tensor, chunk: torch.Tensor) -> None:
    # all_gather_single is the name from torch 2.13 on; all_gather_into_tensor before.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, chunk)


def _scatter_into(output: torch.Tensor, whole: torch.Tensor) -> None:
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(output, whole)


def collective_call(op: str, nbytes: int, *, world_size: int, device: str | torch.device,
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Callable[[], None]:
    """A no-argument function that runs one collective of nccl-tests size `nbytes` (the whole
    buffer: the all-reduced tensor, the gathered output, the reduce-scatter's input) on the
    default process group, with buffers allocated once on `device` and filled at random.

    The all-reduce works in place, so repeated calls grow the values until they overflow to
    inf/nan; that is harmless: reductions run at the same speed on any bit pattern (unlike
    matmul power draw, the reason never to time zeros).
    """
    if op not in COLLECTIVES:
        raise ValueError(f"op must be one of {', '.join(COLLECTIVES)}; got {op!r}")
    require_positive_int("world_size", world_size)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    element = torch.empty((), dtype=dtype).element_size()
    unit = element * world_size
    if require_positive_int("nbytes", nbytes) % unit:
        raise ValueError(f"nbytes must be a positive multiple of {unit} bytes (world_size "
                         f"{world_size} x {element}-byte {dtype} elements, so every rank holds "
                         f"whole elements), got {nbytes!r}")
    count = nbytes // element
    generator = torch.Generator(device=device).manual_seed(seed)

    def buffer(elements: int) -> torch.Tensor:
        return torch.randn(elements, dtype=dtype, device=device, generator=generator)

    if op == "all_reduce":
        tensor = buffer(count)

        def all_reduce() -> None:
            dist.all_reduce(tensor)

        return all_reduce
    if op == "all_gather":
        chunk, gathered = buffer(count // world_size), buffer(count)
        return lambda: _gather_into(gathered, chunk)
    whole, part = buffer(count), buffer(count // world_size)
    return lambda: _scatter_into(part, whole)


def collective_metrics(name: str, op: str, nbytes: int, world_size: int,
                       seconds: Sequence[float], *, link_bandwidth_bytes_per_s: float | None,
                       clock_name: str, clock_note: str = "",
                       tolerance: float | None = None) -> dict[str, Metric]:
    """Metrics of one collective measured as `seconds` per call: `name` (the time, s) and
    `<name>_busbw` (nccl-tests bus bandwidth, GB/s, with the link bandwidth as its theory: a
    ring can never beat it). `clock_note`, if any, follows the clock's name in the time's note."""
    if not seconds:
        raise ValueError("seconds must hold at least one sample")
    factor = bus_bandwidth_factor(op, world_size)
    link = link_bandwidth_bytes_per_s
    where = (f"one-way link bandwidth {link / 1e9:.0f} GB/s (GPUSpec)" if link is not None
             else "no link bandwidth in the GPU table")
    return {
        name: Metric(name=name, unit="s", better="lower", kind="time",
                     samples=tuple(seconds), tolerance=tolerance,
                     note=f"{op} of {format_size(nbytes)} over {world_size} ranks, per call; "
                          f"{clock_name} clock" + (f"; {clock_note}" if clock_note else "")),
        f"{name}_busbw": Metric(
            name=f"{name}_busbw", unit="GB/s", better="higher", kind="throughput",
            samples=tuple(bus_bandwidth(op, nbytes, s, world_size) / 1e9 for s in seconds),
            tolerance=tolerance, theory=None if link is None else link / 1e9,
            note=f"nccl-tests bus bandwidth: {nbytes} B / time x {factor:g} "
                 f"({'2(n-1)/n' if op == 'all_reduce' else '(n-1)/n'}); theory: {where}"),
    }
