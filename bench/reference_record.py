"""What the reference ran and where: host and CPU model, commands.sh, run.json, reference.json."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.command_log import Commands
from bench.llama_reference import LlamaSettings, gguf_path
from bench.reference_rows import Row
from harness.provenance import git_commit
from harness.run_folder import RUN_JSON, read_record, update_record
from harness.run_record import HostFacts
from server.engine.hardware import cpu_facts, cpu_flags

REPO = Path(__file__).resolve().parent.parent
# CPU flags that decide which kernels either server can use.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")


def utc_now() -> str:
    """ISO-8601 UTC time, seconds precision."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu_model(lscpu_text: str) -> str:
    """The "Model name:" of ``lscpu`` output ("" when absent)."""
    for line in lscpu_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return ""


def host_record() -> dict[str, Any]:
    """This host: lscpu's CPU model and vendor, x86 family and model, cores we may use, RAM,
    the kernel-relevant ISA."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    flags = cpu_flags()
    vendor = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                   if line.startswith("Vendor ID")), "")
    return {"cpu_model": cpu_model(lscpu), "cpu_vendor": vendor,
            "cpu_id": cpu_facts()["cpu_id"],
            "cores": len(os.sched_getaffinity(0)),
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "isa": [f for f in ISA_FLAGS if f in flags]}


def llama_version(binary: Path) -> str:
    """What ``llama-server --version`` says (build number, commit, compiler)."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return " ".join((done.stdout + done.stderr).split())


class Record:
    """The reference folder's records, written as the rows run."""

    def __init__(self, out: Path, args: argparse.Namespace, binary: Path,
                 argv: list[str] | None = None) -> None:
        """``argv``: the command's options as given (default: this process's)."""
        self.out, self.args = out, args
        self.host = host_record()
        self.llama_version = llama_version(binary) if any(r.quant for r in args.rows) else ""
        self.loads: dict[str, float] = {}  # row name -> 1-minute load average at its start
        self.commands = Commands(out / "commands.sh", "reference",
                                 sys.argv[1:] if argv is None else list(argv),
                                 f"CPU: {self.host['cpu_model']}, {self.host['cores']} cores")

    def command(self, cmd: list[str], env_note: str = "") -> None:
        """Append ``cmd`` (shell-quoted) to commands.sh and print it."""
        self.commands.add(cmd, env_note)

    def row_started(self, row: Row) -> None:
        """Note the box's 1-minute load average as ``row`` starts (others' work skews rows)."""
        self.loads[row.name] = round(os.getloadavg()[0], 2)

    def annotate_run(self, run_dir: Path, row: Row, extra: dict[str, Any]) -> None:
        """Add the row, ``extra`` and this host's CPU to the run's run.json (if it exists)."""
        if not (run_dir / RUN_JSON).exists():
            return
        known = (read_record(run_dir).host or HostFacts()).model_dump(exclude_none=True)
        update_record(run_dir, **extra, host={**self.host, **known},
                      reference={**asdict(row), "load_1m_at_start": self.loads.get(row.name)})

    def write_llama_run(self, args: argparse.Namespace, row: Row, run_dir: Path,
                        command: list[str], settings: LlamaSettings, started_at: str,
                        ended_at: str | None) -> None:
        """Add a llama.cpp row's server facts to the run.json the Locust suite wrote."""
        update_record(run_dir, **{
            "label": row.name, "server_kind": "llama.cpp", "model": f"synthetic:{args.preset}",
            "dtype": row.quant, "gguf": gguf_path(args.llama_dir, args.preset, row.quant).name,
            "workers": 1, "threads": settings.threads, "parallel": settings.parallel,
            "ctx_size": settings.ctx_size, "users": row.users, "spawn_rate": row.users,
            "mix": "openai", "target": "openai", "duration_s": args.duration,
            "git_commit": git_commit(), "host": self.host,
            "versions": {"llama.cpp": self.llama_version}, "command": shlex.join(command),
            "reference": {**asdict(row), "load_1m_at_start": self.loads.get(row.name)},
            "started_at": started_at, "ended_at": ended_at})

    def save(self) -> None:
        """reference.json: settings, host, llama.cpp version and rows of the whole reference."""
        args = self.args
        record = {"preset": args.preset, "duration_s": args.duration,
                  "stop_timeout_s": args.stop_timeout, "host": self.host,
                  "llama_dir": str(args.llama_dir), "llama_version": self.llama_version,
                  "git_commit": git_commit(), "load_1m_at_start": self.loads,
                  "rows": [asdict(r) for r in args.rows],
                  "finished_at": utc_now()}
        (self.out / "reference.json").write_text(json.dumps(record, indent=2) + "\n")


def load_note(loads: dict[str, float], cores: int) -> str:
    """The 1-minute load average at each row's start, with a warning when the box was busy
    (load above half its cores: other work shared the CPU, so the ratios are not clean)."""
    if not loads:
        return ""
    listed = ", ".join(f"{name} {load:g}" for name, load in loads.items())
    busy = [name for name, load in loads.items() if load > cores / 2]
    warning = (f" **Busy box** ({len(busy)} of {len(loads)} rows started with load > "
               f"{cores / 2:g}): rerun on a quiet machine before judging." if busy else "")
    return f"1-minute load average at each row's start: {listed}.{warning}"


def render_report(args: argparse.Namespace, host: dict[str, Any], version: str,
                  rows_table: str, loads: dict[str, float] | None = None) -> str:
    """table.md: what ran, on which CPU, how busy the box was, then the table."""
    note = load_note(loads or {}, host["cores"])
    return "\n".join([
        f"# Reference: ours vs llama.cpp, synthetic:{args.preset}, OpenAI mix",
        "",
        f"CPU: {host['cpu_model'] or 'unknown'} ({host['cpu_vendor']}), {host['cores']} cores, "
        f"{host['ram_gb']} GB RAM, ISA {', '.join(host['isa']) or 'n/a'}. llama.cpp: "
        f"{version or 'not run'}. Each row: {args.duration:g} s of load, then up to "
        f"{args.stop_timeout:g} s for in-flight requests; rows ran one after the other. "
        "Synthetic weights: the text is meaningless, the compute and memory are real.",
        "",
        "Ratios are against the first llama.cpp row with as many users (tok/s: higher is "
        "better; TTFT: lower is better; PSS vs ref RSS: our peak total PSS / llama-server's "
        "peak RSS, lower is better). Exact commands: commands.sh.",
        "",
        *([note, ""] if note else []),
        rows_table, ""])
