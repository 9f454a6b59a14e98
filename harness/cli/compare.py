"""`python -m harness compare BASE.json NEW.json`: judge a branch's results against main's.

Every metric id present in either file is judged by `harness.gate.compare` with `verdict.judge`,
the same engine the pytest plugin uses, so a comparison on the command line and a comparison in
the suite never disagree; this module parses the arguments and prints. Both baseline files
(`baselines/<fingerprint>.json`) and saved results (`--perf-save`) are accepted: they are one
schema family.

Metrics only in NEW are judged "no baseline". Metrics only in BASE are listed as "missing in new":
nothing was measured, so they are not a regression and do not fail the comparison by default (a
test that crashed already fails its own pytest run; a renamed or removed test is a reviewed change).
`--fail-on-missing` makes them fail, for comparisons of runs that must cover the same suite.

Exit codes:
  0  no failing verdict under --fail-on
  1  a regression (with --fail-on unreliable: also an unreliable measurement; with
     --fail-on-missing: also a metric missing in NEW)
  2  unusable input: a missing, unreadable, truncated or foreign-schema file, files recorded on
     different hardware (their fingerprints differ), or a comparison that would judge nothing: a
     BASE or NEW without any metric, or BASE and NEW the same file or the same run; the message
     names the file(s)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.gate import report
from harness.gate.compare import FAILING_OUTCOMES, Comparison, compare_files, fails
from harness.gate.explanation import explain_verdicts
from harness.gate.formatting import format_value
from harness.gate.results import Metric
from harness.gate.tolerance import parse_tolerance

# Exit codes of the command (see the module docstring).
EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_UNUSABLE = 2

EPILOG = """\
exit codes:
  0  no failing verdict under --fail-on
  1  a regression (--fail-on unreliable: also an unreliable measurement;
     --fail-on-missing: also a metric that BASE has and NEW lacks)
  2  unusable input: missing, unreadable, truncated or foreign-schema file,
     files from different hardware (fingerprints differ), or nothing to judge:
     BASE or NEW without any metric, BASE and NEW the same file or run

Metrics only in NEW are reported as "no baseline"; metrics only in BASE as
"missing in new" (not a failure unless --fail-on-missing is given).
"""


def exit_code(comparison: Comparison, *, fail_on: str, fail_on_missing: bool = False) -> int:
    """0 or 1 for a usable comparison under the --fail-on policy (2 is raised as ValueError)."""
    failed = fails(comparison, fail_on=fail_on, fail_on_missing=fail_on_missing)
    return EXIT_REGRESSION if failed else EXIT_OK


def render_missing(missing: dict[str, Metric], *, markdown: bool) -> str:
    """The metrics BASE has and NEW lacks, with their baseline medians; empty when none."""
    if not missing:
        return ""
    heading = (f"**Missing in new** ({len(missing)}): measured in the base, not in the new run"
               if markdown else
               f"Missing in new ({len(missing)}): measured in the base, not in the new run")
    bullet = "- " if markdown else "  "
    lines = [heading]
    for mid, metric in missing.items():
        shown_id = f"`{mid}`" if markdown else mid
        lines.append(f"{bullet}{shown_id} (baseline {format_value(metric.median, metric.unit)})")
    return "\n".join(lines)


def render_comparison(comparison: Comparison, *, markdown: bool) -> str:
    """The full text of a comparison: the verdict table, the kernel diff of every regressed
    step (`harness.gate.kernel_diff`), then what NEW lacks."""
    if markdown:
        title = f"Performance: {comparison.new_path.name} vs {comparison.base_path.name}"
        table = report.render_markdown(comparison.verdicts, title=title)
    else:
        table = report.render_summary(comparison.verdicts)
    explained = report.render_explanations(explain_verdicts(comparison.verdicts),
                                           markdown=markdown)
    missing = render_missing(comparison.missing_in_new, markdown=markdown)
    return "\n\n".join(part for part in (table, explained, missing) if part)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m harness compare`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("base", type=Path, metavar="BASE.json",
                        help="baseline or saved results the new run is judged against (main)")
    parser.add_argument("new", type=Path, metavar="NEW.json",
                        help="saved results of the new run (the branch)")
    parser.add_argument("--markdown", action="store_true",
                        help="print a GitHub-flavoured markdown table for a pull-request comment")
    parser.add_argument("--fail-on", choices=tuple(FAILING_OUTCOMES), default="regression",
                        help="which verdicts make the exit code 1 (default: regression; "
                             "'unreliable' fails on regressions and unreliable measurements)")
    parser.add_argument("--fail-on-missing", action="store_true",
                        help="also exit 1 when BASE has a metric that NEW lacks")
    # Text, parsed in run(): "5%" then gets the message with the fraction to write, exit 2.
    parser.add_argument("--tolerance", default=None, metavar="FRACTION",
                        help="relative tolerance for every metric, e.g. 0.05 for 5%% (default: "
                             "each metric's stored tolerance, else the default of its kind)")


def run(args: argparse.Namespace) -> int:
    """Load both files, judge, print the table and return the exit code."""
    tolerance = None if args.tolerance is None else parse_tolerance("--tolerance",
                                                                     args.tolerance)
    comparison = compare_files(args.base, args.new, tolerance=tolerance)
    print(render_comparison(comparison, markdown=args.markdown))
    return exit_code(comparison, fail_on=args.fail_on, fail_on_missing=args.fail_on_missing)
