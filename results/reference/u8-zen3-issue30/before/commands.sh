#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root (/work/wt-base).
# Invocation: python -m bench.reference --quants '' --users 8 --duration 150 --models-dir /work/main/models --out /work/main/results/reference/u8-zen3-issue30/before
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir /work/main/models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-defaults-u8 --run-dir /work/main/results/reference/u8-zen3-issue30/before/01-ours-defaults-u8
