"""Short garbage collections in a measured run: what outlives the tests is frozen.

Imports no torch: the pytest plugin uses it from its hooks.

A measured test collects garbage several times (before and after it for its memory ledger, around
each measurement so that no collection lands in a timed call, in `release_cuda_memory`), so
that a freed model's tensors are gone before the next number is taken. A full collection walks
every tracked object, and with torch, transformers and compiled graphs imported that is about
380,000 of them: 240 ms each on a CPU box; in the GPU suite on a fresh H200, 138 full collections
took 31.3 s, up to 0.49 s each (2026-12-03), and 2.5-3.3 s with the freeze below.

`gc.freeze()` moves every object alive now into a generation that collections skip; objects made
afterwards (a test's model, its tensors, their cycles) are collected as before, and reference
counting frees frozen objects as usual. So before each measured test the garbage is collected once
and what survives (imported modules, caches, the fixtures of wider scopes) is frozen. When a
fixture of a wider scope than a test is finalized, its objects may become cyclic garbage among the
frozen ones: everything is unfrozen then, so that the next collection frees them (with the GPU
memory they hold) before the next test is measured. Everything is unfrozen at the end of the run.

A freeze is a hint about cost, never about meaning: frozen garbage is only freed later. So a
process that froze objects itself before the first measured test (the H200 machines' Python
starts with 375 objects frozen) is not left out: at the end of the run everything alive is frozen
again, which covers what it had frozen.
"""

from __future__ import annotations

import gc
import sys


def drop_last_failure() -> None:
    """Drop the last failed test's exception, which pytest keeps in sys.last_* and which keeps
    that test's frames, and so its tensors, alive."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)


class FrozenBetweenTests:
    """Collect and freeze before each measured test; unfreeze when a wider-scoped fixture ends;
    at the end of the run, leave the process frozen as it was before it."""

    def __init__(self) -> None:
        # None until the first measured test; then whether the process had frozen objects of its
        # own, which are frozen again at the end of the run.
        self._frozen_before: bool | None = None

    def before_measured_test(self) -> None:
        """Collect the garbage (only what is not frozen, plus everything after an unfreeze) and
        freeze what survives."""
        if self._frozen_before is None:
            self._frozen_before = gc.get_freeze_count() > 0
        drop_last_failure()
        gc.collect()
        gc.freeze()

    def fixture_finalized(self, scope: str) -> None:
        """A fixture ended: if it was wider than a test, its objects were frozen with the rest."""
        if self._frozen_before is not None and scope != "function":
            gc.unfreeze()

    def finish(self) -> None:
        """The end of the run: every object is collectable again, unless the process had frozen
        objects before the run (then everything alive is frozen, those objects included)."""
        if self._frozen_before is None:
            return
        if self._frozen_before:
            gc.freeze()
        else:
            gc.unfreeze()
        self._frozen_before = None
