"""What a run was measured on: its software, its hardware and the fingerprint its baselines use.

A verdict is only as good as the comparison under it, so every run records the software and the
hardware it ran on (`run_environment`): GPU, driver, CUDA, torch, python, host and git commit.
The GPU's state around each measurement is `harness.measure.gpu_state`'s.
"""

from __future__ import annotations

import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pynvml

from harness.checks import require_positive_int
from harness.measure import devices, host
from harness.measure.devices import DEVICES, nvml_text
from harness.measure.host import calibrate_host, describe_host
from harness.theory.hardware import CPU_NAME, fingerprint

# Seconds to wait for `git`: it answers in milliseconds; a hung network filesystem must not hang
# the test session.
GIT_TIMEOUT_SECONDS = 5.0


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (the plugin's one question before choosing a device)."""
    import torch

    return torch.cuda.is_available()


# What a CPU's model name carries besides the model: trademark marks, the base clock, and words
# every model has ("Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz", "AMD EPYC 7763 64-Core
# Processor"); dropped from the fingerprint, which keeps vendor, family and model number.
_CPU_MODEL_NOISE = re.compile(r"\((?:r|tm|c)\)|@.*$|\b(?:cpu|processor|\d+-core)\b",
                              re.IGNORECASE)


def cpu_fingerprint(count: int = 1) -> str:
    """The hardware key of a CPU run of `count` ranks: "cpu-" and this CPU's model,
    "cpu-intel-xeon-platinum-8480c", so that a laptop's baseline is never judged on a CI
    runner; "cpu" alone (with "-x<count>") where the model has no name left to use."""
    model = " ".join(_CPU_MODEL_NOISE.sub(" ", host.cpu_model()).split())
    return fingerprint(f"{CPU_NAME} {model}", count)


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `directory`; (None, None) without git or a repository.

    Dirty means tracked files differ from the commit; untracked files (saved results, caches)
    do not count.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def driver_version() -> str | None:
    """The NVIDIA driver's version from NVML; None without NVML or a driver."""
    try:
        pynvml.nvmlInit()
        return nvml_text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        return None


def run_environment(device: str, *, repo_dir: Path | None = None,
                    world_size: int | None = None, calibrate: bool = True) -> dict[str, Any]:
    """The environment of a run on `device` ("cuda" or "cpu"): GPU name and count, driver, CUDA,
    torch, python, hostname, git commit and dirty flag, the host (CPU, affinity against the
    GPU's NUMA node, a calibration of under a second: `harness.measure.host`), and the hardware
    fingerprint its baselines are stored under ("cpu-<model>" for CPU runs, `cpu_fingerprint`,
    so CPU and GPU baselines never mix, nor those of two CPU models).

    `world_size` is the number of ranks of a distributed run (one device each): the fingerprint
    then counts those devices, "nvidia-h200-x2" or "cpu-amd-epyc-x2", not the GPUs the host
    has. `calibrate=False` leaves the calibration out (None): a run whose environment nobody
    judges, as an A/B child's, saves its second.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if world_size is not None:
        require_positive_int("world_size", world_size)
    import torch

    gpus = devices.detect_gpus()
    if device == "cuda":
        if not gpus:
            raise ValueError("device is 'cuda' but no GPU is detected (torch.cuda and NVML see "
                             "none); run on a GPU machine or use device 'cpu'")
        # Baselines are per GPU model and count: 8 GPUs of a node share power and cooling.
        count = len(gpus) if world_size is None else world_size
        hardware_key = fingerprint(gpus[0].name, count)
    else:
        hardware_key = cpu_fingerprint(world_size or 1)
    commit, dirty = git_state(repo_dir if repo_dir is not None else Path.cwd())
    return {
        "device": device,
        "fingerprint": hardware_key,
        "gpu_name": gpus[0].name if gpus else None,
        "gpu_count": len(gpus),
        "gpu_memory_bytes": gpus[0].memory_bytes if gpus else None,
        "driver": driver_version() if gpus else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": commit,
        "git_dirty": dirty,
        # The GPU this process measures on (a torchrun rank's own), for its NUMA node.
        "host": {**describe_host(torch.cuda.current_device() if device == "cuda" else None),
                 "calibration": calibrate_host(device) if calibrate else None},
    }
