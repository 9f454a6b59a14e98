"""Where this pytest process sits in a torchrun launch, read from the launcher's variables.

The user's launcher runs pytest itself, one process per GPU:

    torchrun --nproc-per-node 2 -m pytest -m distributed perf_tests/

torchrun (or any launcher that sets its variables: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; `srun torchrun ...` under SLURM) starts the
processes, and the plugin reads them here (`launch_from_environment`). Without these variables
a run is exactly a single-process run. Pure Python, no torch: the plugin reads the launch before
anything else is imported or started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.checks import require_positive_int

# The variables torchrun sets for every worker (torch.distributed.run docs, "Environment
# Variables"); `init_process_group`'s env:// method reads RANK, WORLD_SIZE, MASTER_ADDR and
# MASTER_PORT, the harness LOCAL_RANK and LOCAL_WORLD_SIZE.
LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                     "MASTER_ADDR", "MASTER_PORT")

# A collective needs a peer: `@pytest.mark.distributed` without nprocs asks for two ranks.
DEFAULT_REQUIRED_RANKS = 2

# Seconds a collective waits for the other ranks before the run fails. The longest legitimate
# gap between two collectives of a test is a model build or one FLOP-counted training step
# (seconds); three minutes kills a hang well inside a CI job's limit.
DEFAULT_TIMEOUT_SECONDS = 180.0


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name)
    if raw is None:
        raise ValueError(f"{name} is not set, but WORLD_SIZE is: a launcher such as torchrun "
                         f"sets {', '.join(LAUNCH_VARIABLES)} together; launch with "
                         f"`torchrun --nproc-per-node N -m pytest ...`")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{name}={raw!r} in the environment is not a non-negative integer")
    return value


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: its global and local rank, and how many there are."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE={self.world_size}: a launch has at least one rank")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is not a rank of WORLD_SIZE={self.world_size} "
                             f"(valid: 0..{self.world_size - 1})")
        if self.local_world_size < 1 or self.world_size % self.local_world_size:
            raise ValueError(f"LOCAL_WORLD_SIZE={self.local_world_size} does not divide "
                             f"WORLD_SIZE={self.world_size} into whole nodes")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"LOCAL_RANK={self.local_rank} is not a rank of "
                             f"LOCAL_WORLD_SIZE={self.local_world_size} "
                             f"(valid: 0..{self.local_world_size - 1})")

    @property
    def nodes(self) -> int:
        """Number of hosts: WORLD_SIZE / LOCAL_WORLD_SIZE."""
        return self.world_size // self.local_world_size

    def relaunch_command(self, ranks: int | None = None) -> str:
        """The command that runs pytest under torchrun with this launch's shape (or `ranks`
        processes on one host), for messages that tell the user what to type."""
        if ranks is not None:
            return f"torchrun --nproc-per-node {ranks} -m pytest"
        nodes = f" --nnodes {self.nodes}" if self.nodes > 1 else ""
        return f"torchrun{nodes} --nproc-per-node {self.local_world_size} -m pytest"


def launch_from_environment(environ: Mapping[str, str]) -> Launch | None:
    """The launch this process belongs to, read from torchrun's variables; None when WORLD_SIZE
    is unset (a plain pytest run). A ValueError names a variable that is missing or malformed."""
    if "WORLD_SIZE" not in environ:
        return None
    world_size = _int_variable(environ, "WORLD_SIZE")
    rank = _int_variable(environ, "RANK")
    local_rank = _int_variable(environ, "LOCAL_RANK")
    # LOCAL_WORLD_SIZE is torchrun's; launchers without it are taken to run one node.
    local_world_size = (_int_variable(environ, "LOCAL_WORLD_SIZE")
                        if "LOCAL_WORLD_SIZE" in environ else world_size)
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank,
                  local_world_size=local_world_size)


def required_ranks(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Ranks a `distributed` marker asks for: `distributed`, `distributed(4)` or
    `distributed(nprocs=4)`; a ValueError saying what is valid otherwise."""
    unknown = set(kwargs) - {"nprocs"}
    if unknown or len(args) > 1 or (args and kwargs):
        raise ValueError(f"the distributed marker takes one argument, the number of ranks the "
                         f"test needs: distributed(nprocs=2); got args={tuple(args)!r}, "
                         f"kwargs={dict(kwargs)!r}")
    value = args[0] if args else kwargs.get("nprocs", DEFAULT_REQUIRED_RANKS)
    try:
        return require_positive_int("distributed(nprocs=...)", value)
    except ValueError:  # say what the number counts: the message is the marker's usage error
        raise ValueError(f"distributed(nprocs=...) must be a positive integer number of ranks, "
                         f"got {value!r}") from None
