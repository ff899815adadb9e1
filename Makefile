# GPT Load Lab: common commands. VENV is created by `make venv` (or .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= synthetic:gpt2-large

.PHONY: venv model tiny test lint serve

venv:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt

# Build the default heavy synthetic model (~3.1 GB, once) and the tiny test model.
model:
	$(PY) -m server.synthetic build $(subst synthetic:,,$(MODEL))

tiny:
	$(PY) -m server.synthetic build tiny

test: tiny
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check .

# Serve MODEL with Gunicorn (preload, WEB_CONCURRENCY workers) on 127.0.0.1:$${PORT:-8000}.
serve: model
	MODEL=$(MODEL) $(VENV)/bin/gunicorn -c gunicorn.conf.py
