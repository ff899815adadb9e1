#!/usr/bin/env bash
# Commands run by python -m bench reference, in order, from /work/main.
# Invocation: python -m bench reference --preset llama-3.2-1b --users 8 --duration 300 --quants f16 --out /work/runs/s13/mix-llama-3.2-1b-300s-zen2
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:llama-3.2-1b --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 300 --stop-timeout 120 --label ours-defaults-u8 --run-dir /work/runs/s13/mix-llama-3.2-1b-300s-zen2/01-ours-defaults-u8
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-llama-3.2-1b-f16.gguf --alias synthetic-llama-3.2-1b-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 37431
/work/main/.venv/bin/python -m locust -f locustfiles --host http://127.0.0.1:37431 --run-dir /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8 --label llama-f16-u8 --csv /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8/locust --csv-full-history --html /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8/locust_report.html --headless --target openai --mix openai -u 8 -r 8 -t 300s --stop-timeout 120 --server-pidfile /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8/llama-server.pid
/work/main/.venv/bin/python -m analysis /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8
/work/main/.venv/bin/python -m analysis compare /work/runs/s13/mix-llama-3.2-1b-300s-zen2/01-ours-defaults-u8 /work/runs/s13/mix-llama-3.2-1b-300s-zen2/02-llama-f16-u8 --out /work/runs/s13/mix-llama-3.2-1b-300s-zen2/compare-u8
