#!/usr/bin/env bash
# Commands run by python -m bench reference, in order, from /work/main.
# Invocation: python -m bench reference --preset gpt2-large --users 8 --duration 150 --quants f16 --out /work/runs/m22/u8-gpt2-large-zen4
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-defaults-u8 --run-dir /work/runs/m22/u8-gpt2-large-zen4/01-ours-defaults-u8
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 55623
/work/main/.venv/bin/python -m locust -f locustfiles --host http://127.0.0.1:55623 --run-dir /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8 --label llama-f16-u8 --csv /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8/locust --csv-full-history --html /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8/locust_report.html --headless --target openai --mix openai -u 8 -r 8 -t 150s --stop-timeout 120 --server-pidfile /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8/llama-server.pid
/work/main/.venv/bin/python -m analysis /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8
/work/main/.venv/bin/python -m analysis compare /work/runs/m22/u8-gpt2-large-zen4/01-ours-defaults-u8 /work/runs/m22/u8-gpt2-large-zen4/02-llama-f16-u8 --out /work/runs/m22/u8-gpt2-large-zen4/compare-u8
