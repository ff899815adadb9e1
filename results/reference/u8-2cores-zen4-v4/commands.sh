#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root (/work/main).
# Invocation: python -m bench.reference --users 8 --quants f16 --duration 150 --out /tmp/runs/u8-v4
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-defaults-u8 --run-dir /tmp/runs/u8-v4/01-ours-defaults-u8
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 38479
/work/main/.venv/bin/python -m locust -f locustfiles --headless --target openai --mix openai -u 8 -r 8 -t 150s --stop-timeout 120 --host http://127.0.0.1:38479 --run-dir /tmp/runs/u8-v4/02-llama-f16-u8 --label llama-f16-u8 --server-pidfile /tmp/runs/u8-v4/02-llama-f16-u8/llama-server.pid --csv /tmp/runs/u8-v4/02-llama-f16-u8/locust --csv-full-history --html /tmp/runs/u8-v4/02-llama-f16-u8/locust_report.html
/work/main/.venv/bin/python -m analysis /tmp/runs/u8-v4/02-llama-f16-u8
/work/main/.venv/bin/python -m analysis compare /tmp/runs/u8-v4/01-ours-defaults-u8 /tmp/runs/u8-v4/02-llama-f16-u8 --out /tmp/runs/u8-v4/compare-u8
