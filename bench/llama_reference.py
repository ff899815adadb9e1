"""llama.cpp's server as the reference (issue 13): where its build lives and its command.

The build is never part of the repo or CI: ``bench/build_llama_reference.sh`` compiles
``llama-server`` from the llama.cpp that llama-cpp-python's PyPI sdist vendors and converts
the synthetic checkpoints to GGUF, all under ``LLAMA_DIR`` (default /work/cache/llama):

    LLAMA_DIR/build/bin/llama-server
    LLAMA_DIR/gguf/synthetic-<preset>-<quant>.gguf      (quant: f16, q8_0)

Process control (start, ready, stop) is harness/llama_server.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.reference_builds import artifact, build_root

DEFAULT_LLAMA_DIR = Path("/work/cache/llama")
BUILD_SCRIPT = "bench/build_llama_reference.sh"
QUANTS = ("f16", "q8_0")


class ReferenceMissing(SystemExit):
    """The llama.cpp build or a GGUF is absent; the message says how to build it."""


@dataclass(frozen=True)
class LlamaSettings:
    """How llama-server is run: the issue's settings (all cores, 8 slots of 1,024 tokens)."""

    threads: int = 2
    parallel: int = 8
    ctx_size: int = 8192


def llama_dir(value: str | os.PathLike | None = None) -> Path:
    """The reference folder: ``value``, else $LLAMA_DIR, else /work/cache/llama."""
    return build_root(value, "LLAMA_DIR", DEFAULT_LLAMA_DIR)


def server_binary(root: Path) -> Path:
    """Where the build script puts llama-server under ``root``."""
    return root / "build" / "bin" / "llama-server"


def gguf_path(root: Path, preset: str, quant: str) -> Path:
    """The GGUF of synthetic ``preset`` at ``quant`` (f16 or q8_0) under ``root``."""
    return artifact(root, "gguf", preset, quant, QUANTS, "GGUF type", ".gguf")


def check_built(paths: list[Path], preset: str, root: Path) -> None:
    """Raise ReferenceMissing naming every absent file and the command that builds them."""
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return
    listed = "\n".join(f"  {p}" for p in missing)
    raise ReferenceMissing(
        f"llama.cpp reference not built; missing:\n{listed}\n"
        f"Build it once (outside git, 20-45 min on 2 cores, needs PyPI) with:\n"
        f"  LLAMA_DIR={root} bash {BUILD_SCRIPT} {preset}\n"
        f"or point to an existing build with --llama-dir / $LLAMA_DIR "
        f"(or --llama-server for the binary alone).")


def server_command(binary: Path, gguf: Path, port: int, alias: str,
                   settings: LlamaSettings = LlamaSettings()) -> list[str]:
    """llama-server's command line on 127.0.0.1:``port`` (the API key goes in the environment,
    $LLAMA_API_KEY, so that it is never in a recorded command)."""
    return [str(binary), "-m", str(gguf), "--alias", alias,
            "-t", str(settings.threads), "--parallel", str(settings.parallel),
            "-c", str(settings.ctx_size), "--host", "127.0.0.1", "--port", str(port)]
