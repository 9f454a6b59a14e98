"""The plugin as a guest in other projects: installing it changes nothing for tests that do not
use `perf`. Their own `gpu` and `distributed` markers keep their meaning, `-W error` stays
clean, loading it imports no torch, pytest-xdist workers are refused measured tests with the
reason, a rootdir moved into a subdirectory is named instead of skipping everything, the entry
point has a name to disable it by, and a CPU baseline names its CPU model.

Runs that must start with a fresh interpreter (what the plugin imports, warnings at import,
pytest-xdist workers) use `runpytest_subprocess`; the others run in process.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness.gate import store
from harness.measure import environment, host
from harness.pytest_plugin.context import XDIST_REFUSAL

REPO = Path(harness.__file__).resolve().parent.parent

# An unrelated project: its own gpu and distributed markers, meaning "needs our GPU service" and
# "needs our cluster", which it runs (and checks) itself.
OWN_MARKERS_INI = """
[pytest]
markers =
    gpu: needs the project's GPU service (the project decides how to skip)
    distributed: needs the project's cluster
"""

OWN_MARKED_TESTS = """
import pytest

@pytest.mark.gpu
def test_own_gpu():
    pass

@pytest.mark.distributed
def test_own_distributed():
    pass

def test_plain():
    pass
"""

MEASURED_GPU_TEST = """
import pytest

@pytest.mark.gpu
def test_measured_on_gpu(perf):
    perf.metric("score", 1.0, unit="ratio")
"""

# A plugin module for subprocess runs: importing torch warns, as the CPU build of torch does
# without numpy; under -W error that warning is an error wherever pytest applies its filters.
TORCH_WARNS = """
import importlib.abc
import sys
import warnings


class WarnOnTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            warnings.warn("Failed to initialize NumPy: _ARRAY_API not found", UserWarning)
        return None


sys.meta_path.insert(0, WarnOnTorch())
"""

# Records which heavy modules the run imported, when it ends (not hypothesis: this repository's
# test environment has it, and its own pytest plugin).
IMPORTS_CONFTEST = """
import sys
from pathlib import Path


def pytest_unconfigure(config):
    loaded = sorted(name for name in ("torch", "numpy") if name in sys.modules)
    (Path(__file__).parent / "imported.txt").write_text(" ".join(loaded))
"""


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runs see no CUDA device, so these tests mean the same on a GPU box."""
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


@pytest.fixture
def checkout_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocess runs import this checkout's harness even where it is not installed."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


# -- another project's markers ----------------------------------------------------------------


def test_an_unrelated_projects_own_gpu_and_distributed_tests_run_as_without_the_plugin(
        pytester: pytest.Pytester) -> None:
    pytester.makeini(OWN_MARKERS_INI)
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-rs")
    result.assert_outcomes(passed=3)
    assert "= perf =" not in result.stdout.str()


@pytest.mark.parametrize("markexpr", ["gpu", "distributed"])
def test_dash_m_of_an_unrelated_projects_own_marker_selects_its_tests(
        pytester: pytest.Pytester, markexpr: str) -> None:
    pytester.makeini(OWN_MARKERS_INI)
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-m", markexpr)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, deselected=2)


def test_the_projects_own_marker_descriptions_are_not_registered_twice(
        pytester: pytest.Pytester) -> None:
    pytester.makeini(OWN_MARKERS_INI)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gpu: needs the project's GPU service*"])
    assert "(perf-harness) measures on a CUDA device" not in result.stdout.str()


def test_a_measured_gpu_test_of_an_unrelated_project_is_skipped_without_cuda(
        pytester: pytest.Pytester) -> None:
    pytester.makeini(OWN_MARKERS_INI)
    pytester.makepyfile(test_own=OWN_MARKED_TESTS, test_measured=MEASURED_GPU_TEST)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu", "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_measured.py:*: no CUDA device visible*"])


def test_the_marker_scope_all_applies_the_markers_to_every_test(
        pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nperf_marker_scope = all\n")
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*no CUDA device visible*", "*run under torchrun*"])


def test_a_bad_marker_scope_is_a_usage_error_naming_the_ini_key(
        pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nperf_marker_scope = gpu-only\n")
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest("-p", "harness.pytest_plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key perf_marker_scope in *tox.ini: 'gpu-only' is "
                                 "not valid; choose one of perf, all"])


def test_measured_tests_get_the_perf_marker_for_selection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own=OWN_MARKED_TESTS, test_measured="""
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")
""")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu",
                                "-m", "not perf")
    result.assert_outcomes(passed=3, deselected=1)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu",
                                "-m", "perf", "--strict-markers", "-rs")
    result.assert_outcomes(skipped=1, deselected=3)  # no baseline yet
    result.stdout.fnmatch_lines(["*perf: no baseline for score*"])


# -- what loading the plugin costs --------------------------------------------------------------


def test_loading_the_plugin_imports_neither_torch_nor_hypothesis() -> None:
    code = ("import sys, harness.pytest_plugin; print(' '.join(sorted(name for name in "
            "('torch', 'hypothesis', 'numpy', 'pynvml') if name in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    assert done.stdout.strip() == ""


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_hypothesis_is_a_test_dependency_not_a_runtime_one() -> None:
    """An installed hypothesis brings its own pytest plugin into every project's runs."""
    project = _pyproject()["project"]
    assert not [r for r in project["dependencies"] if r.startswith("hypothesis")]
    assert any(r.startswith("hypothesis") for r in project["optional-dependencies"]["test"])


def test_a_project_without_measured_tests_passes_under_dash_w_error_without_torch(
        pytester: pytest.Pytester, checkout_importable: None) -> None:
    pytester.makepyfile(torch_warns=TORCH_WARNS)
    pytester.makeconftest(IMPORTS_CONFTEST)
    pytester.makeini(OWN_MARKERS_INI + "filterwarnings =\n    error\n")
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest_subprocess("-p", "torch_warns", "-p", "harness.pytest_plugin",
                                           "-p", "no:cacheprovider", "-W", "error")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)
    assert (pytester.path / "imported.txt").read_text() == ""


def test_importing_torch_in_a_hook_does_fail_under_dash_w_error_with_the_warning_module(
        pytester: pytest.Pytester, checkout_importable: None) -> None:
    """The control of the test above: the warning module does make a torch import fatal."""
    pytester.makepyfile(torch_warns=TORCH_WARNS)
    pytester.makeconftest("def pytest_configure(config):\n    import torch\n")
    pytester.makepyfile(test_own=OWN_MARKED_TESTS)
    result = pytester.runpytest_subprocess("-p", "torch_warns", "-p", "no:cacheprovider",
                                           "-W", "error")
    assert result.ret != pytest.ExitCode.OK


# -- registration and its names -----------------------------------------------------------------


def test_the_entry_point_is_named_perf_harness_and_names_the_plugin_module() -> None:
    entry_points = _pyproject()["project"]["entry-points"]["pytest11"]
    assert entry_points == {"perf_harness": "harness.pytest_plugin.entry_point"}
    from harness.pytest_plugin import entry_point

    assert entry_point.pytest_plugins == ["harness.pytest_plugin"]


def test_the_plugin_is_registered_once_however_many_ways_load_it(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]\n')
    pytester.makepyfile(test_measured="""
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")
""")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "-p", "perf_harness",
                                "--perf-device=cpu", "--perf-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*new baseline for*: 1 metric*"])


def test_dash_p_no_perf_harness_disables_the_installed_plugin(
        pytester: pytest.Pytester) -> None:
    # Every distribution, as pytest scans them (a stale egg-info may shadow the installed one
    # in `entry_points()`).
    installed = [ep for dist in importlib.metadata.distributions() for ep in dist.entry_points
                 if (ep.group, ep.name) == ("pytest11", "perf_harness")]
    if not installed:
        pytest.skip("perf-harness is not installed: no entry point to disable")
    enabled = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--help")
    assert "--perf-baselines" in enabled.stdout.str()
    disabled = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:perf_harness",
                                             "--help")
    assert disabled.ret == pytest.ExitCode.OK
    assert "--perf-baselines" not in disabled.stdout.str()


def test_a_baseline_refresh_leaves_no_lock_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_measured="""
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")
""")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu",
                                "--perf-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    left = sorted(path.name for path in (pytester.path / "baselines").iterdir())
    assert left == [f"{environment.cpu_fingerprint()}.json"]


# -- pytest-xdist ---------------------------------------------------------------------------------

MIXED_TESTS = """
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")

def test_plain():
    pass
"""


def test_xdist_workers_refuse_measured_tests_with_the_reason_and_run_the_rest(
        pytester: pytest.Pytester, checkout_importable: None) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_mixed=MIXED_TESTS)
    result = pytester.runpytest_subprocess("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                                           "-n", "2", "--perf-device=cpu",
                                           "--perf-save=results.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)
    text = " ".join(result.stdout.str().split())
    assert " ".join(XDIST_REFUSAL.split()) in text
    assert ("--perf-save: nothing done. The pytest-xdist workers measure nothing" in text)
    assert not (pytester.path / "results.json").exists()
    plain = pytester.runpytest_subprocess("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                                          "-n", "2", "-m", "not perf")
    assert plain.ret == pytest.ExitCode.OK
    plain.assert_outcomes(passed=1)  # the workers deselect; the controller counts no deselected


# -- the rootdir and the baselines directory ---------------------------------------------------


def _project_with_a_baseline(pytester: pytest.Pytester) -> Path:
    """A project without a pytest config file: its baseline at the top, its tests in tests/."""
    pytester.makepyfile(**{"tests/test_measured": """
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")
"""})
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu",
                                "--perf-update-baselines")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    return pytester.path / "baselines" / f"{environment.cpu_fingerprint()}.json"


def test_a_run_from_a_subdirectory_names_the_baselines_it_would_miss(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = _project_with_a_baseline(pytester)
    monkeypatch.chdir(pytester.path / "tests")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: the baselines of this hardware are in "
                                 f"{baseline.parent}, but pytest's rootdir is "
                                 f"{pytester.path / 'tests'}: no pytest config file pins the "
                                 f"rootdir*Run pytest from {pytester.path}*"])
    assert not (pytester.path / "tests" / "baselines").exists()


def test_a_run_without_a_config_file_warns_that_the_rootdir_is_not_pinned(
        pytester: pytest.Pytester) -> None:
    _project_with_a_baseline(pytester)
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"WARNING: no pytest config file*pins the rootdir, so it is "
                                 f"{pytester.path}*"])


def test_a_config_file_pins_the_rootdir_and_silences_the_warning(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _project_with_a_baseline(pytester)
    pytester.makeini("[pytest]\n")
    monkeypatch.chdir(pytester.path / "tests")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu")
    result.assert_outcomes(passed=1)
    assert "WARNING: no pytest config file" not in result.stdout.str()


# -- the CPU fingerprint ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), [
    ("Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz", "cpu-intel-xeon-platinum-8480c"),
    ("AMD EPYC 7763 64-Core Processor", "cpu-amd-epyc-7763"),
    ("Intel(R) Core(TM) i7-1185G7 @ 3.00GHz", "cpu-intel-core-i7-1185g7"),
    ("Apple M2 Pro", "cpu-apple-m2-pro"),
    ("CPU", "cpu"),
])
def test_the_cpu_fingerprint_names_the_cpu_model(monkeypatch: pytest.MonkeyPatch, model: str,
                                                 expected: str) -> None:
    monkeypatch.setattr(host, "cpu_model", lambda: model)
    assert environment.cpu_fingerprint() == expected
    assert environment.cpu_fingerprint(2) == f"{expected}-x2"


def test_a_laptops_cpu_baseline_is_not_used_on_another_cpu(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "cpu_model", lambda: "Intel(R) Core(TM) i7-1185G7 @ 3.00GHz")
    pytester.makepyfile(test_measured="""
def test_measured(perf):
    perf.metric("score", 1.0, unit="ratio")
""")
    recorded = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu",
                                  "--perf-update-baselines")
    assert recorded.ret == pytest.ExitCode.OK
    assert store.load_baseline(pytester.path / "baselines", "cpu-intel-core-i7-1185g7")
    monkeypatch.setattr(host, "cpu_model", lambda: "AMD EPYC 7763 64-Core Processor")
    result = pytester.runpytest("-p", "harness.pytest_plugin", "--perf-device=cpu", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*perf: no baseline for score: *cpu-amd-epyc-7763.json does "
                                 "not exist*"])


# -- the workflow templates ---------------------------------------------------------------------

WORKFLOWS = REPO / ".github" / "workflows"


@pytest.mark.parametrize("name", ["perf-nightly.yml", "perf-pr.yml"])
def test_a_workflow_installs_pinned_torch_and_perf_harness_with_a_pip_cache(name: str) -> None:
    yaml = pytest.importorskip("yaml")
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    assert document["env"]["TORCH_VERSION"].count(".") == 2  # an exact release, e.g. "2.13.0"
    (job,) = document["jobs"].values()
    setup = next(step for step in job["steps"]
                 if step.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    install = next(step["run"] for step in job["steps"]
                   if "pip install -e ." in step.get("run", ""))
    assert 'pip install "torch==$TORCH_VERSION" "perf-harness==$PERF_HARNESS_VERSION"' in install
    assert install.index("torch==") < install.index("pip install -e .")


def test_the_nightly_and_the_pr_workflow_measure_under_one_machine_lock() -> None:
    yaml = pytest.importorskip("yaml")
    for name, command in (("perf-nightly.yml", "pytest -m gpu"),
                          ("perf-pr.yml", "python -m harness ab")):
        (job,) = yaml.safe_load((WORKFLOWS / name).read_text())["jobs"].values()
        script = next(step["run"] for step in job["steps"] if command in step.get("run", ""))
        lock = "exec 9>/tmp/perf-harness-gpu.lock\nflock 9\n"
        assert lock in script and script.index(lock) < script.index(command), name
