"""The reference's rows and the exact command lines that run them (pure: no processes)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.llama_reference import QUANTS
from harness.locust_process import suite_command


@dataclass(frozen=True)
class Row:
    """One server setting under one load: ours (a loadtest.py variant) or llama.cpp (a GGUF)."""

    name: str
    server: str  # "ours" or "llama.cpp"
    users: int
    loadtest_args: tuple[str, ...] = ()  # ours: extra scripts/loadtest.py options
    quant: str = ""  # llama.cpp: the GGUF type


def parse_variant(value: str) -> tuple[str, tuple[str, ...]]:
    """``"int8=--dtype int8"`` -> ("int8", ("--dtype", "int8")); the label must be non-empty."""
    label, sep, options = value.partition("=")
    if not sep or not label.strip():
        raise ValueError(f"--ours wants LABEL=LOADTEST_OPTIONS (e.g. 'int8=--dtype int8'), "
                         f"got {value!r}")
    return label.strip(), tuple(shlex.split(options))


def plan_rows(user_counts: Sequence[int], variants: Sequence[tuple[str, tuple[str, ...]]],
              quants: Sequence[str]) -> list[Row]:
    """Per user count: each of our variants, then llama.cpp with each GGUF type."""
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        raise ValueError(f"unknown GGUF types {unknown}; choose from {', '.join(QUANTS)}")
    rows = []
    for users in user_counts:
        rows += [Row(f"ours-{label}-u{users}", "ours", users, options)
                 for label, options in variants]
        rows += [Row(f"llama-{q}-u{users}", "llama.cpp", users, quant=q) for q in quants]
    return rows


def load_options(args: argparse.Namespace, row: Row) -> list[str]:
    """The load both servers get: users spawned at once, duration, drain time."""
    return ["-u", str(row.users), "-r", str(row.users), "-t", f"{args.duration:g}s",
            "--stop-timeout", f"{args.stop_timeout:g}"]


def ours_command(args: argparse.Namespace, row: Row, run_dir: Path) -> list[str]:
    """scripts/loadtest.py serving ``synthetic:<preset>`` with the OpenAI mix into ``run_dir``."""
    return [sys.executable, "scripts/loadtest.py", "--model", f"synthetic:{args.preset}",
            "--models-dir", str(args.models_dir), "--mix", "openai",
            "--users", str(row.users), "--spawn-rate", str(row.users),
            "--duration", f"{args.duration:g}", "--stop-timeout", f"{args.stop_timeout:g}",
            "--label", row.name, "--run-dir", str(run_dir), *row.loadtest_args]


def llama_locust_command(args: argparse.Namespace, row: Row, run_dir: Path, host: str,
                         pidfile: Path) -> list[str]:
    """Headless Locust, --target openai, against llama-server at ``host`` into ``run_dir``."""
    return suite_command("locustfiles", host, run_dir, row.name, [
        "--headless", "--target", "openai", "--mix", "openai", *load_options(args, row),
        "--server-pidfile", str(pidfile)])
