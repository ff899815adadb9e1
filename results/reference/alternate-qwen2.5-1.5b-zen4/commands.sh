#!/usr/bin/env bash
# Commands run by python -m bench alternate, in order, from /work/main.
# Invocation: python -m bench alternate --preset qwen2.5-1.5b --rounds 8 --out /work/runs/s10/alt-qwen
MODEL=synthetic:qwen2.5-1.5b MODELS_DIR=models IGNORE_EOS=1 REQUEST_LOG= GUNICORN_ACCESSLOG= RATE_LIMIT= GLOBAL_RATE_LIMIT= PREFIX_CACHE_ROWS=0 gunicorn -c gunicorn.conf.py --workers 1
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-qwen2.5-1.5b-f16.gguf --alias synthetic-qwen2.5-1.5b-f16 -t 2 --parallel 1 -c 256 --host 127.0.0.1 --port 56159
