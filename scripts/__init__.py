"""Command-line tools run as ``python scripts/<name>.py`` (or ``python -m scripts.<name>``)."""
