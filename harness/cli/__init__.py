"""`python -m harness estimate | compare | ab | explain | baselines | plot`: the command line, one
module per command.

This module only dispatches: each command module exposes `add_arguments(parser)` and
`run(args) -> int` (the exit code). Errors a user can fix are printed as one line, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": ("harness.cli.estimate",
                 "what a model should cost: parameters, FLOPs, memory, fit"),
    "compare": ("harness.cli.compare", "compare two saved result files with the plugin's verdicts"),
    "ab": ("harness.cli.ab", "run two git refs' tests alternately on this machine and judge "
                             "them pair by pair"),
    "explain": ("harness.cli.explain", "which kernels moved between two saved runs: the "
                                       "kernel diff of each regressed step"),
    "baselines": ("harness.cli.baselines", "list, show and trace the stored baselines"),
    "plot": ("harness.cli.plot", "draw a metric's history as a PNG (needs matplotlib)"),
}

# Exit code for input a user must fix (missing, truncated or foreign file; bad arguments).
EXIT_USAGE = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (so one command's optional needs,
    such as matplotlib for plot, never break another)."""
    parser = argparse.ArgumentParser(prog="python -m harness",
                                     description="perf-harness: training performance, measured "
                                                 "and explained.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first argument that names a command, if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments), run the command, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" belongs to the command itself (`ab ... -- PYTEST_ARGS`), unparsed.
    passthrough: list[str] = []
    if "--" in argv:
        passthrough = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    if passthrough and not getattr(args, "takes_passthrough", False):
        parser.error(f"arguments after '--' are only for the ab command: {' '.join(passthrough)}")
    args.passthrough = passthrough
    try:
        return int(args.run(args))
    except ValueError as exc:  # every user-fixable problem in the harness is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        return 0


if __name__ == "__main__":
    sys.exit(main())
