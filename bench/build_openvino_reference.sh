#!/usr/bin/env bash
# Build the OpenVINO GenAI reference (issue 31): a venv of its own with openvino-genai pinned,
# and our synthetic checkpoints exported to OpenVINO IR with fp16 and int8 weights, all under
# OV_DIR (outside git). Never run in CI: ~1.6 GB of Python packages, ~45 s and ~1.5 GB of RAM
# per export of gpt2 (minutes for gpt2-large).
#
#   bash bench/build_openvino_reference.sh [PRESET ...]     # default presets: gpt2 gpt2-large
#
# Everything comes from PyPI (torch: the CPU wheel pip finds through find-links on these
# machines). Steps are idempotent: a finished step is skipped when run again.
#
#   OV_DIR/venv/                             openvino-genai, optimum-intel, torch (CPU)
#   OV_DIR/ir/synthetic-<preset>-<fmt>/      fmt: fp16, int8 (optimum-cli export openvino)
#
# Environment:
#   OV_DIR           where everything goes (default /work/cache/openvino)
#   OV_GENAI_VERSION openvino-genai to pin (default 2026.4.1.0, the issue's; it pins openvino
#                    and openvino-tokenizers of the same release)
#   MODELS_DIR       the synthetic checkpoints (default models/); missing ones are built
#   PYTHON           the project's Python, to build missing checkpoints (default .venv/bin/python)
#   PYTHON3          the interpreter that makes the venv (default python3)
#   OV_FORMATS       weight formats to export (default "fp16 int8"; "fp16" alone is what
#                    the default precision class is compared with, in half the time)
set -euo pipefail
cd "$(dirname "$0")/.."  # the repo root: models/ and .venv/ are relative to it

OV_DIR=${OV_DIR:-/work/cache/openvino}
GENAI_VERSION=${OV_GENAI_VERSION:-2026.4.1.0}
OPTIMUM_INTEL_VERSION=2.2.0   # with optimum 2.3.0, nncf 3.4.0, transformers 5.5.4
TORCH_VERSION=2.13.0          # the project's; the CPU wheel
MODELS_DIR=${MODELS_DIR:-models}
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON3=${PYTHON3:-python3}
read -r -a FORMATS <<< "${OV_FORMATS:-fp16 int8}"
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(gpt2 gpt2-large)
VENV="$OV_DIR/venv"
mkdir -p "$OV_DIR/ir"

make_venv() {
  # A venv of its own: optimum-intel pins its own transformers, and the driver
  # (bench/openvino_driver.py) must run against the pinned openvino-genai only.
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openvino_genai, optimum.intel" \
    2>/dev/null && return
  "$PYTHON3" -m venv "$VENV"
  nice -n 19 "$VENV/bin/python" -m pip install -q "openvino-genai==$GENAI_VERSION" \
    "optimum-intel[openvino]==$OPTIMUM_INTEL_VERSION" "torch==$TORCH_VERSION" \
    psutil  # the driver's memory readings (PSS)
  # optimum-intel pulls torchvision from PyPI, whose wheel needs the CUDA torch: with the CPU
  # torch its operators fail to register and transformers' import of it breaks the export.
  # Nothing here needs it (text models only).
  "$VENV/bin/python" -m pip uninstall -q -y torchvision
}

export_ir() {
  # $1: preset, $2: weight format (fp16 or int8). optimum-cli also converts the tokenizer
  # (openvino-tokenizers handles our byte-level BPE); the driver feeds token ids anyway.
  local preset=$1 fmt=$2 model="$MODELS_DIR/synthetic-$1" out="$OV_DIR/ir/synthetic-$1-$2"
  if [ ! -f "$model/config.json" ]; then
    nice -n 19 "$PYTHON" -m server.engine.synthetic build "$preset" --models-dir "$MODELS_DIR"
  fi
  [ -f "$out/openvino_model.xml" ] && return
  nice -n 19 "$VENV/bin/optimum-cli" export openvino -m "$model" \
    --task text-generation-with-past --weight-format "$fmt" "$out"
}

make_venv
for preset in "${PRESETS[@]}"; do
  for fmt in "${FORMATS[@]}"; do export_ir "$preset" "$fmt"; done
done
echo "OpenVINO reference ready in $OV_DIR:"
"$VENV/bin/python" -c "import openvino, openvino_genai; print('openvino', openvino.get_version()); print('openvino_genai', openvino_genai.__version__)"
du -sh "$OV_DIR"/ir/*
