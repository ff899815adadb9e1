#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root (/work/main).
# Invocation: python -m bench.reference --users 1 --quants f16 --duration 180 --out results/reference/lone-user-2cores-zen4-c2
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 1 --spawn-rate 1 --duration 180 --stop-timeout 120 --label ours-defaults-u1 --run-dir /work/main/results/reference/lone-user-2cores-zen4-c2/01-ours-defaults-u1
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 55201
/work/main/.venv/bin/python -m locust -f locustfiles --headless --target openai --mix openai -u 1 -r 1 -t 180s --stop-timeout 120 --host http://127.0.0.1:55201 --run-dir /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1 --label llama-f16-u1 --server-pidfile /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1/llama-server.pid --csv /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1/locust --csv-full-history --html /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1/locust_report.html
/work/main/.venv/bin/python -m analysis /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1
/work/main/.venv/bin/python -m analysis compare /work/main/results/reference/lone-user-2cores-zen4-c2/01-ours-defaults-u1 /work/main/results/reference/lone-user-2cores-zen4-c2/02-llama-f16-u1 --out /work/main/results/reference/lone-user-2cores-zen4-c2/compare-u1
