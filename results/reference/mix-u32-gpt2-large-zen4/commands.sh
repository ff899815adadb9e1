#!/usr/bin/env bash
# Commands run by python -m bench reference, in order, from /work/main.
# Invocation: python -m bench reference --preset gpt2-large --users 32 --duration 150 --quants f16 --out /work/runs/m21/mix-u32-gpt2-large-zen4
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 32 --spawn-rate 32 --duration 150 --stop-timeout 120 --label ours-defaults-u32 --run-dir /work/runs/m21/mix-u32-gpt2-large-zen4/01-ours-defaults-u32
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 57287
/work/main/.venv/bin/python -m locust -f locustfiles --host http://127.0.0.1:57287 --run-dir /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32 --label llama-f16-u32 --csv /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32/locust --csv-full-history --html /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32/locust_report.html --headless --target openai --mix openai -u 32 -r 32 -t 150s --stop-timeout 120 --server-pidfile /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32/llama-server.pid
/work/main/.venv/bin/python -m analysis /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32
/work/main/.venv/bin/python -m analysis compare /work/runs/m21/mix-u32-gpt2-large-zen4/01-ours-defaults-u32 /work/runs/m21/mix-u32-gpt2-large-zen4/02-llama-f16-u32 --out /work/runs/m21/mix-u32-gpt2-large-zen4/compare-u32
