"""What a user runs: ``python scripts/loadtest.py`` (the main job). Measurements: ``python -m bench``."""
