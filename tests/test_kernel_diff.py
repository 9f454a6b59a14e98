"""The kernel diff of a regression on scripted kernel tables: its lines add up to the step's
change, noise-level movers are hidden (in one summed line), and the three injected regressions
of the GPU evidence (an extra GEMM, the for-loop AdamW, host overhead) name their cause."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.gate.anatomy import anatomy, class_seconds
from harness.gate.explanation import explain_verdicts, profile_metric_id, run_profiles
from harness.gate.fleet import RunSummary
from harness.gate.kernel_diff import IDLE_KEY, SINGLE_RUN_FLOOR, diff_profiles
from harness.gate.profile import DeviceProfile, KernelRow
from harness.gate.results import Metric
from harness.gate.verdict import judge

GEMM_TN = ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_"
           "execute_segment_k_off_kernel__5x_cublas")
GEMM_TN_NVJET = "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT"
GEMM_NN = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nn_n_tilesize128x256x64_cublas"
FLASH = "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64> >(Flash_fwd_params)"
FUSED_ADAM = ("void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, "
              "FusedAdamMathFunctor<float, 4>, float*>(x)")
LAYER_NORM = "void at::native::vectorized_layer_norm_kernel<float, float>(int, float)"


def elementwise(op: str) -> str:
    return (f"void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<float, "
            f"float, float, at::native::binary_internal::{op}Functor<float> >, std::array<char*, "
            f"3ul> >(int)")


def profile(rows: dict[str, tuple[float, float]], *, device: float | None = None,
            idle: float = 0.0, phases: dict[str, str] | None = None) -> DeviceProfile:
    """A profile of kernels {name: (calls, seconds per step)}; device time = their sum unless
    given (less where kernels overlapped); `phases` {name: phase} sums per phase."""
    table = tuple(KernelRow(name, calls, seconds, (phases or {}).get(name))
                  for name, (calls, seconds) in rows.items())
    per_phase: dict[str, float] = {}
    for row in table:
        if row.phase is not None:
            per_phase[row.phase] = per_phase.get(row.phase, 0.0) + row.seconds_per_step
    return DeviceProfile(
        steps=5, device_seconds=sum(s for _, s in rows.values()) if device is None else device,
        idle_fraction=idle, host_issue_seconds=None, kernels=table,
        classes=class_seconds((r.name, r.seconds_per_step) for r in table), phases=per_phase)


TRAINING_STEP = {GEMM_TN: (96, 0.030), GEMM_NN: (96, 0.020), FLASH: (24, 0.008),
                 LAYER_NORM: (48, 0.004), elementwise("Mul"): (200, 0.003),
                 FUSED_ADAM: (4, 0.003)}
PHASES = {GEMM_TN: "forward", GEMM_NN: "backward", FLASH: "forward", LAYER_NORM: "forward",
          elementwise("Mul"): "backward", FUSED_ADAM: "optimizer"}


def assert_adds_up(diff_lines: float, change: float) -> None:
    assert diff_lines == pytest.approx(change, rel=1e-9, abs=1e-12)


def test_an_extra_gemm_is_named_and_the_anatomy_moves_to_contractions() -> None:
    base = profile(TRAINING_STEP, phases=PHASES)
    # Injection (a): 24 more GEMMs in the forward, picked by another cuBLAS heuristic (nvjet).
    new = profile({**TRAINING_STEP, GEMM_TN_NVJET: (24, 0.005)}, phases={
        **PHASES, GEMM_TN_NVJET: "forward"})
    diff = diff_profiles([base], [new])
    assert diff.cause == "kernels"
    assert [line.key for line in diff.movers] == ["gemm tn"]
    gemm = diff.movers[0]
    assert gemm.change == pytest.approx(0.005) and diff.share(gemm) == pytest.approx(1.0)
    assert (gemm.base_calls, gemm.new_calls) == (96, 120) and gemm.phase == "forward"
    assert diff.new_classes["contraction"] - diff.base_classes["contraction"] \
        == pytest.approx(0.005)
    assert diff.new_phases["forward"] - diff.base_phases["forward"] == pytest.approx(0.005)


def test_the_for_loop_adamw_names_new_elementwise_kernels_and_the_vanished_fused_one() -> None:
    base = profile(TRAINING_STEP, phases=PHASES)
    step = {k: v for k, v in TRAINING_STEP.items() if k != FUSED_ADAM}
    # Injection (b): per parameter a launch of each op, 10 ms where the fused kernel took 3.
    loop = {elementwise("Lerp"): (400, 0.003), elementwise("Sqrt"): (400, 0.002),
            elementwise("Div"): (400, 0.003), elementwise("Mul"): (600, 0.005)}
    new = profile({**step, **loop}, phases={**PHASES, **dict.fromkeys(loop, "optimizer")})
    diff = diff_profiles([base], [new])
    by_key = {line.key: line for line in diff.movers}
    assert by_key["multi_tensor_apply fusedadammath"].status == "vanished"
    assert by_key["elementwise lerp"].status == "new"
    assert by_key["elementwise lerp"].phase == "optimizer"
    assert by_key["elementwise mul"].new_calls == 600
    assert diff.new_classes["elementwise"] > diff.base_classes["elementwise"]
    assert diff.new_classes["optimizer"] == 0
    assert_adds_up(sum(line.change for line in (*diff.movers, diff.rest)), diff.change)


def test_host_overhead_names_the_idle_time_and_blames_no_kernel() -> None:
    base = profile(TRAINING_STEP, idle=0.05)
    # Injection (c): the same kernels (within 0.2%), the GPU idles 25% of a longer step.
    slower = {name: (calls, seconds * 1.002) for name, (calls, seconds) in
              TRAINING_STEP.items()}
    diff = diff_profiles([base], [profile(slower, idle=0.25)])
    assert diff.cause == "host"
    assert [line.key for line in diff.movers] == [IDLE_KEY]
    assert diff.share(diff.movers[0]) > 0.99


def test_a_kernel_bound_call_has_no_idle_line_when_its_burst_ran_faster() -> None:
    # One GEMM a call, timed back to back: 1.65 ms a call on each of four machines. The new
    # call adds a second, small GEMM (+5% of the work); its profiled burst ran at higher
    # clocks, so its kernels read 1.45 ms against a 1.70 ms wall time: 15% "idle" that the
    # GPU never had. Scaled to the wall time, the GEMM line carries the change and names the
    # extra launch, though four machines' times spread too widely for +3% to stand out alone.
    base = [profile({GEMM_NN: (1, seconds)}) for seconds in (1.60e-3, 1.65e-3, 1.70e-3, 1.66e-3)]
    new = profile({GEMM_NN: (2, 1.45e-3)}, idle=1 - 1.45 / 1.70)
    assert new.kernel_bound and not new.host_bound
    diff = diff_profiles(base, [new])
    assert diff.cause == "kernels"
    (gemm,) = diff.movers
    assert gemm.key == "gemm nn" and (gemm.base_calls, gemm.new_calls) == (1, 2)
    assert gemm.new_seconds == pytest.approx(1.70e-3)
    assert diff.new_classes["idle"] == 0
    shares = anatomy(new)  # the anatomy table says the same: no idle, the wall time in GEMMs
    assert shares.idle_share == 0
    assert shares.share(shares.classes["contraction"]) == pytest.approx(1.0)
    # The same line with its launches unchanged stays within its noise.
    same = profile({GEMM_NN: (1, 1.45e-3)}, idle=1 - 1.45 / 1.70)
    assert diff_profiles(base, [same]).cause == "noise"


def test_noise_level_movers_are_hidden_in_one_line_that_keeps_the_total() -> None:
    base = profile(TRAINING_STEP)
    step = sum(s for _, s in TRAINING_STEP.values())
    # Every kernel +0.5% (each far below 1% of the step), and the GEMM +3 ms.
    wobble = {name: (calls, seconds * 1.005) for name, (calls, seconds) in TRAINING_STEP.items()}
    wobble[GEMM_TN] = (96, 0.033)
    diff = diff_profiles([base], [profile(wobble)])
    assert [line.key for line in diff.movers] == ["gemm tn"]
    assert all(abs(line.change) <= SINGLE_RUN_FLOOR * step for line in [diff.rest])
    assert diff.rest.change > 0
    assert_adds_up(diff.movers[0].change + diff.rest.change, diff.change)
    assert diff.share(diff.movers[0]) + diff.share(diff.rest) == pytest.approx(1.0)


def test_a_kernel_moves_beyond_its_own_per_run_spread_only() -> None:
    # Three runs a side: the layer norm wanders by +-10% between runs, the GEMM by 0.1%.
    def run(norm: float, gemm: float) -> DeviceProfile:
        return profile({**TRAINING_STEP, LAYER_NORM: (48, norm), GEMM_TN: (96, gemm)})

    base = [run(0.0040, 0.0300), run(0.0044, 0.03003), run(0.0036, 0.02997)]
    # +0.4 ms on the noisy norm is within its spread; +0.3 ms on the steady GEMM is not.
    new = [run(0.0044, 0.0303), run(0.0048, 0.03033), run(0.0040, 0.03027)]
    diff = diff_profiles(base, new)
    assert [line.key for line in diff.movers] == ["gemm tn"]
    assert "per-run spread" in diff.noise_rule and "3 base, 3 new" in diff.noise_rule
    assert_adds_up(sum(line.change for line in (*diff.movers, diff.rest)), diff.change)


def test_a_kernel_the_other_side_may_hold_below_its_table_is_unlisted_not_new() -> None:
    small = elementwise("Sqrt")
    base = profile({**TRAINING_STEP, "(other 30 kernels)": (30, 0.002)})
    new = profile({**TRAINING_STEP, small: (4, 0.0015), "(other 29 kernels)": (29, 0.0015)})
    diff = diff_profiles([base], [new])
    statuses = {line.key: line.status for line in diff.movers}
    assert statuses["elementwise sqrt"] == "unlisted"
    # Without a rest row on the base side it is new.
    plain = diff_profiles([profile(TRAINING_STEP)], [new])
    assert {line.key: line.status for line in plain.movers}["elementwise sqrt"] == "new"


def test_two_kernels_swapping_places_at_the_edge_of_the_table_blame_no_kernel() -> None:
    # The fresh-machine case: a host-bound step whose GPU idled 19 ms longer per step, and two
    # 0.63 ms kernels that swapped places at the edge of the 30-row tables, each side holding
    # the other's in its rest row. The cause is the host, not a kernel gone and one come.
    reduce_sum = "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float, SumOps>>"
    negate = elementwise("Neg")
    base_runs = [profile({**TRAINING_STEP, reduce_sum: (48, 0.000635 + jitter),
                          "(other 37 kernels)": (486, 0.00325 + jitter)},
                         device=0.071 + 2 * jitter, idle=0.33)
                 for jitter in (0.0, 0.000005, -0.000004, 0.000003)]
    new = profile({**TRAINING_STEP, negate: (96, 0.000631), "(other 37 kernels)": (438, 0.00326)},
                  device=0.071, idle=0.52)
    diff = diff_profiles(base_runs, [new])
    assert diff.cause == "host"
    assert [line.status for line in diff.movers] == ["idle"]
    assert set(diff.hidden_unlisted) == {"reduce sum", "elementwise neg"}
    assert_adds_up(sum(line.change for line in (*diff.movers, diff.rest)), diff.change)


def test_a_diff_needs_a_profile_on_each_side() -> None:
    with pytest.raises(ValueError, match="at least one profile a side"):
        diff_profiles([], [profile(TRAINING_STEP)])


names = st.sampled_from([GEMM_TN, GEMM_TN_NVJET, GEMM_NN, FLASH, FUSED_ADAM, LAYER_NORM,
                         elementwise("Mul"), elementwise("Add"), "(other 7 kernels)"])
tables = st.dictionaries(names, st.tuples(st.integers(1, 500).map(float),
                                          st.floats(1e-6, 0.05)), min_size=1, max_size=9)


@st.composite
def profiles(draw: st.DrawFn) -> DeviceProfile:
    rows = draw(tables)
    kernel_time = sum(s for _, s in rows.values())
    device = kernel_time * draw(st.floats(0.5, 1.0))  # some kernels may overlap
    return profile(rows, device=device, idle=draw(st.floats(0.0, 0.9)))


@given(st.lists(profiles(), min_size=1, max_size=4), st.lists(profiles(), min_size=1,
                                                              max_size=4))
def test_shown_lines_and_the_rest_add_up_to_the_step_change(base: list[DeviceProfile],
                                                           new: list[DeviceProfile]) -> None:
    diff = diff_profiles(base, new)
    lines = (*diff.movers, diff.rest)
    assert_adds_up(sum(line.change for line in lines), diff.change)
    if abs(diff.change) > 1e-9:
        assert sum(diff.share(line) for line in lines) == pytest.approx(1.0, abs=1e-6)
    assert all(abs(line.change) > line.noise_seconds for line in diff.movers)
    changes = [abs(line.change) for line in diff.movers]
    assert changes == sorted(changes, reverse=True)


# -- which profile explains which metric ------------------------------------------------------

NODE = "perf_tests/test_training.py::test_step[gpt-none]"


def time_metric(name: str, median: float, *, prof: DeviceProfile | None = None,
                kind: str = "time") -> Metric:
    return Metric(name=name, unit="s" if kind == "time" else "B", better="lower",
                  kind=kind, samples=tuple(median * (1 + 0.001 * i) for i in range(10)),
                  profile=prof)


def test_a_metric_is_explained_by_the_device_time_of_its_own_measurement() -> None:
    prof = profile(TRAINING_STEP)
    metrics = {f"{NODE}::{name}": time_metric(name, 0.07, prof=prof if "device" in name
                                              else None)
               for name in ("step_time", "device_time", "gemm", "gemm_device_time",
                            "peak_allocated_bytes")}
    metrics[f"{NODE}::peak_allocated_bytes"] = time_metric("peak_allocated_bytes", 1e9,
                                                           kind="memory")
    assert profile_metric_id(f"{NODE}::step_time", metrics) == f"{NODE}::device_time"
    assert profile_metric_id(f"{NODE}::gemm", metrics) == f"{NODE}::gemm_device_time"
    assert profile_metric_id(f"{NODE}::device_time", metrics) == f"{NODE}::device_time"
    assert profile_metric_id(f"{NODE}::peak_allocated_bytes", metrics) is None


def test_a_baseline_with_recorded_runs_offers_one_profile_per_run() -> None:
    runs = tuple(RunSummary(0.07, 0.01, 10, "host", "", profile(TRAINING_STEP))
                 for _ in range(3))
    metric = time_metric("device_time", 0.07, prof=profile(TRAINING_STEP))
    assert len(run_profiles(metric.with_changes(runs=runs))) == 3
    assert len(run_profiles(metric)) == 1
    assert run_profiles(metric.with_changes(profile=None)) == ()


def test_regressions_are_explained_once_per_profile_and_unprofiled_sides_said() -> None:
    base_prof, new_prof = profile(TRAINING_STEP), profile({**TRAINING_STEP,
                                                            GEMM_TN: (96, 0.040)})
    base = {"step_time": time_metric("step_time", 0.068),
            "device_time": time_metric("device_time", 0.068, prof=base_prof)}
    new = {"step_time": time_metric("step_time", 0.078),
           "device_time": time_metric("device_time", 0.078, prof=new_prof)}
    verdicts = [judge(f"{NODE}::{name}", new[name], base[name]) for name in new]
    explanations = explain_verdicts(verdicts)
    assert len(explanations) == 1
    assert set(explanations[0].metric_ids) == {f"{NODE}::step_time", f"{NODE}::device_time"}
    assert explanations[0].diff is not None
    assert explanations[0].diff.movers[0].key == "gemm tn"
    unprofiled = [judge(f"{NODE}::{name}", new[name], base[name].with_changes(profile=None))
                  for name in new]
    missing = explain_verdicts(unprofiled)
    assert missing[0].diff is None and "base side" in missing[0].missing
    unchanged = [judge(f"{NODE}::{name}", base[name], base[name]) for name in base]
    assert explain_verdicts(unchanged) == []


def test_a_wall_time_confirmed_by_an_unprofiled_ab_is_explained_from_the_stored_profiles(
        ) -> None:
    # The +30% host work on an H200: the A/B checked only wall-clock metrics, so its child runs
    # skipped the profiled pass, and the diff said "no kernel table on the base and new side".
    from pathlib import Path

    from harness.gate.results import RunResults
    from harness.gate.run_options import PerfOptions
    from harness.gate.session import PerfSession
    from harness.gate.verdict import Outcome

    base = {"step_time": time_metric("step_time", 0.080).with_changes(host_bound=True),
            "device_time": time_metric("device_time", 0.067, prof=profile(
                TRAINING_STEP, device=0.067, idle=0.16))}
    new = {"step_time": time_metric("step_time", 0.112).with_changes(host_bound=True),
           "device_time": time_metric("device_time", 0.067, prof=profile(
               TRAINING_STEP, device=0.067, idle=0.40))}
    session = PerfSession(PerfOptions(baselines_dir=Path("b"), device="cpu"),
                          {"fingerprint": "cpu"})
    session.reference = RunResults(kind="baseline", fingerprint="cpu", environment={},
                                   metrics={f"{NODE}::{k}": m for k, m in base.items()})
    for metric in new.values():
        session.record(NODE, metric)
    session.conclude_test(NODE)
    unprofiled = [RunResults(kind="results", fingerprint="cpu", environment={},
                             metrics={f"{NODE}::step_time": new["step_time"]})]
    first = next(v for v in session.verdicts if v.metric_id.endswith("::step_time"))
    assert first.outcome is Outcome.REGRESSION
    decision = session.redecide(NODE, [first], "A/B", runs=(unprofiled, unprofiled))
    assert "no kernel table" not in decision.message
    assert "cause: the host" in decision.message
    assert "profiles compared: the baseline's recorded runs and this run's first measurement" \
        in decision.message


def test_a_host_bound_step_whose_idle_spreads_across_the_fleet_is_the_host_by_elimination(
        ) -> None:
    # 35 ms of Python per step on an H200, confirmed +41.8% by A/B: against four recorded runs
    # on other machines, whose idle time spread from 21 to 50 ms, the idle's move (33 -> 42 ms)
    # stood out from nothing, and the diff said "nothing beyond its noise". The step's device
    # time was judged unchanged, so the kernels are cleared and the idle time names the host.
    from harness.gate.report import render_explanation

    def step(idle_seconds: float) -> DeviceProfile:
        device = sum(s for _, s in TRAINING_STEP.values())
        return profile(TRAINING_STEP, idle=idle_seconds / (device + idle_seconds))

    runs = tuple(RunSummary(0.068, 0.01, 10, f"host{i}", "", step(idle))
                 for i, idle in enumerate((0.050, 0.040, 0.021, 0.022)))
    base = {"step_time": time_metric("step_time", 0.100),
            "device_time": time_metric("device_time", 0.068, prof=step(0.031)).with_changes(
                runs=runs)}
    new = {"step_time": time_metric("step_time", 0.140),
           "device_time": time_metric("device_time", 0.068, prof=step(0.042))}
    verdicts = [judge(f"{NODE}::{name}", new[name], base[name]) for name in new]
    assert [v.outcome.value for v in verdicts] == ["regression", "unchanged"]
    (explanation,) = explain_verdicts(verdicts)
    assert explanation.diff is not None and explanation.diff.cause == "noise"
    assert explanation.device_time_unchanged and explanation.cause == "host by elimination"
    assert "cause: the host: the step's device time was judged unchanged and the GPU idled " \
           "longer" in render_explanation(explanation)
    # A regressed device time clears nothing: the same diff stays "nothing beyond its noise".
    regressed = [judge(f"{NODE}::{name}", new[name].with_changes(samples=tuple(
        s * 1.1 for s in new[name].samples)), base[name]) for name in new]
    (kernels,) = explain_verdicts(regressed)
    assert not kernels.device_time_unchanged and kernels.cause != "host by elimination"
