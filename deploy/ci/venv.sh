#!/usr/bin/env bash
# CI: the project's venv in .venv (kept between jobs by the CI cache), then the project itself.
# PYTHON: the interpreter that makes the venv (default python3). PIP_ARGS: more pip options,
# e.g. "--extra-index-url https://download.pytorch.org/whl/cpu" for torch's CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# A restored cache already has the pinned packages: pip then only checks them (seconds).
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${PIP_ARGS:-} -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
