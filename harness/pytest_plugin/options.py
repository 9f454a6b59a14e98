"""The `--perf-*` options and their `perf_*` ini keys: the table, their registration, and their
validation into a `PerfOptions` (`read_options`), with the `TimingPolicy` they make; and the
ini key `perf_marker_scope` (`marker_scope`): which tests the `gpu` and `distributed` markers
apply to.

A bad value is a pytest.UsageError naming the option and where its value came from (command
line, ini file, -o). Give path options with "=" (`--perf-compare=main.json`): pytest picks its
rootdir before plugins load, and an existing path given as a separate argument counts as a test
path then (see `_check_path_options_left_the_rootdir_alone`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from harness.checks import directory_problem, file_problem
from harness.distributed.launch import DEFAULT_TIMEOUT_SECONDS
from harness.gate.paired import MIN_ROUNDS
from harness.gate.run_options import (
    CONFIRM_CHOICES,
    DEFAULT_AB_BUDGET_SECONDS,
    DEFAULT_AB_ROUNDS,
    DEFAULT_CONFIRM_DELAY_SECONDS,
    PerfOptions,
)
from harness.gate.store import DEFAULT_DIRECTORY
from harness.gate.tolerance import TOLERANCE_RULE, is_tolerance

if TYPE_CHECKING:
    from harness.measure.sampling import TimingPolicy

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "cpu")
# Where baselines live under the rootdir: the store's default directory (one home).
DEFAULT_BASELINES_DIR = DEFAULT_DIRECTORY
# `TimingPolicy().budget_seconds`, written out so that the help text does not import the
# sampling code (and torch) at plugin load; tests/test_plugin.py checks that the two agree.
DEFAULT_BUDGET_SECONDS = 1.0

# perf_marker_scope: "perf" (the default) applies the plugin's `gpu` and `distributed` markers
# to tests that use the `perf` fixture only, so another project's own markers of those names
# keep their meaning; "all" applies them to every test of a project that opts in.
MARKER_SCOPE_INI = "perf_marker_scope"
MARKER_SCOPES: tuple[str, ...] = ("perf", "all")


@dataclass(frozen=True)
class _Option:
    """One `--perf-*` option and its `perf_*` ini key."""

    flag: str
    kind: Literal["path", "flag", "float", "device", "choice"]
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The attribute of pytest's option namespace: "--perf-save" -> "perf_save"."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def ini(self) -> str:
        """The ini key, the same name as `dest`."""
        return self.dest


OPTIONS: tuple[_Option, ...] = (
    _Option("--perf-baselines", "path", "directory of the baselines, one <fingerprint>.json per "
            "hardware (default: baselines/ in the rootdir)", "DIR"),
    _Option("--perf-update-baselines", "flag", "record this run's metrics as the baseline of "
            "this hardware (metrics of tests not run are kept); refused after a failure or an "
            "unreliable measurement unless --perf-force"),
    _Option("--perf-add-run", "flag", "with --perf-update-baselines: add this run to the runs "
            "the baseline keeps per metric (one per machine and day; from 3 runs on, their "
            "spread sets the tolerance) instead of starting them anew"),
    _Option("--perf-force", "flag", "with --perf-update-baselines: write the baseline even when "
            "tests failed or measurements were unreliable"),
    _Option("--perf-save", "path", "write this run's results (raw samples, environment) to a "
            "JSON file", "PATH"),
    _Option("--perf-compare", "path", "judge against a saved results file instead of the "
            "stored baseline", "PATH"),
    _Option("--perf-device", "device", "where measured tests run: cuda, cpu or auto "
            "(cuda when visible; default)", "DEVICE"),
    _Option("--perf-strict", "flag", "fail tests whose metrics have no baseline or were "
            "measured unreliably (for nightly runs)"),
    _Option("--perf-tolerance", "float", "relative tolerance for every metric, e.g. 0.05 for "
            "5% (overrides per-metric and default tolerances)", "FLOAT"),
    _Option("--perf-budget", "float", "sampling time budget of one measurement in seconds "
            f"(default {DEFAULT_BUDGET_SECONDS:g})", "SECONDS"),
    _Option("--perf-confirm-delay", "float", "seconds to wait before re-measuring a test that "
            "regressed, to confirm it; 0 re-measures at once (default "
            f"{DEFAULT_CONFIRM_DELAY_SECONDS:g})", "SECONDS"),
    _Option("--perf-confirm", "choice", "how a suspected regression is confirmed: ab (run the "
            "baseline's own commit and this code alternately on this machine, in a git "
            "worktree), remeasure (measure this code again after --perf-confirm-delay), or "
            "auto (ab where the baseline's commit is in this checkout; default)", "HOW"),
    _Option("--perf-ab-rounds", "float", "rounds of an A/B confirmation at most, each one run "
            f"of either side (at least {MIN_ROUNDS}; default {DEFAULT_AB_ROUNDS})", "N"),
    _Option("--perf-ab-budget", "float", "seconds the run's A/B confirmation (one for all "
            "suspected tests, at the end of the run) may take: it confirms the suspected tests "
            "whose 3 rounds fit (failed ones first), and stops at the rounds it has "
            f"(default {DEFAULT_AB_BUDGET_SECONDS:g})", "SECONDS"),
    _Option("--perf-ab-host-bound", "flag", "also confirm by A/B the host's share: wall times "
            "of steps whose device time held (and DataLoader metrics) that read worse than one "
            "machine's tolerance but within what the baseline's machines measured; by default "
            "they are named as host-bound changes and pass"),
    _Option("--perf-dist-timeout", "float", "under torchrun: seconds a collective waits for "
            "the other ranks before the run fails instead of hanging (default "
            f"{DEFAULT_TIMEOUT_SECONDS:g})", "SECONDS"),
    _Option("--perf-trace", "path", "keep a Chrome/Perfetto trace of each confirmed "
            "regression's profiled pass (under A/B the base's too) in DIR/<test>/: its first 2 "
            "steps, gzipped, at most 16 MiB each", "DIR"),
    _Option("--perf-trace-all", "flag", "with --perf-trace: keep the trace of every profiled "
            "test, not only of the regressed ones"),
)


def _argparse_text(text: str) -> str:
    """argparse expands %-placeholders in help texts; a literal "5%" must be written "5%%"."""
    return text.replace("%", "%%")


def add_options(parser: pytest.Parser) -> None:
    """The `perf` option group: every `--perf-x` flag has a matching `perf_x` ini key."""
    group = parser.getgroup("perf", "perf-harness: measured tests against stored baselines")
    for option in OPTIONS:
        if option.kind == "flag":
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest,
                            help=_argparse_text(option.help))
            parser.addini(option.ini, f"default for {option.flag}: {option.help}", type="bool",
                          default=False)
        else:
            group.addoption(option.flag, action="store", default=None, dest=option.dest,
                            metavar=option.metavar, help=_argparse_text(option.help))
            # "string", parsed here: the message of a bad value then names the key and file.
            parser.addini(option.ini, f"default for {option.flag}: {option.help}",
                          type="string", default="")
    parser.addini(MARKER_SCOPE_INI, "which tests the gpu and distributed markers of perf-harness "
                  "apply to: perf (tests that use the perf fixture; default) or all (every "
                  "test, for a project whose markers are the plugin's)", type="string",
                  default="")


def marker_scope(config: pytest.Config) -> str:
    """The validated `perf_marker_scope`: "perf" (the default) or "all"."""
    value = str(config.getini(MARKER_SCOPE_INI)).strip() or MARKER_SCOPES[0]
    if value not in MARKER_SCOPES:
        raise pytest.UsageError(f"{_ini_source(config, MARKER_SCOPE_INI)}: {value!r} is not "
                                f"valid; choose one of {', '.join(MARKER_SCOPES)}")
    return value


def _ini_source(config: pytest.Config, name: str) -> str:
    overrides = config.getoption("override_ini", None) or []
    if any(entry.split("=", 1)[0].strip() == name for entry in overrides):
        return f"ini key {name} (from -o/--override-ini)"
    return f"ini key {name} in {config.inipath}"


def _raw_value(config: pytest.Config, option: _Option) -> tuple[Any, str, Path] | None:
    """(value, where it came from, directory relative paths start at), or None when unset."""
    value = config.getoption(option.dest)
    if value is not None:
        return value, f"{option.flag} (command line)", config.invocation_params.dir
    source = _ini_source(config, option.ini)
    try:
        value = config.getini(option.ini)
    except (ValueError, TypeError, pytest.UsageError) as exc:  # UsageError from pytest >= 9.2
        hint = ("use true or false" if option.kind == "flag"
                else f'write it as a string, e.g. {option.ini} = "..."')
        raise pytest.UsageError(f"{source}: {exc}; {hint}") from None
    if value in ("", False):
        return None
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return value, source, base


def _path(config: pytest.Config, option: _Option) -> tuple[Path | None, str]:
    raw = _raw_value(config, option)
    if raw is None:
        return None, ""
    value, source, base = raw
    if not str(value).strip():
        raise pytest.UsageError(f"{source}: an empty path; give a file or directory name")
    path = Path(str(value).strip()).expanduser()
    return (path if path.is_absolute() else base / path), source


def _number(config: pytest.Config, option: _Option, valid: str,
            accept: Callable[[float], bool]) -> float | None:
    """The option's finite number when `accept` takes it, None when unset; else a usage error
    naming where the value came from and what `valid` values are."""
    raw = _raw_value(config, option)
    if raw is None:
        return None
    value, source, _ = raw
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and accept(number)):
        raise pytest.UsageError(f"{source}: {value!r} is not valid; it must be {valid}")
    return number


def _positive_float(config: pytest.Config, option: _Option, valid: str,
                    upper: float = math.inf) -> float | None:
    return _number(config, option, valid, lambda number: 0 < number < upper)


def _delay(config: pytest.Config, option: _Option, default: float) -> float:
    """A pause in seconds: 0 or more, under an hour (a longer one is a typo)."""
    delay = _number(config, option, "a number of seconds from 0 to under 3600, such as 30",
                    lambda number: 0 <= number < 3600)
    return default if delay is None else delay


def _choice(config: pytest.Config, option: _Option, choices: tuple[str, ...],
            default: str) -> str:
    """The option's value when it is one of `choices`, `default` when unset."""
    raw = _raw_value(config, option)
    if raw is None:
        return default
    value, source = str(raw[0]).strip(), raw[1]
    if value not in choices:
        raise pytest.UsageError(f"{source}: {value!r} is not valid; choose one of "
                                f"{', '.join(choices)}")
    return value


def _flag(config: pytest.Config, option: _Option) -> tuple[bool, str]:
    raw = _raw_value(config, option)
    return (True, raw[1]) if raw is not None else (False, "")


def _device(config: pytest.Config, option: _Option, resolve: bool) -> tuple[str, str]:
    """The resolved device ("cuda" or "cpu") and where the choice came from ("" for auto).

    Without `resolve` an unset or "auto" device stays "auto": resolving it asks torch, whose
    import the plugin leaves to runs that measure. An explicit "cuda" is checked either way."""
    raw = _raw_value(config, option)
    requested, source = ("auto", "") if raw is None else (str(raw[0]).strip(), raw[1])
    if requested not in DEVICE_CHOICES:
        raise pytest.UsageError(f"{source}: {requested!r} is not a device; choose one of "
                                f"{', '.join(DEVICE_CHOICES)}")
    if requested == "cpu" or (requested == "auto" and not resolve):
        return requested, source
    from harness.measure import environment

    available = environment.cuda_available()
    if requested == "cuda" and not available:
        raise pytest.UsageError(f"{source}: no CUDA device is visible ({no_cuda_detail()}); "
                                f"run on a GPU machine, or drop the option (auto) for the CPU "
                                f"suite")
    if requested == "auto":
        return ("cuda" if available else "cpu"), ""
    return requested, source


def no_cuda_detail() -> str:
    """Why torch sees no CUDA device, for messages: its answer and CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
            f"{'unset' if visible is None else repr(visible)}")


def _check_path_options_left_the_rootdir_alone(config: pytest.Config) -> None:
    """A UsageError when a path option's value, given as a separate argument, may have moved
    pytest's rootdir: pytest picks rootdir and config file before plugins are loaded, so an
    existing path after `--perf-compare` counts as a test path then. Without a config file the
    rootdir moves with it, every node id (and so every metric id) changes, and nothing matches
    the baseline. The `--perf-compare=PATH` form is read correctly in every case."""
    if config.inipath is not None:  # a config file pins the rootdir
        return
    args = list(config.invocation_params.args)
    for option in OPTIONS:
        if option.kind != "path" or option.flag not in args[:-1]:
            continue
        value = args[args.index(option.flag) + 1]
        if (config.invocation_params.dir / value).exists():
            raise pytest.UsageError(
                f"{option.flag} {value} (command line): write {option.flag}={value}. pytest "
                f"chose its rootdir ({config.rootpath}) before loading this plugin and took "
                f"{value} for a test path; without a config file that can move the rootdir, "
                f"and with it every test id and metric id")


def default_baselines_dir(config: pytest.Config) -> Path | None:
    """`<rootdir>/baselines` when neither --perf-baselines nor perf_baselines names the
    directory, else None (the user chose it)."""
    option = next(option for option in OPTIONS if option.flag == "--perf-baselines")
    if _raw_value(config, option) is not None:
        return None
    return config.rootpath / DEFAULT_BASELINES_DIR


def read_options(config: pytest.Config, *, resolve_device: bool = True) -> PerfOptions:
    """Validate the `--perf-*` options and `perf_*` ini keys; a pytest.UsageError naming the
    option and where its value came from (command line or ini file) when one is bad.

    `resolve_device=False` (the check at configure time) leaves an unset device "auto"."""
    _check_path_options_left_the_rootdir_alone(config)
    by_flag = {option.flag: option for option in OPTIONS}
    baselines, baselines_source = _path(config, by_flag["--perf-baselines"])
    update, update_source = _flag(config, by_flag["--perf-update-baselines"])
    force, force_source = _flag(config, by_flag["--perf-force"])
    add_run, add_run_source = _flag(config, by_flag["--perf-add-run"])
    save, _ = _path(config, by_flag["--perf-save"])
    compare, compare_source = _path(config, by_flag["--perf-compare"])
    strict, _ = _flag(config, by_flag["--perf-strict"])
    tolerance = _number(config, by_flag["--perf-tolerance"], TOLERANCE_RULE, is_tolerance)
    budget = _positive_float(config, by_flag["--perf-budget"],
                             "a number of seconds greater than 0, such as 2.5")
    dist_timeout = _positive_float(config, by_flag["--perf-dist-timeout"],
                                   "a number of seconds greater than 0, such as 300")
    confirm_delay = _delay(config, by_flag["--perf-confirm-delay"],
                           DEFAULT_CONFIRM_DELAY_SECONDS)
    device, device_source = _device(config, by_flag["--perf-device"], resolve_device)
    confirm = _choice(config, by_flag["--perf-confirm"], CONFIRM_CHOICES, "auto")
    ab_rounds = _number(config, by_flag["--perf-ab-rounds"],
                        f"a whole number of rounds of at least {MIN_ROUNDS}, such as 5",
                        lambda number: number >= MIN_ROUNDS and number == int(number))
    ab_host_bound, _ = _flag(config, by_flag["--perf-ab-host-bound"])
    ab_budget = _positive_float(config, by_flag["--perf-ab-budget"],
                                "a number of seconds greater than 0, such as 240")
    trace, trace_source = _path(config, by_flag["--perf-trace"])
    trace_all, trace_all_source = _flag(config, by_flag["--perf-trace-all"])
    if trace_all and trace is None:
        raise pytest.UsageError(f"{trace_all_source} only applies to --perf-trace; add "
                                f"--perf-trace=DIR or drop --perf-trace-all")
    if trace is not None and trace.exists() and not trace.is_dir():
        raise pytest.UsageError(f"{trace_source}: {trace} is a file; give a directory for the "
                                f"traces, such as {trace.parent / 'traces'}")

    if update and compare is not None:
        raise pytest.UsageError(f"{update_source} and {compare_source} conflict: a baseline "
                                f"is recorded from this run, a comparison judges it against "
                                f"{compare}; use one of them")
    if add_run and not update:
        raise pytest.UsageError(f"{add_run_source} only applies to --perf-update-baselines; add "
                                f"that option or drop --perf-add-run")
    if force and not update:
        raise pytest.UsageError(f"{force_source} only applies to --perf-update-baselines; add "
                                f"that option or drop {force_source.split(' ')[0]}")
    if save is not None and save.is_dir():
        raise pytest.UsageError(f"--perf-save: {save} is a directory; give a file name such as "
                                f"{save / 'results.json'}")
    if baselines is not None and (problem := directory_problem(baselines)) is not None:
        raise pytest.UsageError(f"{baselines_source}: {baselines} {problem}; give the directory "
                                f"that holds the <fingerprint>.json baselines")
    if compare is not None and (problem := file_problem(compare)) is not None:
        raise pytest.UsageError(f"{compare_source}: {compare} {problem}; give a results file "
                                f"saved with --perf-save")
    repeat_flags: list[str] = []
    if baselines_source.endswith("(command line)"):
        repeat_flags.append(f"--perf-baselines {baselines}")
    if device_source.endswith("(command line)"):
        repeat_flags.append(f"--perf-device {device}")
    if baselines is None:
        baselines = config.rootpath / DEFAULT_BASELINES_DIR
    child_args = [f"--perf-device={device}"]
    if budget is not None:
        child_args.append(f"--perf-budget={budget:g}")
    if trace is not None:  # as ini keys: a base tree without the option only warns about them
        child_args += ["-o", f"perf_trace={trace.resolve()}", "-o", "perf_trace_all=true"]
    return PerfOptions(
        baselines_dir=baselines, device=device, update_baselines=update, add_run=add_run,
        force=force,
        save_path=save, compare_path=compare, strict=strict, tolerance=tolerance,
        budget_seconds=budget, dist_timeout_seconds=dist_timeout,
        confirm_delay_seconds=confirm_delay, repeat_flags=tuple(repeat_flags), confirm=confirm,
        ab_rounds=DEFAULT_AB_ROUNDS if ab_rounds is None else int(ab_rounds),
        ab_budget_seconds=DEFAULT_AB_BUDGET_SECONDS if ab_budget is None else ab_budget,
        ab_host_bound=ab_host_bound,
        child_args=tuple(child_args), trace_dir=trace, trace_all=trace_all)


def timing_policy(options: PerfOptions) -> TimingPolicy:
    """The run's TimingPolicy: the defaults, with --perf-budget as the sampling budget."""
    from harness.measure.sampling import TimingPolicy

    policy = TimingPolicy()
    if options.budget_seconds is not None:
        policy = dataclasses.replace(policy, budget_seconds=options.budget_seconds)
    return policy
