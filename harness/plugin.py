"""pytest plugin entry point (placeholder until the harness lands)."""
