#!/usr/bin/env bash
# Commands run by bench/reference.py, in order, from the repo root, pinned to core 1:
#   taskset -c 1 .venv/bin/python -m bench.reference --preset gpt2-large --users 8 --duration 150 \
#     --ours "ours-1w=--workers 1" --ours "ours-int8-1w=--workers 1 --dtype int8"
# CPU: AMD EPYC (family 23, AVX2, no AVX-512/bf16), 1 core (taskset), 2026-11-30
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-ours-1w-u8 --run-dir results/reference/01-ours-ours-1w-u8 --workers 1
/work/main/.venv/bin/python scripts/loadtest.py --model synthetic:gpt2-large --models-dir models --mix openai --users 8 --spawn-rate 8 --duration 150 --stop-timeout 120 --label ours-ours-int8-1w-u8 --run-dir results/reference/02-ours-ours-int8-1w-u8 --workers 1 --dtype int8
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-f16.gguf --alias synthetic-gpt2-large-f16 -t 1 --parallel 8 -c 8192 --host 127.0.0.1 --port 45313
/work/main/.venv/bin/python -m locust -f locustfiles --headless --target openai --mix openai -u 8 -r 8 -t 150s --stop-timeout 120 --host http://127.0.0.1:45313 --run-dir results/reference/03-llama-f16-u8 --label llama-f16-u8 --server-pidfile results/reference/03-llama-f16-u8/llama-server.pid --csv results/reference/03-llama-f16-u8/locust --csv-full-history --html results/reference/03-llama-f16-u8/locust_report.html
/work/main/.venv/bin/python -m analysis results/reference/03-llama-f16-u8
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-gpt2-large-q8_0.gguf --alias synthetic-gpt2-large-q8_0 -t 1 --parallel 8 -c 8192 --host 127.0.0.1 --port 37609
/work/main/.venv/bin/python -m locust -f locustfiles --headless --target openai --mix openai -u 8 -r 8 -t 150s --stop-timeout 120 --host http://127.0.0.1:37609 --run-dir results/reference/04-llama-q8_0-u8 --label llama-q8_0-u8 --server-pidfile results/reference/04-llama-q8_0-u8/llama-server.pid --csv results/reference/04-llama-q8_0-u8/locust --csv-full-history --html results/reference/04-llama-q8_0-u8/locust_report.html
/work/main/.venv/bin/python -m analysis results/reference/04-llama-q8_0-u8
/work/main/.venv/bin/python -m analysis compare results/reference/01-ours-ours-1w-u8 results/reference/02-ours-ours-int8-1w-u8 results/reference/03-llama-f16-u8 results/reference/04-llama-q8_0-u8 --out results/reference/compare-u8
