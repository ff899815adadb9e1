"""Options several bench commands share (one definition, one default each)."""

from __future__ import annotations

import argparse
import os


def add_model_options(parser: argparse.ArgumentParser, dtype: str, threads: int,
                      threads_help: str = "torch threads") -> None:
    """--model, --models-dir, --dtype and --threads with this command's defaults."""
    parser.add_argument("--model", default="synthetic:gpt2-large")
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    parser.add_argument("--dtype", default=dtype)
    parser.add_argument("--threads", type=int, default=threads, help=threads_help)


def add_preset_options(parser: argparse.ArgumentParser, preset_help: str) -> None:
    """--preset (a synthetic preset every engine of a yardstick serves; $REF_PRESET) and
    --models-dir ($MODELS_DIR)."""
    parser.add_argument("--preset", default=os.environ.get("REF_PRESET", "gpt2-large"),
                        help=preset_help)
    parser.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
