"""What a rank other than 0 of a torchrun launch leaves to rank 0 once it measures: the terminal
report and the JUnit XML file. Every rank runs the same tests and reaches the same outcomes
(`harness.distributed.group`), so rank 0's report and file are the launch's; two ranks would
print the same report twice and race for one file.

This happens when the perf session starts (a collected test uses `perf`): a launch whose tests
never measure is left as it would be without the plugin.
"""

from __future__ import annotations

import os

import pytest


def quiet(session: pytest.Session) -> None:
    """Swap the terminal reporter for one that writes to os.devnull, and drop the JUnit XML
    writer (--junitxml). The reporter stays registered because pytest asks it for its terminal
    writer (assertion messages, for one); this rank's own errors go to stderr (`run`). The
    session has started: the new reporter is told so, as pytest told the one it replaces."""
    config = session.config
    for name in ("terminalreporter", "terminalprogress-plugin"):
        if config.pluginmanager.has_plugin(name):
            config.pluginmanager.unregister(name=name)
    silent = pytest.TerminalReporter(config, open(os.devnull, "w", encoding="utf-8"))
    config.pluginmanager.register(silent, "terminalreporter")
    silent.pytest_sessionstart(session)
    _drop_junit_xml(config)


def _drop_junit_xml(config: pytest.Config) -> None:
    """Unregister pytest's JUnit XML writer, which writes its file when the session ends."""
    from _pytest.junitxml import xml_key  # where pytest keeps the writer of --junitxml

    writer = config.stash.get(xml_key, None)
    if writer is not None:
        del config.stash[xml_key]
        config.pluginmanager.unregister(writer)
    config.option.xmlpath = None
