#!/usr/bin/env bash
# Build the llama.cpp reference (issue 13): llama-server, llama-quantize and f16 + q8_0 GGUFs of
# our synthetic checkpoints, all under LLAMA_DIR (outside git). Never run in CI: 20-45 min of
# compiling on 2 cores, plus ~1 GB of Python packages for the conversion.
#
#   bash bench/build_llama_reference.sh [PRESET ...]     # default presets: gpt2 gpt2-large
#
# Everything comes from PyPI: llama-cpp-python's sdist vendors llama.cpp (vendor/llama.cpp),
# whose convert_hf_to_gguf.py and gguf-py convert a Hugging Face folder to GGUF. Steps are
# idempotent: a finished step is skipped when run again.
#
# Environment:
#   LLAMA_DIR        where everything goes (default /work/cache/llama)
#   LLAMA_CPP_PYTHON_VERSION  the sdist to build (default 0.3.36, the one measured in issue 13)
#   MODELS_DIR       the synthetic checkpoints (default models/); missing ones are built
#   PYTHON           the project's Python, to build missing checkpoints (default .venv/bin/python)
#   JOBS             parallel compile jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."  # the repo root: models/ and .venv/ are relative to it

LLAMA_DIR=${LLAMA_DIR:-/work/cache/llama}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
MODELS_DIR=${MODELS_DIR:-models}
PYTHON=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(gpt2 gpt2-large)

SRC="$LLAMA_DIR/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$LLAMA_DIR/build"
VENV="$LLAMA_DIR/venv"
mkdir -p "$LLAMA_DIR/src" "$LLAMA_DIR/gguf"

fetch_source() {
  # The sdist, not a wheel: the wheel has no llama-server and no converter.
  [ -d "$SRC" ] && return
  # --no-binary for this package only: ":all:" would also build pip's build dependencies
  # (scikit-build-core, cmake, ...) from source, which took minutes and never finished.
  python3 -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
    -d "$LLAMA_DIR/src"
  tar -xzf "$LLAMA_DIR/src/llama_cpp_python-$VERSION.tar.gz" -C "$LLAMA_DIR/src"
}

build_binaries() {
  [ -x "$BUILD/bin/llama-server" ] && [ -x "$BUILD/bin/llama-quantize" ] && return
  # GGML_NATIVE: kernels for this CPU (AVX2/AVX-512/AMX as present), like a user's own build.
  # LLAMA_CURL/OPENSSL off and no prebuilt web UI: nothing is downloaded at build or run time.
  # Static libraries so the binaries run from anywhere without LD_LIBRARY_PATH.
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
  nice -n 19 cmake --build "$BUILD" --config Release -j "$JOBS" \
    --target llama-server llama-quantize
}

make_venv() {
  # A venv of its own: the converter pins other versions than the project (transformers 4.x).
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import gguf, torch, transformers" \
    2>/dev/null && return
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q torch==2.13.0 transformers==4.57.6 \
    "numpy>=2.2.6" sentencepiece safetensors "protobuf>=4.21.0,<5.0.0" "$SRC/gguf-py"
}

convert_f16() {
  # $1: preset. The converter reads GPT-2's context length from n_ctx, which transformers no
  # longer writes, so it gets a copy of the checkpoint (weights symlinked) with "n_ctx" added.
  local preset=$1 model="$MODELS_DIR/synthetic-$1" copy="$LLAMA_DIR/hf/synthetic-$1"
  local f16="$LLAMA_DIR/gguf/synthetic-$preset-f16.gguf"
  if [ ! -f "$model/config.json" ]; then
    nice -n 19 "$PYTHON" -m server.engine.synthetic build "$preset" --models-dir "$MODELS_DIR"
  fi
  if [ ! -f "$f16" ]; then
    mkdir -p "$copy"
    for f in "$model"/*; do ln -sf "$(realpath "$f")" "$copy/"; done
    rm -f "$copy/config.json" "$copy/tokenizer_config.json"
    "$VENV/bin/python" - "$model" "$copy" <<'EOF'
# The copy's two JSON files: n_ctx for the converter, and a tokenizer class that the
# converter's transformers 4.x knows (transformers 5 writes "TokenizersBackend"; the
# tokenizer itself is tokenizer.json either way).
import json, sys
model, copy = sys.argv[1:]
config = json.load(open(f"{model}/config.json"))
config["n_ctx"] = config.get("n_positions", 1024)
json.dump(config, open(f"{copy}/config.json", "w"), indent=2)
tokenizer = json.load(open(f"{model}/tokenizer_config.json"))
tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
json.dump(tokenizer, open(f"{copy}/tokenizer_config.json", "w"), indent=2)
EOF
    nice -n 19 "$VENV/bin/python" - "$SRC" "$copy" "$f16" <<'EOF'
# Run the vendored converter with the pre-tokenizer mapped to gpt-2: its hash table only knows
# published tokenizers, and ours is a byte-level BPE with GPT-2's pre-tokenizer (server/engine/synthetic.py).
import sys
src, model, out = sys.argv[1:]
sys.path[:0] = [src, f"{src}/gguf-py"]
import convert_hf_to_gguf
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", "f16", "--outfile", out]
convert_hf_to_gguf.main()
EOF
  fi
}

quantize_q8() {
  # $1: preset. q8_0 from the f16 GGUF, as a llama.cpp user would make it.
  local f16="$LLAMA_DIR/gguf/synthetic-$1-f16.gguf" q8="$LLAMA_DIR/gguf/synthetic-$1-q8_0.gguf"
  [ -f "$q8" ] || nice -n 19 "$BUILD/bin/llama-quantize" "$f16" "$q8" q8_0 "$JOBS"
}

fetch_source
build_binaries
make_venv
for preset in "${PRESETS[@]}"; do convert_f16 "$preset"; quantize_q8 "$preset"; done
echo "llama.cpp reference ready in $LLAMA_DIR:"
ls -la "$BUILD/bin/llama-server" "$BUILD/bin/llama-quantize" "$LLAMA_DIR"/gguf/*.gguf
