"""Where a run measures: its role under pytest-xdist (`xdist_role`, and `XDIST_REFUSAL` for a
measured test there), whether its baselines directory is the one the project keeps its
baselines in (`check_baselines_location`), and what the summary says about that context
(`nothing_measured_lines`, `rootdir_lines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from harness.gate.run_options import PerfOptions
from harness.pytest_plugin.options import DEFAULT_BASELINES_DIR, default_baselines_dir

# Why a measured test errors in a pytest-xdist worker.
XDIST_REFUSAL = (
    "perf: measured tests do not run under pytest-xdist workers: workers measuring at once "
    "slow each other down (a false regression), and their results cannot be joined into one "
    "report, results file or baseline. Run the measured tests in a pytest of their own without "
    "workers, `pytest -n 0 -m perf`, and the others with workers, `pytest -n auto -m 'not perf'`.")


def xdist_role(config: pytest.Config) -> Literal["worker", "controller"] | None:
    """"worker" in a pytest-xdist worker, "controller" in the process that started workers,
    None without pytest-xdist workers."""
    if hasattr(config, "workerinput"):  # set by pytest-xdist on its workers
        return "worker"
    if config.pluginmanager.has_plugin("dsession"):  # xdist's scheduler, on the controller
        return "controller"
    return None


def _ancestor_baseline(rootdir: Path, fingerprint: str) -> Path | None:
    """The nearest `baselines/<fingerprint>.json` above `rootdir`, or None."""
    for directory in rootdir.parents:
        candidate = directory / DEFAULT_BASELINES_DIR / f"{fingerprint}.json"
        if candidate.is_file():
            return candidate
    return None


def check_baselines_location(config: pytest.Config, options: PerfOptions,
                             fingerprint: str) -> None:
    """A pytest.UsageError when the default baselines directory has no baseline of this
    hardware but a directory above the rootdir has: without a pytest config file pytest puts the
    rootdir where it was started, so starting it in a subdirectory moves the baselines directory
    and every metric id, and every measured test would be skipped as having no baseline.

    A directory chosen with --perf-baselines or perf_baselines, and a rootdir that a config file
    pins, are left alone."""
    default = default_baselines_dir(config)
    if config.inipath is not None or default is None:
        return
    if (default / f"{fingerprint}.json").exists():
        return
    found = _ancestor_baseline(config.rootpath, fingerprint)
    if found is None:
        return
    project = found.parent.parent
    raise pytest.UsageError(
        f"the baselines of this hardware are in {found.parent}, but pytest's rootdir is "
        f"{config.rootpath}: no pytest config file pins the rootdir, so it is the directory "
        f"pytest was started in, and with it the baselines directory ({default}) and every "
        f"metric id moved. Run pytest from {project}, or add a pytest config file there "
        f"(pytest.ini, or [tool.pytest.ini_options] in pyproject.toml) so that the rootdir "
        f"stays put; --perf-baselines=DIR names another directory")


def nothing_measured_lines(config: pytest.Config, options: PerfOptions) -> list[str]:
    """Why --perf-save, --perf-update-baselines or --perf-compare did nothing here."""
    asked = [flag for flag, given in (("--perf-save", options.save_path is not None),
                                      ("--perf-update-baselines", options.update_baselines),
                                      ("--perf-compare", options.compare_path is not None))
             if given]
    if not asked or config.option.collectonly:
        return []
    if xdist_role(config) == "controller":
        return [f"{', '.join(asked)}: nothing done. The pytest-xdist workers measure "
                f"nothing (measured tests are refused under -n); run the measured tests "
                f"with -n 0: `pytest -n 0 -m perf`"]
    return [f"{', '.join(asked)}: nothing done: no selected test uses the perf fixture"]


def rootdir_lines(config: pytest.Config, options: PerfOptions) -> list[str]:
    """A warning when no pytest config file pins the rootdir: the default baselines
    directory and every metric id (a test's node id) then follow the directory pytest was
    started in."""
    if config.inipath is not None:
        return []
    return [f"WARNING: no pytest config file (pytest.ini, pyproject.toml, tox.ini, "
            f"setup.cfg) pins the rootdir, so it is {config.rootpath}, where pytest was "
            f"started; the baselines ({options.baselines_dir}) and every metric id "
            f"follow it. Add a pytest config file at the project's root."]
