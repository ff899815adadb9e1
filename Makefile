# GPT Load Lab: common commands. VENV is created by `make venv` (or .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= synthetic:gpt2-large

.PHONY: venv model tiny test soak test-tools ci-slow lint serve loadtest loadtest-ui bench bench-reference bench-engines \
	llama-reference roofline scaleout native native-sanitize

venv:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e .   # the project's packages, importable from anywhere

# Rebuild the native bf16 kernels in place after editing server/engine/native/*.c: what
# `pip install -e .` does at install (setup.py; a stale build is reported, not used).
native:
	$(PY) -m pip install -q --no-deps -e .

# The kernels' C tests under AddressSanitizer + UBSan (tests/native): compiled anywhere, the
# plain-C checks run anywhere, each kernel where the CPU has its features (AVX-512 BF16; the
# int8 GEMM's and the decode attention's AVX2 variants too; else: SKIP named).
native-sanitize:
	$(MAKE) -C tests/native run

# Build the default heavy synthetic model (~3.1 GB, once) and the tiny test models (GPT-2,
# and Llama 3 and Qwen2.5 in miniature, ~75 MB together, seconds each).
model:
	$(PY) -m server.engine.synthetic build $(subst synthetic:,,$(MODEL))

tiny:
	$(PY) -m server.engine.synthetic build tiny
	$(PY) -m server.engine.synthetic build tiny-llama
	$(PY) -m server.engine.synthetic build tiny-qwen

test: tiny
	$(PY) -m pytest -q --durations=25

# The 2,000-request soak on synthetic:gpt2 (no memory, file or thread growth): ~4 min on 2
# cores, ~8 on one. Kept out of `make test` so CI stays within ~30 min on a slower machine.
soak: tiny
	$(PY) -m pytest -q -m soak tests/test_soak.py

# The measurement tool's whole-server runs on tiny (bench matrix, profile, loop-lag, burst,
# engines: ~2.5 min), kept out of `make test` for CI's 30 minutes like the soak.
test-tools: tiny
	$(PY) -m pytest -q -m tool tests/bench

# CI as on a slower machine: the whole of .ci/run pinned to one core (issue 18's check that
# no test assumes a fast CPU). Run it from a fresh clone; see docs/development.md.
ci-slow:
	taskset -c 0 bash .ci/run

lint:
	$(VENV)/bin/ruff check .

# Serve MODEL with Gunicorn (preload, WEB_CONCURRENCY workers) on 127.0.0.1:$${PORT:-8000}.
serve: model
	MODEL=$(MODEL) $(VENV)/bin/gunicorn -c gunicorn.conf.py

# The main job: serve MODEL, run headless Locust (USERS users for DURATION s), write
# results/<UTC timestamp>-<LABEL>/ with run.json, Locust's CSV/HTML, requests.csv,
# memory.csv, server_requests.jsonl, then charts/ and report.md. ARGS passes more options
# (e.g. ARGS="--shape steps"); see `python scripts/loadtest.py --help`.
USERS ?= 10
DURATION ?= 300
LABEL ?= loadtest
loadtest: model
	$(PY) scripts/loadtest.py --model $(MODEL) --users $(USERS) --duration $(DURATION) \
		--label $(LABEL) $(ARGS)

# The same, but with Locust's web UI on http://127.0.0.1:8089 (memory tabs included);
# Ctrl+C ends it and the run folder is completed.
loadtest-ui: model
	$(PY) scripts/loadtest.py --ui --model $(MODEL) --users $(USERS) --label $(LABEL)-ui $(ARGS)

# The benchmark (tens of minutes on the default model; run it on a quiet machine): every row
# of bench/matrix.py serves BENCH_MODEL and takes the same closed loop (10 users, 64-token
# prompts, exactly 64 new tokens) for BENCH_WARMUP + BENCH_SECONDS s; writes
# results/bench-<UTC timestamp>/ with each run folder, comparison/, roofline.json and
# table.md. BENCH_ROWS picks rows (e.g. naive,batch-bf16); BENCH_ARGS passes more options
# (see `python -m bench matrix --help`; every measurement: `python -m bench --help`).
BENCH_MODEL ?= $(MODEL)
BENCH_SECONDS ?= 120
BENCH_WARMUP ?= 180
BENCH_ROWS ?=
bench:
	$(PY) -m bench matrix --model $(BENCH_MODEL) --seconds $(BENCH_SECONDS) --warmup $(BENCH_WARMUP) \
		--rows "$(BENCH_ROWS)" $(BENCH_ARGS)

# The yardstick (issue 13): our server, then llama.cpp's llama-server with the f16 and q8_0
# GGUFs of the same synthetic checkpoint, one after the other, each loaded by our Locust suite
# with the OpenAI mix (REF_USERS users, REF_DURATION s); writes results/reference-<UTC
# timestamp>/ with the run folders, analysis compare tables, table.md and commands.sh.
# REF_ARGS passes more options (e.g. REF_ARGS="--lone-user --ours 'int8=--dtype int8'"; see
# `python -m bench reference --help`). Needs `make llama-reference` once; never in CI.
REF_PRESET ?= $(subst synthetic:,,$(MODEL))
REF_USERS ?= 8
REF_DURATION ?= 150
REF_ARGS ?=
bench-reference:
	$(PY) -m bench reference --preset $(REF_PRESET) --users $(REF_USERS) \
		--duration $(REF_DURATION) $(REF_ARGS)

# The engines on the same work (issue 31): a closed loop of equal lengths (ENG_PROMPT-token
# prompts, exactly ENG_TOKENS new tokens, greedy, ENG_ROUNDS requests per stream) at c = 1, 8,
# 32 for our server and llama-server (over HTTP, Locust) and OpenVINO GenAI (in-process), one
# after the other; writes results/engines-<UTC timestamp>/ (table.md, engines.json,
# commands.sh). Engines without a build are skipped with the command that builds them:
# `make llama-reference`, `bash bench/build_openvino_reference.sh gpt2 REF_PRESET`. Never in CI.
ENG_PROMPT ?= 64
ENG_TOKENS ?= 128
ENG_ROUNDS ?= 2
ENG_ARGS ?=
bench-engines:
	$(PY) -m bench engines --preset $(REF_PRESET) --prompt-tokens $(ENG_PROMPT) \
		--new-tokens $(ENG_TOKENS) --rounds $(ENG_ROUNDS) $(ENG_ARGS)

# Build llama.cpp's server and the GGUFs of REF_PRESET (and gpt2) under LLAMA_DIR (default
# /work/cache/llama, outside git) from PyPI's llama-cpp-python sdist: 20-45 min on 2 cores.
llama-reference:
	PYTHON=$(PY) bash bench/build_llama_reference.sh gpt2 $(REF_PRESET)

# This host's matmul GFLOP/s (fp32, bf16), memory read GB/s and BENCH_MODEL's decode limit.
roofline:
	$(PY) -m bench roofline --model $(BENCH_MODEL)

# Scale-out on this machine (root: network namespaces): 2 Gunicorn hosts on synthetic:tiny
# behind nginx (deploy/nginx.conf), rate limits in Redis, distributed Locust (master + 2
# workers); writes results/<UTC timestamp>-scaleout/ with summary.json. See deploy/README.md.
scaleout: tiny
	$(PY) deploy/netns_scaleout.py $(ARGS)
