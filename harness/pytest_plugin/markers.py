"""The markers: `gpu` and `distributed` (what a measured test needs) and `perf` (set on every
test that uses the `perf` fixture); which tests the first two apply to, and what they do at
collection (`skip_gpu_tests`, `skip_distributed_tests`).

The plugin's meaning of `gpu` (skipped without CUDA, `-m gpu` refused without it) and of
`distributed` (skipped without a torchrun launch) applies to tests that use `perf`, so another
project's own markers of those names keep their meaning; a project opts every test in with
`perf_marker_scope = all` (`options.marker_scope`). A marker the project registers itself is not
registered again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from harness.distributed.launch import Launch, required_ranks
from harness.pytest_plugin.options import no_cuda_detail

GPU_MARKER = ("gpu: (perf-harness) measures on a CUDA device. Skipped when no CUDA device is "
              "visible; `pytest -m gpu` without one stops before running anything.")
DISTRIBUTED_MARKER = ("distributed: (perf-harness) reserved for multi-GPU tests "
                      "(torch.distributed), run on every rank of a launch: `torchrun "
                      "--nproc-per-node N -m pytest -m distributed`. distributed(nprocs=N) needs "
                      "at least N ranks (default 2). Skipped without a launch; `-m distributed` "
                      "without one stops before running anything.")
PERF_MARKER = ("perf: (perf-harness) set on every test that uses the perf fixture: `-m perf` "
               "selects the measured tests, `-m 'not perf'` the others.")

# The fixture whose use makes a test a measured one.
PERF_FIXTURE = "perf"


def _marker_name(line: str) -> str:
    """The name of a `markers` ini line: "gpu(n): text" -> "gpu"."""
    return line.split(":", 1)[0].split("(", 1)[0].strip()


def register(config: pytest.Config) -> None:
    """Document the plugin's markers, except those the project registers itself."""
    registered = {_marker_name(str(line)) for line in config.getini("markers")}
    for line in (GPU_MARKER, DISTRIBUTED_MARKER, PERF_MARKER):
        if _marker_name(line) not in registered:
            config.addinivalue_line("markers", line)


def uses_perf(item: pytest.Item) -> bool:
    """Whether the test requests the `perf` fixture, itself or through another fixture."""
    return PERF_FIXTURE in getattr(item, "fixturenames", ())


def mark_measured(items: list[pytest.Item]) -> None:
    """Set the `perf` marker on every test that uses `perf`."""
    for item in items:
        if uses_perf(item) and item.get_closest_marker("perf") is None:
            item.add_marker(pytest.mark.perf)


def in_scope(items: list[pytest.Item], scope: str) -> list[pytest.Item]:
    """The tests the `gpu` and `distributed` markers apply to under `perf_marker_scope`."""
    return list(items) if scope == "all" else [item for item in items if uses_perf(item)]


def _no_cuda_reason() -> str:
    """Why GPU tests cannot run here: the perf device is the CPU, or CUDA is not visible."""
    from harness.measure import environment

    if environment.cuda_available():
        return "the perf device is cpu (--perf-device cpu); GPU tests measure on CUDA only"
    return f"no CUDA device visible: {no_cuda_detail()}"


def _gpu_markexpr(config: pytest.Config) -> str | None:
    """The -m expression when it names the gpu marker (GPU tests were asked for), else None."""
    return _markexpr_naming(config, "gpu")


def _markexpr_naming(config: pytest.Config, marker: str) -> str | None:
    """The -m expression when it names `marker`, else None."""
    markexpr = config.getoption("markexpr", "") or ""
    return markexpr if re.search(rf"\b{marker}\b", markexpr) else None


def _required_ranks(item: pytest.Item) -> int | None:
    """Ranks a test's `distributed` marker asks for; None for a test without the marker."""
    marker = item.get_closest_marker("distributed")
    if marker is None:
        return None
    try:
        return required_ranks(marker.args, marker.kwargs)
    except ValueError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def skip_gpu_tests(config: pytest.Config, items: list[pytest.Item],
                   device: Callable[[], str]) -> set[str]:
    """Skip `gpu` tests when the perf device (`device()`, asked only when there are some) is
    not CUDA, a usage error when -m named the marker; the node ids of those skipped."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or device() == "cuda":
        return set()
    why = _no_cuda_reason()
    markexpr = _gpu_markexpr(config)
    if markexpr is not None:
        raise pytest.UsageError(
            f"-m {markexpr!r} selected {len(gpu_items)} GPU test(s), but {why}. Nothing was "
            f"run: a GPU suite that skips everything would look green. Run it on a machine "
            f"with a CUDA device; for the CPU suite run pytest without -m gpu.")
    skip = pytest.mark.skip(reason=why)
    for item in gpu_items:
        item.add_marker(skip)
    return {item.nodeid for item in gpu_items}


def skip_distributed_tests(config: pytest.Config, items: list[pytest.Item],
                           launch_of_run: Callable[[], Launch | None],
                           device: Callable[[], str]) -> set[str]:
    """`distributed` tests: without a launch (`launch_of_run()`, read only when there are
    some), skipped (a usage error under -m naming the marker); with one, skipped when they need
    more ranks than it has. The node ids of those skipped."""
    needs = {item.nodeid: count for item in items
             if (count := _required_ranks(item)) is not None}
    if not needs:
        return set()
    launch = launch_of_run()
    if launch is None:
        most = max(needs.values())
        command = f"torchrun --nproc-per-node {most} -m pytest -m distributed"
        markexpr = _markexpr_naming(config, "distributed")
        if markexpr is not None:
            raise pytest.UsageError(
                f"-m {markexpr!r} selected {len(needs)} distributed test(s), but this "
                f"pytest was not started by a launcher (WORLD_SIZE is not set). Nothing "
                f"was run. Run them under torchrun: {command}")
        skip = pytest.mark.skip(reason=f"distributed test: run under torchrun, e.g. "
                                       f"`{command}`")
        for item in items:
            if item.nodeid in needs:
                item.add_marker(skip)
        return set(needs)
    from harness.measure import devices

    visible = (f" ({len(devices.detect_gpus())} GPU(s) visible on this host)"
               if device() == "cuda" else "")
    skipped = set()
    for item in items:
        count = needs.get(item.nodeid)
        if count is not None and count > launch.world_size:
            skipped.add(item.nodeid)
            item.add_marker(pytest.mark.skip(reason=(
                f"needs {count} ranks (distributed(nprocs={count})), this launch has "
                f"{launch.world_size}{visible}: run under "
                f"`{launch.relaunch_command(count)}`")))
    return skipped
