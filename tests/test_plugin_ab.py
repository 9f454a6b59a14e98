"""The plugin confirms a suspected regression by A/B against the baseline's own commit, in a
git worktree, on this machine: a real slowdown fails the test, a slower environment does not."""

from __future__ import annotations

import subprocess

import pytest

pytest_plugins = ["pytester"]

# The measured cost is read from a file of the checkout (the "code"), times a factor from the
# environment (the "host"), which base and head runs share.
TEST_FILE = '''
import os
from pathlib import Path

def test_step(perf):
    cost = float((Path(__file__).parent / "cost.txt").read_text())
    host = float(os.environ.get("FAKE_HOST_FACTOR", "1"))
    perf.metric("step_time", [cost * host] * 5, unit="s", better="lower", kind="time")
'''


def _git(pytester: pytest.Pytester, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=pytester.path, check=True, capture_output=True)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> pytest.Pytester:
    """A git project whose baseline was recorded at its first commit (cost 1.0 s)."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_step=TEST_FILE)
    (pytester.path / "cost.txt").write_text("1.0")
    _git(pytester, "init", "-q")
    _git(pytester, "add", ".")
    _git(pytester, "commit", "-q", "-m", "base")
    result = pytester.runpytest("-p", "no:cacheprovider", "--perf-device=cpu",
                                "--perf-update-baselines")
    result.assert_outcomes(passed=1)
    return pytester


def test_a_real_slowdown_is_confirmed_by_ab(recorded: pytest.Pytester) -> None:
    (recorded.path / "cost.txt").write_text("1.1")  # the change under test: 10% slower code
    result = recorded.runpytest("-p", "no:cacheprovider", "--perf-device=cpu",
                                "--perf-ab-rounds=3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*A/B against its commit*", "*A/B round 1/3*",
                                 "*confirmed by A/B, 3 rounds against*head +10.0% vs base*"])


def test_a_slower_host_is_environment_changed_not_a_regression(
        recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HOST_FACTOR", "1.3")  # this machine is 30% slower for both codes
    result = recorded.runpytest("-p", "no:cacheprovider", "--perf-device=cpu",
                                "--perf-ab-rounds=3")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*environment changed*", "*A/B against*3 rounds*"])


def test_remeasure_is_used_when_asked(recorded: pytest.Pytester) -> None:
    (recorded.path / "cost.txt").write_text("1.1")
    result = recorded.runpytest("-p", "no:cacheprovider", "--perf-device=cpu",
                                "--perf-confirm=remeasure", "--perf-confirm-delay=0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*measured twice, 0 s apart, and regressed both times*"])
    assert "A/B" not in result.stdout.str()


def test_without_the_baselines_commit_it_re_measures_and_says_why(
        recorded: pytest.Pytester) -> None:
    import json

    path = next((recorded.path / "baselines").glob("*.json"))
    document = json.loads(path.read_text())
    document["environment"]["git_commit"] = "0" * 40
    path.write_text(json.dumps(document))
    (recorded.path / "cost.txt").write_text("1.1")
    result = recorded.runpytest("-p", "no:cacheprovider", "--perf-device=cpu",
                                "--perf-confirm-delay=0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no A/B (the baseline's commit 000000000000 is not in this "
                                 "checkout*re-measured instead*"])


def test_a_bad_confirm_choice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", "--perf-confirm=maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-confirm (command line): 'maybe' is not valid; "
                                 "choose one of auto, ab, remeasure*"])
