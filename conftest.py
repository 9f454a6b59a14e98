"""Repository-only pytest setup: hypothesis profiles and the plugin for a plain checkout."""

import os

from hypothesis import HealthCheck, settings

# A plain checkout (the GPU machine runs the suite without installing) has no entry point;
# the name matches the entry point's, so an installed package is not registered twice.
pytest_plugins = ["harness.pytest_plugin"]

# "ci": few examples so the CPU suite stays within its budget on 2 cores; "dev": the default
# depth for local runs; "thorough": for hunting counterexamples before a release.
settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
