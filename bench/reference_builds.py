"""Where the yardstick engines' builds live (llama.cpp's, OpenVINO's): one folder each, outside
git, named by an option, an environment variable or a default; its artifacts named by preset
and weight format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def build_root(value: str | os.PathLike | None, env_var: str, default: Path) -> Path:
    """``value``, else $``env_var``, else ``default``."""
    return Path(value or os.environ.get(env_var) or default)


def artifact(root: Path, folder: str, preset: str, variant: str, choices: Sequence[str],
             kind: str, suffix: str = "") -> Path:
    """root/folder/synthetic-<preset>-<variant><suffix>; ValueError naming the choices when
    ``variant`` is not one of them."""
    if variant not in choices:
        raise ValueError(f"unknown {kind} {variant!r}; choose one of {', '.join(choices)}")
    return root / folder / f"synthetic-{preset}-{variant}{suffix}"
