"""Benchmarks of `clip` against the original release (each module has a `run(...) -> dict`)."""
