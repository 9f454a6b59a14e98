"""Text reports: value formatting, the summary's order and columns, the failure detail, valid
GitHub markdown, and the description of a baseline refresh."""

from __future__ import annotations

import dataclasses
import re

import pytest

from harness.gate.anatomy import anatomy, class_seconds
from harness.gate.explanation import Explanation
from harness.gate.formatting import format_change, format_value
from harness.gate.kernel_diff import diff_profiles
from harness.gate.profile import DeviceProfile, KernelRow
from harness.gate.report import (
    render_anatomy,
    render_anatomy_table,
    render_baseline_changes,
    render_explanation,
    render_explanations,
    render_markdown,
    render_summary,
    render_verdict_detail,
)
from harness.gate.results import Metric, RunResults
from harness.gate.verdict import AB_RULE, Outcome, Verdict, judge

NODE = "perf_tests/test_train.py::test_gpt2_step"
BASE_ENV = {"torch": "2.4.0", "cuda": "12.4", "driver": "550.54", "gpu_name": "NVIDIA H100"}
NEW_ENV = {"torch": "2.5.0", "cuda": "12.6", "driver": "550.54", "gpu_name": "NVIDIA H100"}


def time_metric(*samples: float, name: str = "step_time") -> Metric:
    return Metric(name=name, unit="s", better="lower", kind="time", samples=samples)


def regression() -> Verdict:
    baseline = time_metric(0.100, 0.101, 0.099, 0.100, 0.102, 0.100, 0.098, 0.101)
    measured = time_metric(0.112, 0.113, 0.111, 0.112, 0.114, 0.112, 0.110, 0.113)
    return judge(f"{NODE}::step_time", measured, baseline, baseline_environment=BASE_ENV,
                 environment=NEW_ENV)


def unchanged() -> Verdict:
    tflops = Metric(name="tflops", unit="TFLOP/s", better="higher", kind="throughput",
                    samples=(612.4,) * 5)
    return judge(f"{NODE}::tflops", tflops, tflops)


def no_baseline() -> Verdict:
    memory = Metric(name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
                    samples=(14.2 * 2**30,))
    return judge(f"{NODE}::peak_allocated_bytes", memory, None)


def improvement() -> Verdict:
    return judge(f"{NODE}::wait_time", time_metric(0.08, 0.08, name="wait_time"),
                 time_metric(0.10, 0.10, name="wait_time"))


def unreliable() -> Verdict:
    measured = Metric(name="mfu", unit="ratio", better="higher", kind="throughput",
                      samples=(0.40,) * 3, reliable=False, note="GPU throttled (HwSlowdown)")
    baseline = measured.with_changes(samples=(0.45,) * 3, reliable=True, note="")
    return judge(f"{NODE}::mfu", measured, baseline)


# --- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (0.0123, "s", "12.3 ms"),
    (1.5, "s", "1.5 s"),
    (0.000_045_6, "s", "45.6 us"),
    (2.5e-7, "s", "250 ns"),
    (0.99996, "s", "1 s"),  # rounded before the scale is chosen: not "1,000 ms"
    (0.0, "s", "0 s"),
    (-0.0123, "s", "-12.3 ms"),
    (612.4, "TFLOP/s", "612.4 TFLOP/s"),
    (14.2 * 2**30, "B", "14.2 GiB"),
    (14.2 * 2**30, "bytes", "14.2 GiB"),
    (512, "B", "512 B"),
    (1536, "B", "1.5 KiB"),
    (3 * 2**20, "B", "3 MiB"),
    (0.417, "ratio", "41.7 %"),
    (41.7, "%", "41.7 %"),
    (25.0, "GB/s", "25 GB/s"),
    (12.5e9, "B/s", "12.5 GB/s"),
    (1.23e15, "FLOP", "1.23 PFLOP"),
    (4.5e11, "FLOP/s", "450 GFLOP/s"),
    (1_234_567, "tokens/s", "1,234,567 tokens/s"),
    (3.456, "batches/s", "3.456 batches/s"),
])
def test_format_value_picks_a_readable_unit(value: float, unit: str, expected: str) -> None:
    assert format_value(value, unit) == expected


@pytest.mark.parametrize(("value", "unit", "message"), [
    (float("nan"), "s", "value must be a finite number, got nan"),
    ("12", "s", "value must be a finite number, got '12'"),
    (1.0, None, "unit must be a string"),
])
def test_format_value_rejects_bad_input(value: object, unit: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        format_value(value, unit)  # type: ignore[arg-type]


def test_format_change_is_signed() -> None:
    assert format_change(0.102) == "+10.2 %"
    assert format_change(-0.031) == "-3.1 %"
    assert format_change(0.0) == "+0.0 %"
    assert format_change(None) == ""


# --- summary ---------------------------------------------------------------------------------


def test_summary_lists_regressions_first_then_by_outcome() -> None:
    text = render_summary([unchanged(), improvement(), no_baseline(), unreliable(),
                           regression()])
    table_lines = text.splitlines()[2:7]
    metrics = [line.split()[1] for line in table_lines]
    assert metrics == ["step_time", "mfu", "peak_allocated_bytes", "wait_time", "tflops"]


def test_summary_columns_show_values_signed_change_and_direction() -> None:
    text = render_summary([regression(), unchanged()])
    header = text.splitlines()[0].split()
    assert header == ["test", "metric", "baseline", "measured", "change", "verdict"]
    row = text.splitlines()[2]
    assert row.startswith(NODE)
    assert "100 ms" in row and "112 ms" in row and "+12.0 %" in row
    assert row.endswith("regression (lower is better)")
    assert "612.4 TFLOP/s" in text


def test_summary_counts_and_lists_environment_differences() -> None:
    text = render_summary([regression(), unchanged(), unreliable()])
    assert "1 regression, 1 unreliable, 1 unchanged (3 metrics)" in text
    assert "torch: 2.4.0 -> 2.5.0" in text and "cuda: 12.4 -> 12.6" in text
    assert "driver" not in text  # unchanged entries are not listed


def test_summary_names_each_metric_on_one_line_only() -> None:
    text = render_summary([regression(), unchanged(), unreliable(), no_baseline()])
    for name in ("step_time", "tflops", "mfu", "peak_allocated_bytes"):
        assert len([line for line in text.splitlines() if name in line]) == 1


def test_summary_of_nothing_says_so() -> None:
    assert render_summary([]) == "perf: no metrics were judged"


# --- detail ------------------------------------------------------------------------------------


def test_detail_table_contains_every_field() -> None:
    verdict = regression()
    text = render_verdict_detail(verdict)
    assert text.startswith(f"{NODE}::step_time: regression (lower is better)")
    assert verdict.reason in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "100 ms" in lines["median"] and "112 ms" in lines["median"]
    assert lines["spread"].count("% (IQR/median)") == 2
    assert lines["samples"].split()[1:] == ["8", "8"]
    assert "+12.0 %" in lines["change"]
    assert "2.0 %" in lines["tolerance"]  # the default for time
    assert verdict.p_value is not None
    assert f"{verdict.p_value:.3g} (alpha 0.01)" in lines["p-value"]
    assert verdict.rule.startswith("mann-whitney") and verdict.rule in lines["rule"]
    assert "environment differences:" in text
    assert re.search(r"torch\s+2\.4\.0\s+2\.5\.0", text)
    assert re.search(r"cuda\s+12\.4\s+12\.6", text)


def test_detail_without_baseline_or_p_value_says_not_applicable() -> None:
    text = render_verdict_detail(no_baseline())
    assert "no baseline" in text
    assert re.search(r"p-value\s+n/a", text) and re.search(r"change\s+n/a", text)
    assert "environment differences: none recorded" in text


def test_detail_shows_the_theory_beside_the_measurement() -> None:
    measured = Metric(name="peak_allocated_bytes", unit="B", better="lower", kind="memory",
                      samples=(15 * 2**30,), theory=14 * 2**30)
    text = render_verdict_detail(judge(f"{NODE}::peak_allocated_bytes", measured, measured))
    assert re.search(r"theory\s+14 GiB", text)


# --- markdown ----------------------------------------------------------------------------------

TABLE_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def markdown_tables(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_markdown_is_a_valid_github_table_even_with_pipes_in_ids() -> None:
    metric = time_metric(0.1, 0.1)
    odd = judge("perf_tests/test_x.py::test_mode[a|b<c>]::step_time", metric, metric)
    text = render_markdown([unchanged(), regression(), odd], title="Perf: branch vs main")
    assert text.startswith("### Perf: branch vs main\n")
    tables = markdown_tables(text)
    assert len(tables) == 2  # verdicts, environment differences
    for table in tables:
        header, separator, *rows = table
        assert TABLE_SEPARATOR.match(separator), separator
        columns = unescaped_pipes(header)
        assert all(unescaped_pipes(row) == columns for row in [separator, *rows])
    verdict_rows = tables[0][2:]
    assert "**regression (lower is better)**" in verdict_rows[0]  # regressions first
    assert "test_mode[a\\|b&lt;c&gt;]" in text  # escaped, not an extra column or an HTML tag


def test_markdown_lists_counts_reasons_and_environment() -> None:
    text = render_markdown([regression(), unreliable()])
    assert "### Performance report" in text
    assert "1 regression, 1 unreliable (2 metrics)" in text
    assert f"- `{NODE}::mfu`: unreliable: " in text
    assert "GPU throttled (HwSlowdown)" in text  # why it is unreliable
    assert "Mann-Whitney U" in text  # why it is a regression
    assert re.search(r"\| torch\s+\| 2\.4\.0\s+\| 2\.5\.0\s+\|", text)


def test_markdown_of_nothing_says_so() -> None:
    assert "No metrics were judged." in render_markdown([])


# --- baseline refresh ------------------------------------------------------------------------


def run(environment: dict, metrics: dict[str, Metric]) -> RunResults:
    return RunResults(kind="baseline", fingerprint="nvidia-h100-80gb-hbm3-x1",
                      environment=environment, metrics=metrics)


def test_baseline_changes_show_old_to_new_medians_and_added_removed() -> None:
    old = run(BASE_ENV, {f"{NODE}::step_time": time_metric(0.100),
                         f"{NODE}::gone": time_metric(1.0, name="gone")})
    new = run(NEW_ENV, {f"{NODE}::step_time": time_metric(0.090),
                        f"{NODE}::fresh": time_metric(0.5, name="fresh")})
    text = render_baseline_changes(old, new)
    assert text.startswith("baseline for nvidia-h100-80gb-hbm3-x1: 1 metric updated, 1 added, "
                           "1 removed")
    assert re.search(r"::step_time\s+100 ms\s+90 ms\s+-10\.0 %", text)
    assert re.search(r"::gone\s+1 s\s+removed", text)
    assert re.search(r"::fresh\s+500 ms\s+added", text)
    assert "torch: 2.4.0 -> 2.5.0" in text


def test_first_baseline_lists_every_metric_as_added() -> None:
    new = run(NEW_ENV, {f"{NODE}::step_time": time_metric(0.090)})
    text = render_baseline_changes(None, new)
    assert text.startswith("new baseline for nvidia-h100-80gb-hbm3-x1: 1 metric")
    assert re.search(r"::step_time\s+90 ms\s+added", text)


def test_outcome_words_in_reports_match_the_enum() -> None:
    text = render_summary([no_baseline()])
    assert Outcome.NO_BASELINE.value in text


# --- the anatomy of a step and the kernel diff of a regression ------------------------------

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"
NORM = "void at::native::vectorized_layer_norm_kernel<float, float>(int, float)"


def step_profile(gemm_seconds: float, *, idle: float = 0.02) -> DeviceProfile:
    rows = (KernelRow(GEMM, 96, gemm_seconds, "forward"), KernelRow(NORM, 48, 0.004, "backward"))
    return DeviceProfile(steps=5, device_seconds=gemm_seconds + 0.004, idle_fraction=idle,
                         host_issue_seconds=0.01, kernels=rows,
                         classes=class_seconds((r.name, r.seconds_per_step) for r in rows),
                         phases={"forward": gemm_seconds, "backward": 0.004})


def gemm_regression() -> Explanation:
    diff = diff_profiles([step_profile(0.050)], [step_profile(0.056)])
    return Explanation(f"{NODE}::device_time", (f"{NODE}::step_time", f"{NODE}::device_time"),
                       diff)


def test_a_kernel_diff_names_the_mover_its_share_and_the_total() -> None:
    text = render_explanation(gemm_regression())
    assert text.startswith(f"kernel diff of {NODE}::device_time (explains step_time, "
                           f"device_time): step ")
    assert "cause: kernels" in text
    gemm = next(line for line in text.splitlines() if line.startswith("gemm tn"))
    assert "contraction" in gemm and "forward" in gemm and "+6 ms" in gemm
    assert re.search(r"9\d\.\d %", gemm)  # most of the change: the idle time moved with it
    total = next(line for line in text.splitlines() if line.startswith("total (the step)"))
    assert "100.0 %" in total
    assert "beyond 1% of the base step" in text
    assert "by class: GEMM / attention (tensor contractions) 50 ms -> 56 ms (+6 ms)" in text


def test_a_kernel_diff_in_markdown_is_a_github_table() -> None:
    text = render_explanation(gemm_regression(), markdown=True)
    assert text.startswith(f"**kernel diff** of `{NODE}::device_time`")
    assert "| gemm tn " in text and "|---" in text
    assert "\n- by class:" in text


def test_a_regression_without_kernel_tables_says_which_side_lacks_one() -> None:
    missing = Explanation(f"{NODE}::device_time", (f"{NODE}::step_time",), None,
                          "no kernel table on the base side (measured without a profiled pass)")
    assert render_explanations([missing]).endswith("no kernel table on the base side "
                                                   "(measured without a profiled pass)")


def test_the_anatomy_shows_each_class_beside_its_theory() -> None:
    text = render_anatomy(anatomy(step_profile(0.050)))
    gemm = next(line for line in text.splitlines() if line.startswith("GEMM / attention"))
    assert "50 ms" in gemm and "99.8 % of FLOPs" in gemm
    idle = next(line for line in text.splitlines() if line.startswith("GPU idle"))
    assert "2.0 %" in idle and "0 % (GPU-bound)" in idle
    assert "backward / forward 0.08 x (theory ~2x" in text


def test_the_anatomy_table_has_one_line_per_profiled_step() -> None:
    profiled = Metric(name="device_time", unit="s", better="lower", kind="time",
                      samples=(0.054,), profile=step_profile(0.050))
    metrics = {f"{NODE}::device_time": profiled, f"{NODE}::step_time": time_metric(0.055)}
    text = render_anatomy_table(metrics)
    rows = [line for line in text.splitlines() if line.startswith(NODE)]
    assert len(rows) == 1 and "GPU idle" in text and "bwd/fwd" in text
    assert render_anatomy_table({f"{NODE}::step_time": time_metric(0.055)}) == ""


def test_a_failing_test_shows_the_kernel_diff_under_its_detail_table(tmp_path) -> None:
    from harness.gate.run_options import PerfOptions
    from harness.gate.session import PerfSession

    session = PerfSession(PerfOptions(baselines_dir=tmp_path, device="cpu"),
                          {"fingerprint": "nvidia-h200"})

    def step(seconds: float, gemm: float) -> dict[str, Metric]:
        samples = tuple(seconds * (1 + 0.001 * i) for i in range(10))
        return {"step_time": Metric(name="step_time", unit="s", better="lower", kind="time",
                                    samples=samples),
                "device_time": Metric(name="device_time", unit="s", better="lower",
                                      kind="time", samples=samples,
                                      profile=step_profile(gemm))}

    session.reference = RunResults(kind="baseline", fingerprint="nvidia-h200", environment={},
                                   metrics={f"{NODE}::{k}": m
                                            for k, m in step(0.054, 0.050).items()})
    for metric in step(0.060, 0.056).values():
        session.record(NODE, metric)
    decision = session.conclude_test(NODE)
    assert decision.outcome == "failed" and decision.regression
    assert "kernel diff of " + NODE + "::device_time" in decision.message
    assert "gemm tn" in decision.message
    assert any("anatomy of the profiled steps" in line for line in session.summary_lines())


def test_an_ab_decided_change_is_marked_paired_and_explained_once() -> None:
    # The fp8 GEMM's device time after an A/B on a fresh H200 (2026-12-03): base's run medians
    # 1.044 ms, head's 976 us, while the rounds' ratios averaged +0.1%.
    base = time_metric(1.044e-3, 0.95e-3, 1.10e-3, name="gemm_device_time")
    head = time_metric(0.976e-3, 1.05e-3, 0.95e-3, name="gemm_device_time")
    paired = dataclasses.replace(judge(f"{NODE}::gemm_device_time", head, base),
                                 outcome=Outcome.UNCHANGED, change=0.001, rule=AB_RULE)
    summary = render_summary([paired, unchanged()])
    assert re.search(r"\+0\.1 % \(paired\)\s+unchanged", summary)
    assert summary.count("(paired)") == 2  # the row and the note under the table
    assert "(paired): an A/B's change, the geometric mean of its rounds' head/base ratios" \
        in summary
    assert "(paired)" not in render_summary([unchanged()])
    assert "(paired): an A/B's change" in render_markdown([paired])
