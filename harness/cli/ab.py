"""`python -m harness ab BASE [HEAD] -- PYTEST_ARGS`: two git refs measured on this machine.

Each ref is checked out in a temporary git worktree (HEAD left out: the working tree as it is,
uncommitted changes included) and the pytest arguments run in both, alternately, each run a
fresh process, round after round (`harness.gate.ab`). Every metric is judged pair by pair with
the paired t-test of `harness.gate.paired`, so a pull-request runner needs no numbers from
another machine: main's code is measured beside the branch, on the same host, in the same hour.
The table, the markdown and the exit codes are those of `compare`.

Exit codes:
  0  no failing verdict under --fail-on
  1  a regression (with --fail-on unreliable: also an undecided metric)
  2  unusable input: not a git checkout, an unknown ref, tests that fail or measure nothing
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from harness.gate import ab, report
from harness.gate.compare import FAILING_OUTCOMES
from harness.gate.explanation import explain_verdicts, runs_profiles
from harness.gate.paired import MIN_ROUNDS
from harness.gate.results import Metric
from harness.gate.tolerance import choose_tolerance, require_tolerance
from harness.gate.verdict import DEFAULT_ALPHA, sort_for_report

# Rounds and seconds of a comparison when not given: 5 rounds give the paired t-test 4 degrees
# of freedom (harness.gate.paired); 20 minutes bound a suite of a few minutes per side.
DEFAULT_ROUNDS = 5
DEFAULT_BUDGET_SECONDS = 1200.0

EPILOG = """\
example:
  python -m harness ab origin/main -- -m gpu perf_tests/test_gemm.py

exit codes:
  0  no failing verdict under --fail-on
  1  a regression (--fail-on unreliable: also an undecided metric)
  2  unusable input: not a git checkout, an unknown ref, tests that fail or
     measure nothing in either tree
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m harness ab`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.usage = "python -m harness ab [options] BASE [HEAD] -- PYTEST_ARGS"
    parser.add_argument("base", metavar="BASE", help="git ref of the base (main, a commit)")
    parser.add_argument("head", metavar="HEAD", nargs="?", default=None,
                        help="git ref of the head (default: the working tree as it is)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"rounds at most, each one run of either side (at least "
                             f"{MIN_ROUNDS}; default {DEFAULT_ROUNDS})")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS,
                        metavar="SECONDS", help="stop after the round that passes this many "
                        f"seconds, never below {MIN_ROUNDS} rounds (default "
                        f"{DEFAULT_BUDGET_SECONDS:g})")
    parser.add_argument("--markdown", action="store_true",
                        help="print a GitHub-flavoured markdown table for a pull-request comment")
    parser.add_argument("--fail-on", choices=tuple(FAILING_OUTCOMES), default="regression",
                        help="which verdicts make the exit code 1 (default: regression)")
    parser.add_argument("--tolerance", type=float, default=None, metavar="FRACTION",
                        help="relative tolerance for every metric, e.g. 0.05 for 5%% (default: "
                             "each metric's own, else the default of its kind)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep every run's saved results in DIR, with the child runs' "
                             "bytecode cache where the environment writes none (default: a "
                             "temporary directory, removed)")
    parser.set_defaults(takes_passthrough=True)


def run(args: argparse.Namespace) -> int:
    """Check out the refs, run the rounds, print the table and return the exit code."""
    if args.rounds < MIN_ROUNDS:
        raise ValueError(f"--rounds must be at least {MIN_ROUNDS}, got {args.rounds}")
    if args.tolerance is not None:
        require_tolerance("--tolerance", args.tolerance)
    if not args.passthrough:
        raise ValueError("give the pytest arguments after '--', e.g. "
                         "`python -m harness ab main -- -m gpu perf_tests/`")
    here = Path.cwd()
    repo = ab.repository_root(here)
    if repo is None:
        raise ValueError(f"{here} is not in a git checkout; ab checks out BASE with git")
    inside = here.relative_to(repo)

    def tolerance_of(metric_id: str, metric: Metric) -> float:
        return choose_tolerance(metric.kind, explicit=args.tolerance, own=metric.tolerance,
                                baseline=None).value

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with ExitStack() as stack:
        base_commit, base_repo = stack.enter_context(ab.worktree(repo, args.base))
        if args.head is None:
            head = ab.Side("head", "working tree", here)
        else:
            head_commit, head_repo = stack.enter_context(ab.worktree(repo, args.head))
            head = ab.Side("head", head_commit, head_repo / inside)
        base = ab.Side("base", base_commit, base_repo / inside)
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="perf-ab-")))
        work.mkdir(parents=True, exist_ok=True)
        progress(f"A/B on this machine: base {args.base} ({base_commit[:12]}) vs head "
                 f"{args.head or 'working tree'}, up to "
                 f"{args.rounds} rounds or {args.budget:g} s")
        result = ab.run_ab(base, head, args.passthrough, runner=ab.PytestRunner(),
                           tolerance_of=tolerance_of, alpha=DEFAULT_ALPHA,
                           max_rounds=args.rounds, budget_seconds=args.budget, work_dir=work,
                           progress=progress)
    if not result.verdicts:
        raise ValueError("the two sides measured no metric in common; check the pytest "
                         "arguments select measured tests in both refs")
    verdicts = sort_for_report(ab.as_verdicts(result))
    heading = (f"A/B: {args.head or 'working tree'} vs {args.base} ({base_commit[:12]}), "
               f"{result.rounds} alternating rounds in {result.elapsed_seconds:.0f} s on this "
               f"machine; columns 'baseline' and 'measured' are the medians of base's and "
               f"head's run medians")
    # Every regression with the kernel diff of its step over the rounds' profiles.
    explained = report.render_explanations(explain_verdicts(
        verdicts, base_profiles=runs_profiles(result.base_runs),
        new_profiles=runs_profiles(result.head_runs)), markdown=args.markdown)
    if args.markdown:
        print(report.render_markdown(verdicts, title=f"Performance A/B: "
                                                      f"{args.head or 'this branch'} vs "
                                                      f"{args.base}"))
        print(f"\n{heading}")
    else:
        print(f"{heading}\n\n{report.render_summary(verdicts)}")
        reasons = report.render_reasons(verdicts)
        if reasons:
            print(f"\n{reasons}")
    if explained:
        print(f"\n{explained}")
    failing = FAILING_OUTCOMES[args.fail_on]
    return 1 if any(v.outcome in failing for v in verdicts) else 0
