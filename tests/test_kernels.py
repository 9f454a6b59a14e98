"""The kernel table of a profiled pass: device time as the union of intervals per step window,
the idle share, and the top rows covering most of the device time (scripted timelines)."""

from __future__ import annotations

import pytest

from harness.gate.profile import HOST_BOUND_IDLE_FRACTION, KernelRow
from harness.measure.kernels import DeviceInterval, summarize, top_rows, with_wall_time


def test_overlapping_kernels_count_once_and_gaps_between_kernels_are_idle() -> None:
    # Step 1: a GEMM with an overlapping add on another stream. Step 2: two GEMMs with a gap in
    # which the GPU waited for the host's next launch.
    timeline = [DeviceInterval("gemm", 2, 10), DeviceInterval("add", 5, 12),
                DeviceInterval("gemm", 22, 27), DeviceInterval("gemm", 33, 38)]
    steps = summarize(timeline, [(0, 13), (20, 40)])
    assert steps.device_seconds == pytest.approx((10e-6, 10e-6))
    profile = steps.profile
    assert profile.device_seconds == pytest.approx(10e-6)
    # Kernel spans 2..12 and 22..38: 26 us, of which 20 busy. The fence around them is not idle.
    assert profile.idle_fraction == pytest.approx(1 - 20 / 26)
    assert profile.host_bound
    gemm = next(r for r in profile.kernels if r.name == "gemm")
    assert gemm.calls_per_step == 1.5 and gemm.seconds_per_step == pytest.approx(9e-6)


def test_a_busy_window_is_gpu_bound() -> None:
    timeline = [DeviceInterval("gemm", 10 * i, 10 * i + 10) for i in range(5)]
    profile = summarize(timeline, [(0, 50)]).profile
    assert profile.idle_fraction == 0 and not profile.host_bound
    assert HOST_BOUND_IDLE_FRACTION > 0


def test_work_outside_the_windows_is_left_out() -> None:
    # An L2 flush (memset) ran between the fenced steps: it is not the step's work.
    timeline = [DeviceInterval("memset", 0, 50), DeviceInterval("gemm", 60, 70),
                DeviceInterval("memset", 80, 130), DeviceInterval("gemm", 140, 150)]
    steps = summarize(timeline, [(58, 71), (138, 151)])
    assert [r.name for r in steps.profile.kernels] == ["gemm"]
    assert steps.device_seconds == pytest.approx((10e-6, 10e-6))
    assert steps.profile.idle_fraction == 0  # a lone kernel per step: nothing waited


def test_a_window_without_device_work_is_all_idle() -> None:
    steps = summarize([], [(0, 10), (20, 30)], host_issue_seconds=0.01)
    assert steps.profile.idle_fraction == 1.0 and steps.profile.kernels == ()
    assert steps.device_seconds == (0.0, 0.0)
    assert steps.profile.host_issue_seconds == 0.01


def test_top_rows_cover_the_share_and_sum_the_rest() -> None:
    rows = [KernelRow("big", 1, 90.0), KernelRow("mid", 2, 6.0)] + [
        KernelRow(f"tiny{i}", 1, 0.5) for i in range(8)]
    table = top_rows(rows, coverage=0.95)
    assert [r.name for r in table] == ["big", "mid", "(other 8 kernels)"]
    assert table[-1].seconds_per_step == pytest.approx(4.0)
    assert table[-1].calls_per_step == 8
    assert sum(r.seconds_per_step for r in table) == pytest.approx(100.0)


def test_a_kernel_of_a_percent_or_more_is_listed_beyond_the_coverage() -> None:
    # A GEMM test with 5% more rows: the big GEMM covers 96%, the extra one is 4% of the time.
    rows = [KernelRow("gemm", 1, 96.0), KernelRow("extra gemm", 1, 3.5),
            KernelRow("fill", 1, 0.5)]
    assert [r.name for r in top_rows(rows)] == ["gemm", "extra gemm", "(other 1 kernels)"]


def test_top_rows_never_exceed_the_row_limit() -> None:
    rows = [KernelRow(f"k{i}", 1, 1.0) for i in range(100)]
    table = top_rows(rows, coverage=1.0, max_rows=10)
    assert len(table) == 11 and table[-1].name == "(other 90 kernels)"


def test_a_pass_needs_at_least_one_window() -> None:
    with pytest.raises(ValueError, match="number of windows must be a positive integer"):
        summarize([], [])


def test_the_idle_share_is_taken_against_the_timed_wall_time() -> None:
    # The profiled pass saw big gaps (the profiler slowed the host), but the timed step took
    # 12.5 us for 10 us of device work: the host's share is 20%, not the profiled 23%.
    timeline = [DeviceInterval("gemm", 2, 10), DeviceInterval("add", 5, 12),
                DeviceInterval("gemm", 22, 27), DeviceInterval("gemm", 33, 38)]
    profiled = with_wall_time(summarize(timeline, [(0, 13), (20, 40)]), 12.5e-6)
    assert profiled.profile.idle_fraction == pytest.approx(0.2)
    assert profiled.device_seconds == pytest.approx((10e-6, 10e-6))
    faster_than_device = with_wall_time(summarize(timeline, [(0, 13), (20, 40)]), 5e-6)
    assert faster_than_device.profile.idle_fraction == 0.0
    with pytest.raises(ValueError, match="wall_seconds must be a positive"):
        with_wall_time(profiled, 0.0)


# -- phases, classes, traces, and stored profiles old and new -----------------------------------

class FakeEvent:
    """A kineto record as torch.profiler hands them out (`kineto_results.events()`): torch 2.13
    names its activity, torch 2.11 only flags annotations (`with_activity=False`)."""

    def __init__(self, name: str, device: str, start_us: float, end_us: float, *,
                 correlation: int = 0, linked: int = 0, annotation: bool = False,
                 with_activity: bool = True) -> None:
        from torch.profiler import DeviceType

        self._name, self._start, self._end = name, start_us, end_us
        self._device = DeviceType.CUDA if device == "cuda" else DeviceType.CPU
        self._correlation, self._linked, self._annotation = correlation, linked, annotation
        if with_activity:
            kind = ("gpu_user_annotation" if device == "cuda" else "user_annotation") \
                if annotation else ("kernel" if device == "cuda" else "cpu_op")
            self.activity_type = lambda: kind

    def name(self) -> str:
        return self._name

    def device_type(self) -> object:
        return self._device

    def start_ns(self) -> int:
        return int(self._start * 1000)

    def end_ns(self) -> int:
        return int(self._end * 1000)

    def correlation_id(self) -> int:
        return self._correlation

    def linked_correlation_id(self) -> int:
        return self._linked

    def is_user_annotation(self) -> bool:
        return self._annotation


@pytest.mark.parametrize("with_activity", [True, False])
def test_kernels_belong_to_the_phase_whose_range_holds_their_launching_op(
        with_activity: bool) -> None:
    from harness.measure.kernels import _device_intervals

    def event(*args: object, **kwargs: object) -> FakeEvent:
        return FakeEvent(*args, with_activity=with_activity, **kwargs)  # type: ignore[arg-type]

    events = [
        event("perf::phase::forward", "cpu", 0, 10, correlation=1, annotation=True),
        event("aten::mm", "cpu", 2, 3, correlation=2),
        event("perf::phase::backward", "cpu", 10, 30, correlation=3, annotation=True),
        # Autograd's own thread launches the backward GEMM while the caller waits in the range.
        event("aten::mm", "cpu", 12, 13, correlation=4),
        event("perf::phase::optimizer", "cpu", 30, 35, correlation=5, annotation=True),
        event("aten::_fused_adamw_", "cpu", 31, 32, correlation=6),
        event("aten::zero_", "cpu", 40, 41, correlation=7),  # outside every phase
        # GPU side: kernels run later than their launch, each linked to its op.
        event("gemm_fwd", "cuda", 5, 9, correlation=100, linked=2),
        event("gemm_bwd", "cuda", 14, 20, correlation=101, linked=4),
        event("fused_adam", "cuda", 33, 34, correlation=102, linked=6),
        event("memset", "cuda", 42, 43, correlation=103, linked=7),
        event("orphan", "cuda", 44, 45, correlation=104, linked=999),
        event("perf::phase::forward", "cuda", 5, 9, annotation=True),  # not work
    ]
    phases = {i.name: i.phase for i in _device_intervals(events)}
    assert phases == {"gemm_fwd": "forward", "gemm_bwd": "backward", "fused_adam": "optimizer",
                      "memset": "other", "orphan": "other"}


def test_a_step_without_named_phases_attributes_no_phase() -> None:
    from harness.measure.kernels import _device_intervals

    events = [FakeEvent("aten::mm", "cpu", 0, 1, correlation=2),
              FakeEvent("gemm", "cuda", 1, 2, linked=2)]
    assert [i.phase for i in _device_intervals(events)] == [""]


def test_the_profile_keeps_seconds_per_class_and_phase_of_every_kernel() -> None:
    gemm = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"
    timeline = [DeviceInterval(gemm, 0, 6, "forward"), DeviceInterval(gemm, 10, 22, "backward"),
                DeviceInterval(gemm, 22, 34, "backward"),
                DeviceInterval("void at::native::vectorized_layer_norm_kernel<float>(int)", 6, 8,
                               "forward")]
    profile = summarize(timeline, [(0, 40)]).profile
    assert profile.classes["contraction"] == pytest.approx(30e-6)
    assert profile.classes["normalisation"] == pytest.approx(2e-6)
    assert profile.phases == pytest.approx({"forward": 8e-6, "backward": 24e-6})
    assert {r.name: r.phase for r in profile.kernels}[gemm] == "backward"  # most of its time


def test_phase_ranges_record_in_the_profiled_pass_only() -> None:
    import contextlib

    from torch.autograd.profiler import record_function

    from harness.measure import kernels

    assert isinstance(kernels.phase_range("forward"), contextlib.nullcontext)
    token = kernels._IN_PROFILED_PASS.set(True)
    try:
        assert isinstance(kernels.phase_range("forward"), record_function)
    finally:
        kernels._IN_PROFILED_PASS.reset(token)


def test_a_profile_of_an_older_version_2_file_still_loads() -> None:
    from harness.gate.profile import DeviceProfile
    from harness.gate.results import RunResults

    old = {"steps": 5, "device_seconds": 0.06, "idle_fraction": 0.01,
           "host_issue_seconds": 0.012,
           "kernels": [{"name": "gemm", "calls_per_step": 4, "seconds_per_step": 0.05},
                       {"name": "(other 3 kernels)", "calls_per_step": 3,
                        "seconds_per_step": 0.01}]}
    profile = DeviceProfile.from_json(old, "old.json")
    assert profile.classes == {} and profile.phases == {}
    assert all(row.phase is None for row in profile.kernels)
    assert profile.to_json() == old  # written back unchanged: the new fields stay absent
    document = {"schema_version": 2, "kind": "baseline", "fingerprint": "nvidia-h200",
                "environment": {}, "metrics": {"t.py::test::device_time": {
                    "unit": "s", "better": "lower", "kind": "time", "samples": [0.06, 0.061],
                    "profile": old,
                    "runs": [{"median": 0.06, "spread": 0.01, "count": 2, "host": "h"}]}}}
    loaded = RunResults.from_json(document, "old.json")
    metric = loaded.metrics["t.py::test::device_time"]
    assert metric.profile == profile and metric.runs[0].profile is None


def test_new_profile_fields_round_trip_and_bad_ones_name_the_field() -> None:
    from harness.gate.fleet import RunSummary
    from harness.gate.profile import DeviceProfile, ProfileError

    profile = DeviceProfile(steps=5, device_seconds=0.06, idle_fraction=0.0,
                            host_issue_seconds=None,
                            kernels=(KernelRow("gemm", 4, 0.05, "backward"),),
                            classes={"contraction": 0.05}, phases={"backward": 0.05})
    assert DeviceProfile.from_json(profile.to_json(), "x") == profile
    run = RunSummary(0.06, 0.01, 5, "h", "", profile)
    assert RunSummary.from_json(run.to_json(), "x") == run
    with pytest.raises(ProfileError, match="'classes' must be an object"):
        DeviceProfile.from_json({**profile.to_json(), "classes": [1]}, "x.json")
    with pytest.raises(ProfileError, match="'phase' must be a string"):
        DeviceProfile.from_json({**profile.to_json(), "kernels": [
            {"name": "g", "calls_per_step": 1, "seconds_per_step": 1, "phase": 3}]}, "x.json")


def chrome_trace(steps: int, events_per_step: int) -> dict[str, object]:
    events: list[dict[str, object]] = [{"name": "process_name", "ph": "M", "pid": 1,
                                        "ts": 0, "args": {"name": "python"}}]
    for step in range(steps):
        start = 1000.0 * (step + 1)
        events.append({"name": "perf::window", "ph": "X", "cat": "user_annotation",
                       "ts": start, "dur": 900})
        events.append({"name": "perf::window", "ph": "X", "cat": "gpu_user_annotation",
                       "ts": start + 10, "dur": 950})
        events += [{"name": f"kernel {step}.{i} " + "x" * 40, "ph": "X", "cat": "kernel",
                    "ts": start + 1 + i * 0.1, "dur": 0.05} for i in range(events_per_step)]
    return {"schemaVersion": 1, "traceEvents": events}


def test_a_trace_keeps_its_first_steps_gzipped_and_fewer_when_too_large(tmp_path) -> None:
    import gzip
    import json

    from harness.measure.kernels import write_bounded_trace

    target = tmp_path / "t" / "step.trace.json.gz"
    assert write_bounded_trace(chrome_trace(5, 50), target, steps=2) == 2
    written = json.loads(gzip.decompress(target.read_bytes()))
    names = {e["name"].split(" ")[1].split(".")[0] for e in written["traceEvents"]
             if e.get("cat") == "kernel"}
    assert names == {"0", "1"}
    assert any(e["ph"] == "M" for e in written["traceEvents"])
    one_step = len(gzip.compress(json.dumps(chrome_trace(1, 2000)).encode()))
    big = chrome_trace(5, 2000)
    assert write_bounded_trace(big, target, steps=2, max_bytes=int(one_step * 1.3)) == 1
    assert write_bounded_trace(big, target, steps=2, max_bytes=100) is None
    with pytest.raises(ValueError, match="traceEvents"):
        write_bounded_trace({}, target)


def test_profiled_passes_trace_only_inside_trace_into(tmp_path) -> None:
    from harness.measure import kernels

    assert kernels._TRACE_TARGET.get() is None
    with kernels.trace_into(tmp_path / "a.trace.json.gz"):
        assert kernels._TRACE_TARGET.get() == tmp_path / "a.trace.json.gz"
    assert kernels._TRACE_TARGET.get() is None


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_a_profiled_cuda_train_step_names_its_phases_and_classes(tmp_path) -> None:
    import torch

    from harness.gate.anatomy import anatomy
    from harness.measure.clocks import CudaEventClock
    from harness.measure.kernels import trace_into
    from harness.measure.sampling import TimingPolicy
    from harness.measure.train_step import measure_train_step
    from harness.model import build_model, lm_loss, random_batch
    from harness.theory.config import TransformerConfig

    config = TransformerConfig(num_layers=2, hidden_size=512, num_heads=8, vocab_size=4096,
                               max_position_embeddings=256, name="small-gpt")
    model = build_model(config, device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    policy = TimingPolicy(warmup_seconds=0.0, budget_seconds=1e9, min_samples=5,
                          max_samples=5, min_sample_seconds=1e-6)
    trace = tmp_path / "step.trace.json.gz"
    with trace_into(trace):
        metrics = measure_train_step(model, random_batch(config, 8, 256, device="cuda"),
                                     lm_loss, optimizer, clock=CudaEventClock(), policy=policy,
                                     device="cuda", profile_steps=3)
    profile = metrics["device_time"].profile
    assert profile is not None
    # Every kernel was launched in a named phase (zero_grad(set_to_none) launches none).
    assert {"forward", "backward", "optimizer"} <= set(profile.phases)
    kernel_time = sum(row.seconds_per_step for row in profile.kernels)
    assert sum(profile.phases.values()) == pytest.approx(kernel_time, rel=1e-6)
    assert sum(profile.classes.values()) == pytest.approx(kernel_time, rel=1e-6)
    parts = anatomy(profile)
    assert parts.classes["contraction"] > 0 and parts.classes["optimizer"] > 0
    ratio = parts.backward_forward_ratio
    assert ratio is not None and 1.0 < ratio < 4.0, profile.phases
    assert trace.is_file() and trace.stat().st_size > 0
