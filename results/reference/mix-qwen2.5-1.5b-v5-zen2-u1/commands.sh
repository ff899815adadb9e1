#!/usr/bin/env bash
# Commands run by python -m bench reference, in order, from /work/main.
# Invocation: python -m bench reference --preset qwen2.5-1.5b --users 1 --duration 150 --quants f16 --out /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:qwen2.5-1.5b --models-dir models --mix openai --users 1 --spawn-rate 1 --duration 150 --stop-timeout 120 --label ours-defaults-u1 --run-dir /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/01-ours-defaults-u1
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-qwen2.5-1.5b-f16.gguf --alias synthetic-qwen2.5-1.5b-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 57521
/work/main/.venv/bin/python -m locust -f locustfiles --host http://127.0.0.1:57521 --run-dir /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1 --label llama-f16-u1 --csv /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1/locust --csv-full-history --html /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1/locust_report.html --headless --target openai --mix openai -u 1 -r 1 -t 150s --stop-timeout 120 --server-pidfile /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1/llama-server.pid
/work/main/.venv/bin/python -m analysis /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1
/work/main/.venv/bin/python -m analysis compare /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/01-ours-defaults-u1 /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/02-llama-f16-u1 --out /work/runs/s13/mix-qwen2.5-1.5b-u1-zen2/compare-u1
