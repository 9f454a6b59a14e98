"""The paired verdict of alternating base/head runs: the t-distribution, the decision rules."""

from __future__ import annotations

import math
import random

import pytest

from harness.gate.paired import (
    MIN_ROUNDS,
    PairedOutcome,
    paired_verdict,
    student_t_sf,
)


@pytest.mark.parametrize(("t", "df", "expected"), [
    # Critical values of Student's t from the textbook tables (one-sided).
    (2.776, 4, 0.025), (3.747, 4, 0.01), (12.706, 1, 0.025), (2.086, 20, 0.025),
    (0.0, 7, 0.5),
])
def test_student_t_tail_matches_the_tables(t: float, df: int, expected: float) -> None:
    assert student_t_sf(t, df) == pytest.approx(expected, rel=2e-3)


def test_student_t_tail_of_one_degree_is_the_cauchy_tail() -> None:
    for t in (0.1, 1.0, 5.0, 40.0):
        assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-9)


def test_a_real_slowdown_over_run_noise_is_a_regression() -> None:
    rng = random.Random(1)
    base = [10.0 * (1 + rng.gauss(0, 0.01)) for _ in range(5)]
    head = [b * 1.03 * (1 + rng.gauss(0, 0.005)) for b in base]
    verdict = paired_verdict("t::step_time", "lower", base, head, tolerance=0.02, alpha=0.01)
    assert verdict.outcome is PairedOutcome.REGRESSION
    assert verdict.change == pytest.approx(0.03, abs=0.01)
    assert verdict.p_value is not None and verdict.p_value < 0.01
    assert "5 alternating rounds" in verdict.reason


def test_the_machine_moving_both_sides_is_no_regression() -> None:
    # Every round runs on a differently fast host moment; the code is the same on both sides.
    host = [1.0, 1.35, 0.9, 1.6, 1.1]
    rng = random.Random(2)
    base = [10 * h * (1 + rng.gauss(0, 0.003)) for h in host]
    head = [10 * h * (1 + rng.gauss(0, 0.003)) for h in host]
    verdict = paired_verdict("t::step_time", "lower", base, head, tolerance=0.02, alpha=0.01)
    assert verdict.outcome is PairedOutcome.UNCHANGED


def test_higher_is_better_turns_the_direction() -> None:
    base = [600.0, 602.0, 598.0, 601.0]
    head = [570.0, 571.0, 569.0, 572.0]
    verdict = paired_verdict("g::tflops", "higher", base, head, tolerance=0.02, alpha=0.01)
    assert verdict.outcome is PairedOutcome.REGRESSION
    faster = paired_verdict("g::tflops", "higher", head, base, tolerance=0.02, alpha=0.01)
    assert faster.outcome is PairedOutcome.IMPROVEMENT


def test_rounds_that_disagree_are_undecided_not_a_regression() -> None:
    base = [10.0, 10.0, 10.0, 10.0]
    head = [13.0, 9.0, 12.5, 9.5]
    verdict = paired_verdict("t::step_time", "lower", base, head, tolerance=0.02, alpha=0.01)
    assert verdict.outcome is PairedOutcome.UNDECIDED
    assert "disagree" in verdict.reason


def test_deterministic_values_need_no_test() -> None:
    verdict = paired_verdict("m::peak", "lower", [100.0] * 3, [110.0] * 3, tolerance=0.05,
                             alpha=0.01)
    assert verdict.outcome is PairedOutcome.REGRESSION
    assert verdict.p_value is None
    assert "deterministic" in verdict.reason


def test_too_few_rounds_are_undecided() -> None:
    verdict = paired_verdict("t::x", "lower", [1.0] * (MIN_ROUNDS - 1),
                             [2.0] * (MIN_ROUNDS - 1), tolerance=0.02, alpha=0.01)
    assert verdict.outcome is PairedOutcome.UNDECIDED
    assert f"at least {MIN_ROUNDS}" in verdict.reason


@pytest.mark.parametrize(("base", "head", "message"), [
    ([1.0, 2.0, 3.0], [1.0, 2.0], "pair up"),
    ([1.0, 0.0, 3.0], [1.0, 2.0, 3.0], "positive finite"),
    ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], "positive finite"),
    ([1.0, True, 3.0], [1.0, 2.0, 3.0], "positive finite"),
])
def test_bad_values_are_named(base: list[float], head: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_verdict("t::x", "lower", base, head, tolerance=0.02, alpha=0.01)


def test_false_alarms_stay_near_alpha_under_no_change() -> None:
    rng = random.Random(3)
    alarms = 0
    for _ in range(400):
        base = [10 * (1 + rng.gauss(0, 0.02)) for _ in range(5)]
        head = [10 * (1 + rng.gauss(0, 0.02)) for _ in range(5)]
        verdict = paired_verdict("t::x", "lower", base, head, tolerance=0.01, alpha=0.01)
        alarms += verdict.outcome is PairedOutcome.REGRESSION
    # One-sided alpha 0.01 with the 1% tolerance nearly out of play: about 4 in 400.
    assert alarms <= 12
