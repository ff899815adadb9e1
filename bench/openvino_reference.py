"""OpenVINO GenAI as a reference (issue 31): where its build lives and how its driver runs.

The build is never part of the repo or CI: ``bench/build_openvino_reference.sh`` makes a venv
with ``openvino-genai`` pinned and exports the synthetic checkpoints to OpenVINO IR with
``optimum-cli export openvino``, all under ``OV_DIR`` (default /work/cache/openvino):

    OV_DIR/venv/bin/python
    OV_DIR/ir/synthetic-<preset>-<fmt>/openvino_model.xml      (fmt: fp16, int8)

OpenVINO ships no HTTP server as a Python package, so its rows run in-process:
``bench/openvino_driver.py`` (stdlib + openvino_genai) under that venv's Python, one
subprocess per row, writing one JSON result.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.reference_builds import artifact, build_root

DEFAULT_OV_DIR = Path("/work/cache/openvino")
BUILD_SCRIPT = "bench/build_openvino_reference.sh"
DRIVER = Path(__file__).resolve().parent / "openvino_driver.py"
FORMATS = ("fp16", "int8")


def ov_dir(value: str | os.PathLike | None = None) -> Path:
    """The reference folder: ``value``, else $OV_DIR, else /work/cache/openvino."""
    return build_root(value, "OV_DIR", DEFAULT_OV_DIR)


def venv_python(root: Path) -> Path:
    """The Python of the build script's venv under ``root``."""
    return root / "venv" / "bin" / "python"


def ir_path(root: Path, preset: str, fmt: str) -> Path:
    """The IR folder of synthetic ``preset`` with ``fmt`` weights under ``root``."""
    return artifact(root, "ir", preset, fmt, FORMATS, "weight format")


def missing(root: Path, preset: str, fmt: str) -> str:
    """Why the ``fmt`` rows cannot run and the command that builds what they need ("" if
    they can)."""
    needed = [venv_python(root), ir_path(root, preset, fmt) / "openvino_model.xml"]
    absent = [p for p in needed if not p.is_file()]
    if not absent:
        return ""
    return (f"OpenVINO reference not built (missing {', '.join(map(str, absent))}); build it "
            f"once, outside git, with: OV_DIR={root} bash {BUILD_SCRIPT} {preset}")


def driver_command(root: Path, preset: str, fmt: str, prompts: Path, concurrency: int,
                   rounds: int, seconds: float, new_tokens: int, threads: int,
                   out: Path) -> list[str]:
    """The driver's command line for one row (run from anywhere; paths absolute)."""
    return [str(venv_python(root)), str(DRIVER), "--ir", str(ir_path(root, preset, fmt)),
            "--prompts", str(prompts), "--concurrency", str(concurrency),
            "--rounds", str(rounds), "--seconds", f"{seconds:g}",
            "--new-tokens", str(new_tokens), "--threads", str(threads), "--out", str(out)]
