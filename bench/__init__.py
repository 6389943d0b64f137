"""Benchmarks and measurement scripts; importable so tests can share their generators."""
