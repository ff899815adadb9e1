"""Micro-benchmarks: one process, no server, timed with bench.timing (python -m bench --help)."""
