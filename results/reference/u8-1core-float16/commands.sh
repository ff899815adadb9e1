#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root (/work/main).
# Invocation: python -m bench.reference --preset gpt2-large --users 8 --duration 150 --ours 'ours-1w=--workers 1' --ours 'ours-int8-1w=--workers 1 --dtype int8' --quants '' --out results/reference/u8-1core-float16
# CPU: AMD EPYC, 1 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-ours-1w-u8 --run-dir /work/main/results/reference/u8-1core-float16/01-ours-ours-1w-u8 --workers 1
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-ours-int8-1w-u8 --run-dir /work/main/results/reference/u8-1core-float16/02-ours-ours-int8-1w-u8 --workers 1 --dtype int8
/work/main/.venv/bin/python -m analysis compare /work/main/results/reference/u8-1core-float16/01-ours-ours-1w-u8 /work/main/results/reference/u8-1core-float16/02-ours-ours-int8-1w-u8 --out /work/main/results/reference/u8-1core-float16/compare-u8
