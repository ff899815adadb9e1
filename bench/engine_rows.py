"""The rows of ``python -m bench engines``: which engine, which variant, how many streams.

Each engine variant gets one row per concurrency, in the order given: our server's variants
(``--ours LABEL=ASSIGNMENTS``: server environment on top of the closed-loop defaults), then
llama.cpp's GGUF types, then OpenVINO's weight formats. A row whose engine is not built is
still planned; the command skips it with the reason in the table.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

ENGINES = ("ours", "llama.cpp", "openvino")


@dataclass(frozen=True)
class EngineRow:
    """One closed loop: ``engine``'s ``variant`` at ``concurrency`` streams."""

    engine: str  # one of ENGINES
    variant: str  # ours: a label; llama.cpp: a GGUF type; openvino: a weight format
    concurrency: int
    env: tuple[tuple[str, str], ...] = field(default=())  # ours: server environment

    @property
    def name(self) -> str:
        """Folder-safe row name, e.g. ``ours-auto-c8``, ``llama.cpp-f16-c1``."""
        return f"{self.engine}-{self.variant}-c{self.concurrency}"


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``LABEL=NAME=VALUE NAME=VALUE`` -> (label, environment); ``auto=`` is the defaults."""
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise ValueError(f"variant {text!r}: write LABEL=ASSIGNMENTS, e.g. 'int8=DTYPE=int8'")
    env = []
    for word in shlex.split(rest):
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ValueError(f"variant {text!r}: {word!r} is not NAME=VALUE")
        env.append((name, value))
    return label, tuple(env)


def parse_concurrency(text: str) -> list[int]:
    """``1,8,32`` -> [1, 8, 32]; each at least 1."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"concurrency {text!r}: give positive integers, e.g. 1,8,32")
    return values


def plan_rows(concurrency: Sequence[int], ours: Sequence[str], quants: Sequence[str],
              formats: Sequence[str]) -> list[EngineRow]:
    """Every row, engine by engine and variant by variant, each at every concurrency."""
    rows = []
    for text in ours:
        label, env = parse_variant(text)
        rows += [EngineRow("ours", label, c, env) for c in concurrency]
    rows += [EngineRow("llama.cpp", q, c) for q in quants for c in concurrency]
    rows += [EngineRow("openvino", f, c) for f in formats for c in concurrency]
    return rows
