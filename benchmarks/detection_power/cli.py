"""The command line: `python -m benchmarks.detection_power` runs the benchmark and prints the
report; `--analyse JSON` re-analyses a saved run instead."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.detection_power.design import (
    AB_PHASE,
    DEFAULT_PHASES,
    DEFAULT_REPEATS,
    PHASES,
    QUICK_REPEATS,
)
from benchmarks.detection_power.document import load_document
from benchmarks.detection_power.report import render_report
from benchmarks.detection_power.run import Options, run_benchmark


def parse_phases(text: str) -> tuple[str, ...]:
    """--metrics "gemm,train" -> ("gemm", "train"), in the benchmark's order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PHASES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"--metrics must be a comma-separated subset of "
                                         f"{','.join(PHASES)}, got {text!r}")
    return tuple(p for p in PHASES if p in names)


def positive_int(text: str) -> int:
    """A positive integer command-line value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options: where to measure, how often, which phases, or what to re-analyse."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection_power",
        description="False alarms and detection power of the perf regression gate, measured "
                    "with the fixture's own measurement and verdict code.")
    parser.add_argument("--out", type=Path, default=Path("results/detection_power.json"),
                        help="JSON file for every raw sample (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"re-measurements per condition (default {DEFAULT_REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="where to measure (default: %(default)s)")
    parser.add_argument("--metrics", type=parse_phases, default=DEFAULT_PHASES,
                        help=f"comma-separated subset of {','.join(PHASES)} (default: "
                             f"{','.join(DEFAULT_PHASES)}; the A/B phase '{AB_PHASE}' runs only "
                             f"when named, it would take the run past its time budget)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_REPEATS} repeats and a 50 ms sampling budget; "
                             f"checks the logic, proves nothing about the defaults")
    parser.add_argument("--analyse", type=Path, default=None, metavar="JSON",
                        help="re-analyse a saved run instead of measuring")
    parser.add_argument("--tolerance-grid", action="store_true",
                        help="with --analyse: also the grid of tolerances and alphas")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or re-analyse a saved run) and print the tables; 0 on success."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.analyse is not None:
        try:  # a stored A/B comparison is judged again while the report renders
            report = render_report(load_document(args.analyse), grid=args.tolerance_grid)
        except ValueError as exc:
            parser.error(str(exc))
        print(report)
        return 0
    if args.tolerance_grid:
        parser.error("--tolerance-grid goes with --analyse; a run prints the grid anyway")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False on this machine; "
                     "use --device cpu (with --quick) to check the logic here")
    repeats = args.repeats if args.repeats is not None else (
        QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    if repeats < DEFAULT_REPEATS and not args.quick:
        log(f"note: {repeats} repeats per condition; the targets are stated for "
            f"{DEFAULT_REPEATS} and scaled to {repeats}")
    options = Options(out=args.out, device=args.device, repeats=repeats, phases=args.metrics,
                      quick=args.quick)
    data = run_benchmark(options, log=log)
    log(f"raw samples written to {options.out}")
    print(render_report(data, grid=True))
    return 0
