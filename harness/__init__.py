"""Process control shared by tests, scripts, bench and deploy: start, ready, stop, wait."""
