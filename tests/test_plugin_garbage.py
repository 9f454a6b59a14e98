"""Frozen objects between measured tests (`harness.measure.garbage`): what outlives the tests is
out of the collections, a wider-scoped fixture's garbage is still freed before the next test
measures, a process that froze objects itself gets its freeze back, and otherwise nothing stays
frozen after the run."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from harness.measure import environment
from harness.measure.garbage import FrozenBetweenTests

CONFTEST = """
import gc
import weakref

import pytest

from harness.testing import FakeClock, FakeGpuMonitor

# Weak references to the module-scoped fixtures' objects, each in a reference cycle.
HELD = []


class Cycle:
    def __init__(self):
        self.me = self


@pytest.fixture
def perf_clock():
    return FakeClock(seed=1, base_seconds=1e-3)


@pytest.fixture
def perf_gpu_monitor():
    return FakeGpuMonitor()


@pytest.fixture(scope="module")
def module_cycle():
    cycle = Cycle()
    HELD.append(weakref.ref(cycle))
    yield cycle


@pytest.fixture
def freeze_count():
    return gc.get_freeze_count()
"""

# Module a: its module-scoped cycle is frozen with the rest before a's second measured test, and
# becomes garbage when module a ends.
MODULE_A = """
def test_first(perf, module_cycle, freeze_count):
    assert freeze_count > 0, "nothing was frozen before a measured test"
    perf.time(lambda: None)


def test_second(perf, module_cycle):
    perf.time(lambda: None)
"""

# Module b: by the time its measured test runs, module a's cycle must be gone.
MODULE_B = """
import conftest


def test_after_module_a(perf):
    assert conftest.HELD and conftest.HELD[0]() is None, "module a's cycle was never freed"
    perf.time(lambda: None)
"""

UNMEASURED = """
import gc


def test_unmeasured_first():
    assert gc.get_freeze_count() == 0, "frozen before any measured test"
"""


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin asks `environment.cuda_available`; these tests pin the CPU-only answer."""
    monkeypatch.setattr(environment, "cuda_available", lambda: False)


@pytest.fixture(autouse=True)
def unfrozen_afterwards() -> Iterator[None]:
    """Whatever a test leaves frozen is unfrozen, so no other test in this process inherits it."""
    assert gc.get_freeze_count() == 0
    try:
        yield
    finally:
        gc.unfreeze()


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest("-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                              "--perf-device", "cpu")


def test_a_measured_run_freezes_between_tests_and_unfreezes_at_the_end(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_0_unmeasured=UNMEASURED, test_a=MODULE_A, test_b=MODULE_B)
    result = run(pytester)
    # No baseline: the measured tests skip with the reason; none fails an assertion.
    result.assert_outcomes(passed=1, skipped=3)
    assert gc.get_freeze_count() == 0, "objects stayed frozen after the run"


def test_a_run_without_measured_tests_freezes_nothing() -> None:
    frozen = FrozenBetweenTests()
    frozen.fixture_finalized("module")
    frozen.finish()
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_itself_still_gets_short_collections_and_its_freeze_back(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_a=MODULE_A, test_b=MODULE_B)
    gc.freeze()
    assert gc.get_freeze_count() > 0
    result = run(pytester)
    # Module a's cycle is freed before module b measures, as without the process's freeze.
    result.assert_outcomes(skipped=3)
    # Frozen again at the end: the process's objects, and what is alive now.
    assert gc.get_freeze_count() > 0


def test_a_wider_scoped_fixture_ending_unfreezes_and_the_next_measured_test_freezes_again() -> None:
    frozen = FrozenBetweenTests()
    frozen.before_measured_test()
    assert gc.get_freeze_count() > 0
    frozen.fixture_finalized("function")
    assert gc.get_freeze_count() > 0, "a test's own fixture ending unfroze everything"
    frozen.fixture_finalized("module")
    assert gc.get_freeze_count() == 0
    frozen.before_measured_test()
    assert gc.get_freeze_count() > 0
    frozen.finish()
    assert gc.get_freeze_count() == 0


def test_objects_made_after_the_freeze_are_still_collected() -> None:
    frozen = FrozenBetweenTests()
    frozen.before_measured_test()

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    made_after = weakref.ref(Cycle())
    gc.collect()
    assert made_after() is None
    frozen.finish()
