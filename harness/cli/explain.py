"""`python -m harness explain BASE.json NEW.json [METRIC]`: which kernels moved between two runs.

The kernel diff the plugin, `compare` and `ab` print under a regression
(`harness.gate.kernel_diff`), from two saved results (or baselines): without METRIC, of every
metric `compare` judges a regression; with METRIC (a metric id or a part of one that matches
only one), of that metric's step whatever its verdict, so a change within tolerance can be
looked into too. `--markdown` gives the form for a pull-request comment, `--anatomy` adds each
side's anatomy of the step (`harness.gate.anatomy`).

Exit codes:
  0  explained, or nothing to explain (no regression and no METRIC)
  2  unusable input: a missing, unreadable or foreign-schema file, an unknown METRIC, a METRIC
     no kernel table explains (memory, or measured without a profiled pass), or files of
     different hardware without a METRIC
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.gate import report, store
from harness.gate.anatomy import anatomy
from harness.gate.compare import compare_results
from harness.gate.explanation import (
    Explanation,
    explain,
    explain_verdicts,
    profile_metric_id,
    stored_profiles,
)
from harness.gate.lookup import find_metric_id
from harness.gate.results import RunResults
from harness.gate.verdict import Outcome

EPILOG = """\
examples:
  python -m harness explain results/main.json results/branch.json
  python -m harness explain main.json branch.json "test_training.py::test_step[gpt-none]::step_time"

exit codes:
  0  explained, or no regression to explain (give METRIC to diff a step anyway)
  2  unusable input: a missing or bad file, an unknown METRIC or one no kernel
     table explains, or files of different hardware without a METRIC
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m harness explain`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("base", type=Path, metavar="BASE.json",
                        help="baseline or saved results of the base (main)")
    parser.add_argument("new", type=Path, metavar="NEW.json",
                        help="saved results of the new run (the branch)")
    parser.add_argument("metric", nargs="?", default=None, metavar="METRIC",
                        help="a metric id, or a part that matches only one (default: every "
                             "regression of NEW against BASE)")
    parser.add_argument("--markdown", action="store_true",
                        help="print GitHub-flavoured markdown for a pull-request comment")
    parser.add_argument("--anatomy", action="store_true",
                        help="also print each side's anatomy of the step")


def explain_metric(base: RunResults, new: RunResults, query: str, *,
                   where: str) -> Explanation:
    """The kernel diff of the step behind the metric `query` names in NEW; a ValueError when
    none names it or no kernel table explains it."""
    mid = find_metric_id(new.metrics, query, where=where)
    explanations = explain([mid], new.metrics, stored_profiles(base.metrics),
                           stored_profiles(new.metrics))
    if not explanations:
        metric = new.metrics[mid]
        raise ValueError(f"{mid}: no kernel table explains it (a {metric.kind} metric, or its "
                         f"test was measured without a profiled pass: CUDA only, "
                         f"profile=True); give a time or throughput metric of a profiled test")
    return explanations[0]


def render_anatomies(explanations: list[Explanation], base: RunResults, new: RunResults, *,
                     markdown: bool) -> str:
    """Each side's anatomy of every explained step."""
    parts = []
    for explanation in explanations:
        for side, results in (("base", base), ("new", new)):
            metric = results.metrics.get(explanation.profile_id)
            if metric is not None and metric.profile is not None:
                parts.append(f"anatomy of {explanation.profile_id} ({side}):\n\n"
                             + report.render_anatomy(anatomy(metric.profile),
                                                     markdown=markdown))
    return "\n\n".join(parts)


def run(args: argparse.Namespace) -> int:
    """Load both files, diff the regressed steps (or METRIC's), print; the exit code."""
    base = store.load_results(args.base)
    new = store.load_results(args.new)
    heading = f"{args.new} against {args.base}"
    if base.fingerprint != new.fingerprint:
        heading += (f" (different hardware: {base.fingerprint!r} and {new.fingerprint!r}; "
                    f"their kernels differ for that reason too)")
    if args.metric is not None:
        explanations = [explain_metric(base, new, args.metric, where=str(args.new))]
    else:
        comparison = compare_results(base, new, base_path=args.base, new_path=args.new)
        explanations = explain_verdicts(comparison.verdicts)
        if not explanations:
            regressed = [v.metric_id for v in comparison.verdicts
                         if v.outcome is Outcome.REGRESSION
                         and profile_metric_id(v.metric_id, new.metrics) is None]
            why = (f"{len(regressed)} regression(s) without a kernel table (memory, or not "
                   f"profiled)" if regressed else "no regression")
            print(f"{heading}: {why}; give METRIC to diff a step anyway")
            return 0
    parts = [f"**{heading}**" if args.markdown else heading,
             report.render_explanations(explanations, markdown=args.markdown)]
    if args.anatomy:
        parts.append(render_anatomies(explanations, base, new, markdown=args.markdown))
    print("\n\n".join(part for part in parts if part))
    return 0
