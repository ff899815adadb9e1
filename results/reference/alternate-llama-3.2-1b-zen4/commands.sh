#!/usr/bin/env bash
# Commands run by python -m bench alternate, in order, from /work/main.
# Invocation: python -m bench alternate --preset llama-3.2-1b --rounds 8 --out /work/runs/s10/alt-llama
MODEL=synthetic:llama-3.2-1b MODELS_DIR=models IGNORE_EOS=1 REQUEST_LOG= GUNICORN_ACCESSLOG= RATE_LIMIT= GLOBAL_RATE_LIMIT= PREFIX_CACHE_ROWS=0 gunicorn -c gunicorn.conf.py --workers 1
LLAMA_API_KEY=<random> /work/cache/llama/build/bin/llama-server -m /work/cache/llama/gguf/synthetic-llama-3.2-1b-f16.gguf --alias synthetic-llama-3.2-1b-f16 -t 2 --parallel 1 -c 256 --host 127.0.0.1 --port 36003
