#!/usr/bin/env bash
# Commands run by python -m bench reference, in order, from /work/main.
# Invocation: python -m bench reference --quants '' --users 8 --duration 150 --out /work/main/results/reference/u8-zen3-issue30/after
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-defaults-u8 --run-dir /work/main/results/reference/u8-zen3-issue30/after/01-ours-defaults-u8
