#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root (/work/main).
# Invocation: python -m bench.reference --users 1 --quants f16 --duration 240 --ours defaults= --ours 'float16=--dtype float16' --out /tmp/runs/lone-v3
# CPU: AMD EPYC, 2 cores
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 1 --spawn-rate 1 --duration 240 --stop-timeout 120 --label ours-defaults-u1 --run-dir /tmp/runs/lone-v3/01-ours-defaults-u1
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 1 --spawn-rate 1 --duration 240 --stop-timeout 120 --label ours-float16-u1 --run-dir /tmp/runs/lone-v3/02-ours-float16-u1 --dtype float16
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 2 --parallel 8 -c 8192 --host 127.0.0.1 --port 52813
/work/main/.venv/bin/python -m locust -f locustfiles --headless --target openai --mix openai -u 1 -r 1 -t 240s --stop-timeout 120 --host http://127.0.0.1:52813 --run-dir /tmp/runs/lone-v3/03-llama-f16-u1 --label llama-f16-u1 --server-pidfile /tmp/runs/lone-v3/03-llama-f16-u1/llama-server.pid --csv /tmp/runs/lone-v3/03-llama-f16-u1/locust --csv-full-history --html /tmp/runs/lone-v3/03-llama-f16-u1/locust_report.html
/work/main/.venv/bin/python -m analysis /tmp/runs/lone-v3/03-llama-f16-u1
/work/main/.venv/bin/python -m analysis compare /tmp/runs/lone-v3/01-ours-defaults-u1 /tmp/runs/lone-v3/02-ours-float16-u1 /tmp/runs/lone-v3/03-llama-f16-u1 --out /tmp/runs/lone-v3/compare-u1
