"""Benchmarks of the harness itself, run from the repository root (`python -m benchmarks.<name>`);
see benchmarks/README.md."""
