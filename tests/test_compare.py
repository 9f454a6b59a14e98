"""`python -m harness compare`: verdicts, table order, markdown and exit codes on saved files."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from harness import cli
from harness.cli import ab as ab_command
from harness.gate import store
from harness.gate.results import Metric, RunResults

FINGERPRINT = "nvidia-h100-80gb-hbm3-x1"
ENVIRONMENT = {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "torch": "2.13.0",
               "cuda": "12.8", "driver": "570.86.15"}
STEP_TIME = "perf_tests/test_gpt2.py::test_train_step::step_time"
TFLOPS = "perf_tests/test_gpt2.py::test_train_step::tflops"
# Sorts before STEP_TIME by id, so only the verdict order can put STEP_TIME first.
KERNEL_TIME = "perf_tests/test_attention.py::test_flash_attention::kernel_time"


def step_time(median: float, *, cv: float = 0.01, seed: int = 0, count: int = 30,
              reliable: bool = True, name: str = "step_time") -> Metric:
    """A time metric of `count` seeded samples around `median` with relative noise `cv`."""
    rng = random.Random(seed)
    samples = tuple(median * (1 + rng.gauss(0, cv)) for _ in range(count))
    return Metric(name=name, unit="s", better="lower", kind="time", samples=samples,
                  reliable=reliable)


def tflops(median: float, *, seed: int = 1) -> Metric:
    rng = random.Random(seed)
    samples = tuple(median * (1 + rng.gauss(0, 0.01)) for _ in range(30))
    return Metric(name="tflops", unit="TFLOP/s", better="higher", kind="throughput",
                  samples=samples)


def save(path: Path, metrics: dict[str, Metric], *, fingerprint: str = FINGERPRINT,
         kind: str = "results", created: str = "2026-01-15T02:00:00+00:00") -> Path:
    store.save_results(path, RunResults(kind=kind, fingerprint=fingerprint,  # type: ignore[arg-type]
                                        environment=dict(ENVIRONMENT), metrics=metrics,
                                        created=created))
    return path


def run_compare(monkeypatch: pytest.MonkeyPatch, *argv: str | Path) -> int:
    """The real command-line dispatcher."""
    return cli.main(["compare", *map(str, argv)])


def verdict_line(output: str, metric_name: str) -> str:
    lines = [line for line in output.splitlines() if metric_name in line]
    assert len(lines) == 1, output
    return lines[0]


def test_identical_numbers_of_two_runs_exit_0_and_read_unchanged(tmp_path, monkeypatch, capsys):
    metrics = {STEP_TIME: step_time(0.100), TFLOPS: tflops(400.0)}
    base = save(tmp_path / "main.json", metrics, kind="baseline")
    new = save(tmp_path / "pr.json", metrics, created="2026-01-16T02:00:00+00:00")
    assert run_compare(monkeypatch, base, new) == 0
    out = capsys.readouterr().out
    assert "unchanged" in verdict_line(out, "step_time")
    assert "unchanged" in verdict_line(out, "tflops")


def test_ten_percent_slower_step_exits_1_with_the_regression_first(tmp_path, monkeypatch,
                                                                    capsys):
    base = save(tmp_path / "main.json", {
        STEP_TIME: step_time(0.100, seed=1),
        KERNEL_TIME: step_time(0.002, seed=2, name="kernel_time")})
    new = save(tmp_path / "pr.json", {
        STEP_TIME: step_time(0.110, seed=3),
        KERNEL_TIME: step_time(0.002, seed=4, name="kernel_time")})
    assert run_compare(monkeypatch, base, new) == 1
    out = capsys.readouterr().out
    assert "regression" in verdict_line(out, "step_time")
    assert "unchanged" in verdict_line(out, "kernel_time")
    assert out.index("step_time") < out.index("kernel_time")


def test_faster_step_exits_0_and_reads_improvement(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100, seed=1)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.090, seed=2)})
    assert run_compare(monkeypatch, base, new) == 0
    assert "improvement" in verdict_line(capsys.readouterr().out, "step_time")


def test_noisy_slower_measurement_is_not_a_regression(tmp_path, monkeypatch, capsys):
    # 8 samples a side with 30% noise: the seeded medians differ by more than the 2% time
    # tolerance, so one number against a threshold would cry regression; the samples overlap
    # too much to support it, so the verdict must not claim one.
    base_metric = step_time(0.100, cv=0.30, count=8, seed=1)
    new_metric = step_time(0.106, cv=0.30, count=8, seed=2)
    assert new_metric.median / base_metric.median - 1 > 0.05
    base = save(tmp_path / "main.json", {STEP_TIME: base_metric})
    new = save(tmp_path / "pr.json", {STEP_TIME: new_metric})
    assert run_compare(monkeypatch, base, new) == 0
    assert "regression" not in verdict_line(capsys.readouterr().out, "step_time")


def test_truncated_file_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.100)})
    text = new.read_text()
    new.write_text(text[: len(text) // 2])
    assert run_compare(monkeypatch, base, new) == 2
    err = capsys.readouterr().err
    assert str(new) in err
    assert "truncated" in err


def test_missing_file_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.100)})
    missing = tmp_path / "main.json"
    assert run_compare(monkeypatch, missing, new) == 2
    assert str(missing) in capsys.readouterr().err


def test_foreign_schema_version_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.100)})
    document = json.loads(base.read_text())
    document["schema_version"] = 99
    base.write_text(json.dumps(document))
    assert run_compare(monkeypatch, base, new) == 2
    err = capsys.readouterr().err
    assert str(base) in err
    assert "schema_version" in err


def test_different_fingerprints_exit_2_naming_both_files_and_fingerprints(tmp_path, monkeypatch,
                                                                         capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100)},
                fingerprint="nvidia-a100-sxm4-80gb-x1")
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.100)})
    assert run_compare(monkeypatch, base, new) == 2
    err = capsys.readouterr().err
    for expected in (str(base), str(new), "nvidia-a100-sxm4-80gb-x1", FINGERPRINT):
        assert expected in err


def test_new_file_without_metrics_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100)})
    new = save(tmp_path / "pr.json", {})
    assert run_compare(monkeypatch, base, new) == 2
    err = capsys.readouterr().err
    assert str(new) in err and "no metrics" in err


def test_markdown_output_is_a_github_table(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100, seed=1)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.110, seed=2)})
    assert run_compare(monkeypatch, base, new, "--markdown") == 1
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) >= 3, lines  # header, separator, one row
    assert set(table[1].replace("|", "").replace(":", "").strip()) <= {"-", " "}
    assert "regression" in table[2]


def test_fail_on_never_exits_0_despite_a_regression(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100, seed=1)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.110, seed=2)})
    assert run_compare(monkeypatch, base, new, "--fail-on", "never") == 0
    assert "regression" in verdict_line(capsys.readouterr().out, "step_time")


def test_fail_on_unreliable_exits_1_for_an_unreliable_metric(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100, seed=1)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.100, seed=2, reliable=False)})
    assert run_compare(monkeypatch, base, new) == 0
    assert "unreliable" in verdict_line(capsys.readouterr().out, "step_time")
    assert run_compare(monkeypatch, base, new, "--fail-on", "unreliable") == 1


def test_metric_only_in_new_has_no_baseline_and_does_not_fail(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {TFLOPS: tflops(400.0)})
    new = save(tmp_path / "pr.json", {TFLOPS: tflops(400.0), STEP_TIME: step_time(0.100)})
    assert run_compare(monkeypatch, base, new) == 0
    assert "no baseline" in verdict_line(capsys.readouterr().out, "step_time")


def test_metric_only_in_base_is_listed_missing_and_fails_only_when_asked(tmp_path, monkeypatch,
                                                                        capsys):
    base = save(tmp_path / "main.json", {TFLOPS: tflops(400.0), STEP_TIME: step_time(0.100)})
    new = save(tmp_path / "pr.json", {TFLOPS: tflops(400.0)})
    assert run_compare(monkeypatch, base, new) == 0
    out = capsys.readouterr().out
    assert "Missing in new (1)" in out
    assert STEP_TIME in out
    assert run_compare(monkeypatch, base, new, "--fail-on-missing") == 1


def test_tolerance_override_turns_a_regression_into_unchanged(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100, seed=1)})
    new = save(tmp_path / "pr.json", {STEP_TIME: step_time(0.110, seed=2)})
    assert run_compare(monkeypatch, base, new, "--tolerance", "0.5") == 0
    assert "unchanged" in verdict_line(capsys.readouterr().out, "step_time")


def test_tolerance_outside_a_relative_change_is_a_usage_error(tmp_path, monkeypatch, capsys):
    base = save(tmp_path / "main.json", {STEP_TIME: step_time(0.100)})
    assert run_compare(monkeypatch, base, base, "--tolerance", "0") == 2
    assert "--tolerance" in capsys.readouterr().err


def test_help_documents_the_exit_codes(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_compare(monkeypatch, "--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for code in ("0  no failing verdict", "1  a regression", "2  unusable input"):
        assert code in out


WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


def workflow(name: str) -> dict:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    document["on"] = document.pop(True, document.get("on"))
    return document


def shell_lines(document: dict) -> list[str]:
    """Every command line of every `run:` step, continuation lines joined."""
    lines = []
    for job in document["jobs"].values():
        for step in job["steps"]:
            lines += step.get("run", "").replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


def test_workflows_run_on_the_gpu_runner_when_expected():
    nightly, pr = workflow("perf-nightly.yml"), workflow("perf-pr.yml")
    assert set(nightly["on"]) == {"schedule", "workflow_dispatch"}
    assert set(pr["on"]) == {"pull_request"}
    for document in (nightly, pr):
        assert [job["runs-on"] for job in document["jobs"].values()] == [["self-hosted", "gpu"]]


def test_nightly_saves_strict_results_and_uploads_them_always():
    nightly = workflow("perf-nightly.yml")
    assert ("pytest -m gpu --perf-strict --perf-save results/nightly.json "
            "--junitxml=results/junit.xml") in shell_lines(nightly)
    (job,) = nightly["jobs"].values()
    upload = next(s for s in job["steps"]
                  if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"] == "results/"


def test_pr_workflow_measures_the_base_branch_beside_the_branch_on_its_runner():
    pr = workflow("perf-pr.yml")
    (job,) = pr["jobs"].values()
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the base commit must be in the clone
    command = next(line for line in shell_lines(pr) if line.startswith("python -m harness ab"))
    argv = command.split(">")[0].split()[4:]  # after "python -m harness ab"
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    ab_command.add_arguments(parser)
    args = parser.parse_args(argv[:split])
    assert (args.base, args.head, args.markdown) == ('"origin/$BASE_REF"', None, True)
    assert argv[split + 1:] == ["-m", "gpu"]
    assert not any("gh run download" in line for line in shell_lines(pr))


def test_workflows_use_only_pytest_options_the_plugin_registers(pytestconfig):
    for name in ("perf-nightly.yml", "perf-pr.yml"):
        for line in shell_lines(workflow(name)):
            if line.startswith("pytest "):
                for flag in (word for word in line.split() if word.startswith("--perf-")):
                    pytestconfig.getoption(flag)  # ValueError for an unknown option
