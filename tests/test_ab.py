"""A/B on one machine: the alternating runner (with a fake tree runner and a scripted clock), git
worktrees of a commit, and one real end-to-end comparison of two commits of a tiny project."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.gate.ab import (
    ABError,
    ABResult,
    PytestRunner,
    Side,
    as_verdicts,
    resolve_commit,
    run_ab,
    worktree,
)
from harness.gate.fleet import RunSummary
from harness.gate.paired import PairedOutcome
from harness.gate.results import Metric, RunResults


class ScriptedRunner:
    """Returns a step time per tree: `costs[tree name]` times a per-call host factor."""

    def __init__(self, costs: dict[str, float], host: Sequence[float]) -> None:
        self.costs, self.host, self.calls = costs, list(host), []  # type: ignore[var-annotated]

    def __call__(self, tree: Path, pytest_args: Sequence[str], save_path: Path) -> RunResults:
        factor = self.host[len(self.calls) % len(self.host)]
        self.calls.append(tree.name)
        value = self.costs[tree.name] * factor
        metric = Metric(name="step_time", unit="s", better="lower", kind="time",
                        samples=(value * 0.99, value, value * 1.01))
        return RunResults(kind="results", fingerprint="cpu", environment={},
                          metrics={"t.py::test_step::step_time": metric})


class StepClock:
    """A clock that advances `step` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _sides(tmp_path: Path) -> tuple[Side, Side]:
    return (Side("base", "abc", tmp_path / "base"), Side("head", "working tree", tmp_path / "head"))


def test_runs_alternate_abba_and_a_real_slowdown_is_confirmed(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    # The host changes speed between runs by up to 40%; head costs 5% more on every one.
    runner = ScriptedRunner({"base": 1.0, "head": 1.05}, host=[1.0, 1.0, 1.4, 1.4, 0.9, 0.9])
    lines: list[str] = []
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.01, max_rounds=6, budget_seconds=1e6, work_dir=tmp_path,
                    progress=lines.append)
    assert runner.calls[:4] == ["base", "head", "head", "base"]
    assert result.rounds == 6
    (verdict,) = result.verdicts.values()
    assert verdict.outcome is PairedOutcome.REGRESSION
    assert verdict.change == pytest.approx(0.05, abs=1e-9)
    assert len(lines) == 6 and lines[0].startswith("A/B round 1/6 (base first)")


def test_a_slower_host_alone_is_unchanged(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    runner = ScriptedRunner({"base": 1.0, "head": 1.0}, host=[1.0, 1.0, 1.6, 1.6, 1.3, 1.3])
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.01, max_rounds=3, budget_seconds=1e6, work_dir=tmp_path)
    assert [v.outcome for v in result.verdicts.values()] == [PairedOutcome.UNCHANGED]


def test_the_budget_stops_the_rounds_but_never_below_the_minimum(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    runner = ScriptedRunner({"base": 1.0, "head": 1.0}, host=[1.0])
    lines: list[str] = []
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.01, max_rounds=10, budget_seconds=5.0, work_dir=tmp_path,
                    clock=StepClock(1.0), progress=lines.append)
    assert result.rounds == 3
    assert "stopping after 3 rounds" in lines[-1]


def _watched_ab(tmp_path: Path, head_cost: float, host: Sequence[float],
                max_rounds: int) -> tuple[ABResult, list[str]]:
    """An A/B of a 1 s step against `head_cost` that watches its one metric (as a confirmation
    does), 2% tolerance, alpha 0.01; its result and progress lines."""
    base, head = _sides(tmp_path)
    runner = ScriptedRunner({"base": 1.0, "head": head_cost}, host=host)
    lines: list[str] = []
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.01, max_rounds=max_rounds, budget_seconds=1e6, work_dir=tmp_path,
                    progress=lines.append, watch=lambda mid: True)
    return result, lines


def test_watched_metrics_decided_early_stop_the_rounds(tmp_path: Path) -> None:
    result, lines = _watched_ab(tmp_path, 1.0, [1.0, 1.0, 1.2, 1.2, 0.9, 0.9], max_rounds=8)
    assert result.rounds == 3
    assert "decided after 3 rounds" in lines[-1]
    assert [v.outcome for v in result.verdicts.values()] == [PairedOutcome.UNCHANGED]


def test_a_change_just_inside_the_tolerance_does_not_stop_the_rounds_early(
        tmp_path: Path) -> None:
    # 1.5% slower: unchanged at a 2% tolerance, but beyond half of it, so it may be a real 3%
    # read low; the rounds go on to max_rounds instead of calling it unchanged after three.
    result, lines = _watched_ab(tmp_path, 1.015, [1.0, 1.0, 1.01, 1.01], max_rounds=5)
    assert result.rounds == 5
    assert not any("decided after" in line for line in lines)
    assert [v.outcome for v in result.verdicts.values()] == [PairedOutcome.UNCHANGED]


def test_a_suspect_that_measures_better_stops_the_rounds_early(tmp_path: Path) -> None:
    # Head 4% faster over rounds that disagree (no p-value below alpha / looks): a confirmation
    # asks only whether head is worse, and this one is not.
    result, lines = _watched_ab(tmp_path, 0.96, [1.0, 1.02, 1.0, 0.97, 1.0, 1.0], max_rounds=5)
    assert result.rounds == 3
    assert "decided after 3 rounds" in lines[-1]
    (verdict,) = result.verdicts.values()
    assert verdict.change is not None and verdict.change < -0.02
    assert verdict.p_value is not None and verdict.p_value >= 0.01 / 3


def test_an_early_regression_needs_the_stricter_bound_of_several_looks(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    # 5% slower with a noisy host: p ~ 0.02 < 0.05 after 3 rounds, but not below 0.05 / 6 looks.
    runner = ScriptedRunner({"base": 1.0, "head": 1.05}, host=[1.0, 0.99, 1.0, 0.97, 1.0, 1.0])
    early = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                   alpha=0.05, max_rounds=3, budget_seconds=1e6, work_dir=tmp_path)
    (first,) = early.verdicts.values()
    assert first.outcome is PairedOutcome.REGRESSION and first.p_value is not None
    assert 0.05 / 6 < first.p_value < 0.05
    runner = ScriptedRunner({"base": 1.0, "head": 1.05}, host=[1.0, 0.99, 1.0, 0.97, 1.0, 1.0])
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.05, max_rounds=8, budget_seconds=1e6, work_dir=tmp_path,
                    watch=lambda mid: True)
    assert result.rounds > 3


def test_unwatched_metrics_never_stop_the_rounds(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    runner = ScriptedRunner({"base": 1.0, "head": 1.0}, host=[1.0])
    result = run_ab(base, head, ["t.py"], runner=runner, tolerance_of=lambda mid, m: 0.02,
                    alpha=0.01, max_rounds=5, budget_seconds=1e6, work_dir=tmp_path,
                    watch=lambda mid: False)
    assert result.rounds == 5


def test_a_confirmed_regression_is_judged_with_one_machines_tolerance(tmp_path: Path) -> None:
    from harness.gate.ab import confirm_with_ab
    from harness.gate.verdict import Outcome, judge

    base, head = _sides(tmp_path)
    # The first verdict: +5% against a baseline whose three runs widened 2% to 12%.
    runs = tuple(RunSummary(median=m, spread=0.01, count=3, host=f"h{i}", created="")
                 for i, m in enumerate((1.0, 1.04, 0.96)))
    stored = Metric(name="step_time", unit="s", better="lower", kind="time",
                    samples=(0.99, 1.0, 1.01), runs=runs)
    measured = Metric(name="step_time", unit="s", better="lower", kind="time",
                      samples=(1.04, 1.05, 1.06))
    first = judge("t.py::test_step::step_time", measured, stored)
    assert first.worse_on_one_machine
    runner = ScriptedRunner({"base": 1.0, "head": 1.05}, host=[1.0, 1.0, 1.2, 1.2, 0.9, 0.9])
    result = run_ab(base, head, ["t.py"], runner=runner,
                    tolerance_of=lambda mid, m: first.one_machine_tolerance, alpha=0.01,
                    max_rounds=3, budget_seconds=1e6, work_dir=tmp_path)
    (final,) = confirm_with_ab([first], result)
    assert final.outcome is Outcome.REGRESSION
    assert final.tolerance == pytest.approx(0.02)
    assert "confirmed by A/B, 3 rounds" in final.reason
    # Shown as the A/B measured it: base's and head's run medians on this machine.
    assert final.baseline is not None and final.baseline.samples == (1.0, 1.2, 0.9)
    assert final.measured.samples == pytest.approx((1.05, 1.26, 0.945))
    assert final.baseline.runs == ()


def test_too_few_rounds_are_refused(tmp_path: Path) -> None:
    base, head = _sides(tmp_path)
    with pytest.raises(ValueError, match="at least 3"):
        run_ab(base, head, [], runner=ScriptedRunner({}, [1.0]), tolerance_of=lambda mid, m: 0.02,
               alpha=0.01, max_rounds=2, budget_seconds=10, work_dir=tmp_path)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


TEST_FILE = '''
from pathlib import Path

def test_cost(perf):
    cost = float((Path(__file__).parent / "cost.txt").read_text())
    perf.metric("cost", [cost] * 5, unit="s", better="lower", kind="time")
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git repository of a tiny measured project: commit 1 costs 1.0 s, commit 2 1.1 s."""
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "test_cost.py").write_text(TEST_FILE)
    (repo / "cost.txt").write_text("1.0")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "tag", "v1")
    (repo / "cost.txt").write_text("1.1")
    _git(repo, "commit", "-q", "-am", "two")
    return repo


def test_worktree_checks_out_the_commit_and_cleans_up(project: Path) -> None:
    with worktree(project, "v1") as (commit, directory):
        assert (directory / "cost.txt").read_text() == "1.0"
        assert commit == resolve_commit(project, "v1")
    assert not directory.exists()
    assert str(directory) not in _git(project, "worktree", "list")


class RecordingRun:
    """Stands in for subprocess.run: keeps the child's environment and saves one metric where
    the command's --perf-save points."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}

    def __call__(self, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        from harness.gate import store

        env = kwargs["env"]
        assert isinstance(env, dict)
        self.env = env
        save = Path(next(a for a in command if a.startswith("--perf-save="))[len("--perf-save="):])
        metric = Metric(name="step_time", unit="s", better="lower", kind="time",
                        samples=(1.0, 1.0, 1.0))
        store.save_results(save, RunResults(kind="results", fingerprint="cpu", environment={},
                                            metrics={"t.py::test_step::step_time": metric}))
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.mark.parametrize("profile", [True, False])
def test_child_runs_are_marked_and_skip_the_profiled_pass_only_when_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: bool) -> None:
    from harness.gate import ab

    recording = RecordingRun()
    monkeypatch.setattr(ab.subprocess, "run", recording)
    PytestRunner(profile=profile)(tmp_path, ["t.py"], tmp_path / "r.json")
    assert recording.env[ab.CHILD_RUN_VARIABLE] == "1"
    assert (recording.env.get(ab.NO_PROFILE_VARIABLE) == "1") is not profile


@pytest.mark.parametrize("writes_bytecode", [True, False])
def test_child_runs_share_a_bytecode_cache_where_the_caller_writes_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_bytecode: bool) -> None:
    from harness.gate import ab

    recording = RecordingRun()
    monkeypatch.setattr(ab.subprocess, "run", recording)
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    if writes_bytecode:
        monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    else:
        monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    PytestRunner()(tmp_path, ["t.py"], tmp_path / "work" / "r.json")
    if writes_bytecode:  # the caller's own caches serve the children: nothing changed
        assert "PYTHONPYCACHEPREFIX" not in recording.env
    else:  # one cache for every child, inside the A/B's work directory, removed with it
        assert "PYTHONDONTWRITEBYTECODE" not in recording.env
        assert recording.env["PYTHONPYCACHEPREFIX"] == str(
            tmp_path / "work" / ab.BYTECODE_DIRECTORY)


def test_a_confirmation_profiles_only_for_a_device_time_suspect() -> None:
    from types import SimpleNamespace

    from harness.pytest_plugin.confirm import _needs_profiles

    wall = SimpleNamespace(metric_id="t.py::test_step::step_time")
    device = SimpleNamespace(metric_id="t.py::test_step::gemm_device_time")
    assert not _needs_profiles([wall])  # type: ignore[list-item]
    assert _needs_profiles([wall, device])  # type: ignore[list-item]


def test_an_unknown_ref_says_how_to_fix_it(project: Path) -> None:
    with pytest.raises(ABError, match="not a commit.*git fetch"):
        resolve_commit(project, "no-such-branch")


def test_a_failing_child_run_is_an_error_with_its_output(project: Path, tmp_path: Path) -> None:
    (project / "test_cost.py").write_text("def test_broken():\n    assert False, 'boom'\n")
    with pytest.raises(ABError, match="exited with 1"):
        PytestRunner()(project, ["--perf-device=cpu", "test_cost.py"], tmp_path / "r.json")


def test_the_ab_command_judges_a_ref_against_the_working_tree(
        project: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    monkeypatch.chdir(project)
    code = cli.main(["ab", "v1", "--rounds", "3", "--", "--perf-device=cpu", "test_cost.py"])
    out = capsys.readouterr()
    assert code == 1
    assert "3 alternating rounds" in out.out
    assert "test_cost.py::test_cost" in out.out and "regression (lower is better)" in out.out
    # Why, under the table: the rounds, the change, and the support (a p-value where the runs
    # vary; these fake runs repeat one value per side).
    assert re.search(r"test_cost\.py::test_cost::\w+: regression \(lower is better\): head "
                     r"\+\d+\.\d% vs base over 3 alternating rounds.*the same value in every "
                     r"run of each side \(deterministic\)", out.out)
    assert "A/B round 3/3" in out.err


@pytest.mark.parametrize(("argv", "message"), [
    (["ab", "v1"], "give the pytest arguments after '--'"),
    (["ab", "v1", "--rounds", "2", "--", "x.py"], "--rounds must be at least 3"),
    (["ab", "no-such-ref", "--", "x.py"], "'no-such-ref' is not a commit"),
])
def test_the_ab_command_says_what_is_wrong(project: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           argv: list[str], message: str) -> None:
    from harness import cli

    monkeypatch.chdir(project)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_ab_command_needs_a_git_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["ab", "main", "--", "x.py"]) == 2
    assert "not in a git checkout" in capsys.readouterr().err


def test_arguments_after_the_separator_belong_to_ab_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    with pytest.raises(SystemExit):
        cli.main(["compare", "a.json", "b.json", "--", "x"])
    assert "only for the ab command" in capsys.readouterr().err


@pytest.mark.parametrize(("head_cost", "host", "expected"), [
    # Head measured 3% better over rounds too noisy to say by how much: not confirmed.
    (0.97, [1.0, 0.8, 1.0, 1.1, 1.0, 0.95], "unchanged"),
    # Head measured 3% worse over the same kind of rounds: undecided, left unjudged.
    (1.03, [1.0, 1.2, 1.0, 0.9, 1.0, 1.05], "unreliable")])
def test_rounds_that_disagree_fail_a_confirmation_only_when_head_measured_worse(
        tmp_path: Path, head_cost: float, host: list[float], expected: str) -> None:
    from harness.gate.ab import confirm_with_ab
    from harness.gate.verdict import Outcome, judge

    stored = Metric(name="step_time", unit="s", better="lower", kind="time",
                    samples=(0.99, 1.0, 1.01))
    measured = Metric(name="step_time", unit="s", better="lower", kind="time",
                      samples=(1.19, 1.2, 1.21))
    first = judge("t.py::test_step::step_time", measured, stored)
    assert first.outcome is Outcome.REGRESSION
    base, head = _sides(tmp_path)
    result = run_ab(base, head, ["t.py"], runner=ScriptedRunner(
        {"base": 1.0, "head": head_cost}, host=host), tolerance_of=lambda mid, m: 0.02,
        alpha=0.01, max_rounds=3, budget_seconds=1e6, work_dir=tmp_path)
    (paired,) = result.verdicts.values()
    assert paired.outcome is PairedOutcome.UNDECIDED
    (final,) = confirm_with_ab([first], result)
    assert final.outcome is Outcome(expected)
    # The `ab` command's table calls such a metric undecided, not unreliable: its runs were sound.
    from harness.gate.report import render_reasons, render_summary
    (shown,) = as_verdicts(result)
    assert "undecided (rounds disagree)" in render_summary([shown])
    assert "1 undecided (1 metric)" in render_summary([shown])
    assert "the rounds disagree too much to decide" in render_reasons([shown])
