"""What a user runs: ``python scripts/loadtest.py``. Measurements: ``python -m bench``."""
