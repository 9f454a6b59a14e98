"""The `perf_harness` pytest entry point of an installed perf-harness.

It holds no hooks: it names the plugin module, which pytest then registers under the module's own
name, `harness.pytest_plugin`. A checkout's conftest.py (`pytest_plugins`) and
`-p harness.pytest_plugin` use that name too, so the plugin is registered once however many of
them ask for it (pytest refuses one module under two names). `-p no:perf_harness` keeps this
entry point from loading; `-p no:harness.pytest_plugin` also blocks the module itself.
"""

pytest_plugins = ["harness.pytest_plugin"]
