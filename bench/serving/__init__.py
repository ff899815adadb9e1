"""Whole-server runs: servers through harness/, load through Locust (python -m bench --help)."""
