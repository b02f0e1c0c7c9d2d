"""Benchmarks: ``python -m minidiff.bench.layers`` times the layers against PyTorch (when it
is importable; it is never a dependency)."""
