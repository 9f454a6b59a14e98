"""Where a run measures: its role under pytest-xdist (`xdist_role`), and whether its baselines
directory is the one the project keeps its baselines in (`check_baselines_location`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from harness.gate.run_options import PerfOptions
from harness.pytest_plugin.options import DEFAULT_BASELINES_DIR, default_baselines_dir


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
