"""Two saved runs judged against each other: every metric of NEW by `verdict.judge` against BASE.

The same engine as the pytest plugin, so a comparison on the command line and one in the suite
never disagree. Both baseline files and saved results are accepted (one schema family). Metrics
only in NEW are judged "no baseline"; metrics only in BASE are listed as missing in NEW, which is
not a regression (nothing was measured) unless the caller asks for it to fail. A comparison that
could judge nothing (a file with itself, a side without metrics) is an error, never a pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.checks import require_bool, require_choice
from harness.gate import store
from harness.gate.host_share import name_host_shares
from harness.gate.results import Metric, RunResults
from harness.gate.tolerance import require_tolerance
from harness.gate.verdict import Outcome, Verdict, judge, sort_for_report
from harness.gate.wall_time import defer_to_wall_time

# Failure policy (the command's --fail-on) -> the outcomes that make a comparison fail.
FAILING_OUTCOMES: dict[str, frozenset[Outcome]] = {
    "regression": frozenset({Outcome.REGRESSION}),
    "unreliable": frozenset({Outcome.REGRESSION, Outcome.UNRELIABLE}),
    "never": frozenset(),
}


@dataclass(frozen=True)
class Comparison:
    """The verdicts of NEW against BASE, regressions first, and the metrics NEW no longer has."""

    base_path: Path
    new_path: Path
    verdicts: list[Verdict]
    missing_in_new: dict[str, Metric]

    def outcomes(self) -> set[Outcome]:
        """The distinct outcomes of the verdicts."""
        return {v.outcome for v in self.verdicts}


def check_same_hardware(base: RunResults, base_path: Path,
                        new: RunResults, new_path: Path) -> None:
    """Refuse to compare runs from different hardware: their numbers are not comparable."""
    if base.fingerprint != new.fingerprint:
        raise ValueError(
            f"{base_path} (fingerprint {base.fingerprint!r}) and {new_path} (fingerprint "
            f"{new.fingerprint!r}) were recorded on different hardware; compare files that share "
            f"a fingerprint")


def check_two_runs(base: RunResults, base_path: Path, new: RunResults, new_path: Path) -> None:
    """Refuse a comparison that would judge nothing, so a gate never passes on it: the same
    run on both sides (one file, or a copy of it), or a side without metrics."""
    if not new.metrics:
        raise ValueError(f"{new_path}: holds no metrics, so nothing can be compared; was every "
                         f"measured test skipped or deselected in that run?")
    if not base.metrics:
        raise ValueError(f"{base_path}: holds no metrics, so every metric of {new_path} would "
                         f"pass unjudged; compare against a run or baseline that measured "
                         f"something")
    if base.created == new.created and base.metrics == new.metrics:
        raise ValueError(f"{new_path} and {base_path} hold the same run (recorded "
                         f"{new.created or 'at the same time'}, the same samples): nothing "
                         f"changed between them by construction; compare the new run's saved "
                         f"results (--perf-save) against the base")


def compare_results(base: RunResults, new: RunResults, *, base_path: Path, new_path: Path,
                    tolerance: float | None = None) -> Comparison:
    """Judge every metric of NEW against BASE with `verdict.judge` (a kernel-bound call's device
    time following its wall time, `wall_time.defer_to_wall_time`; the host's share of host-bound
    work named, `host_share.name_host_shares`); list what NEW lacks."""
    check_same_hardware(base, base_path, new, new_path)
    check_two_runs(base, base_path, new, new_path)
    verdicts = name_host_shares(defer_to_wall_time([
        judge(mid, measured, base.metrics.get(mid), tolerance=tolerance,
              baseline_environment=base.environment, environment=new.environment)
        for mid, measured in sorted(new.metrics.items())
    ]))
    missing = {mid: m for mid, m in sorted(base.metrics.items()) if mid not in new.metrics}
    return Comparison(base_path=base_path, new_path=new_path,
                      verdicts=sort_for_report(verdicts), missing_in_new=missing)


def compare_files(base_path: Path, new_path: Path, *,
                  tolerance: float | None = None) -> Comparison:
    """Load both files (a `store.StoreError` naming a bad one) and compare them."""
    if tolerance is not None:
        require_tolerance("tolerance", tolerance)
    if _same_file(base_path, new_path):
        raise ValueError(f"{new_path} is {base_path}: a file compared with itself changes by "
                         f"nothing; give the base run's file and the new run's file")
    base = store.load_results(base_path)
    new = store.load_results(new_path)
    return compare_results(base, new, base_path=base_path, new_path=new_path,
                           tolerance=tolerance)


def _same_file(first: Path, second: Path) -> bool:
    """Whether both paths lead to one file (the same path, a link, a hard link)."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one is missing: loading it names the problem
        return False


def fails(comparison: Comparison, *, fail_on: str, fail_on_missing: bool = False) -> bool:
    """Whether the comparison fails under the `fail_on` policy (a key of FAILING_OUTCOMES), or,
    with `fail_on_missing`, because BASE has metrics NEW lacks."""
    policy = require_choice("fail_on", fail_on, tuple(FAILING_OUTCOMES))
    if comparison.outcomes() & FAILING_OUTCOMES[policy]:
        return True
    return require_bool("fail_on_missing", fail_on_missing) and bool(comparison.missing_in_new)
