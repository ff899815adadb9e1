"""How each engine's row of ``python -m bench engines`` runs (bench/engines.py says what
the rows are): our Gunicorn and llama-server over HTTP under Locust's closed-loop user,
OpenVINO GenAI in-process through its driver; commands.sh records every command."""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
from pathlib import Path

from bench import openvino_reference as ov
from bench.command_log import Commands
from bench.engine_rows import EngineRow
from bench.engine_table import EngineResult, from_driver, from_run_folder, skipped
from bench.llama_reference import LlamaSettings, gguf_path, server_binary, server_command
from harness.gunicorn_process import GunicornServer
from harness.llama_server import LlamaServer
from harness.locust_process import LocustProcess, locust_env, suite_command
from harness.processes import free_port

REPO = Path(__file__).resolve().parent.parent
LOCUSTFILE = "bench/closed_loop_user.py"
USER_CLASS = "CompletionsLoopUser"


def locust_row(args: argparse.Namespace, row: EngineRow, run_dir: Path, url: str,
               pidfile: Path, api_key: str, commands: Commands, prompts: Path,
               body: dict | None = None) -> EngineResult:
    """Load one served row with the closed-loop user; its result from the run folder."""
    c = row.concurrency
    limit = ["-t", f"{args.seconds:g}s", "--stop-timeout", "600"] if args.seconds > 0 else \
        ["-t", "3600s"]
    cmd = suite_command(LOCUSTFILE, url, run_dir, row.name, [
        "--headless", "-u", str(c), "-r", str(c), *limit, "--server-pidfile", str(pidfile),
        USER_CLASS])
    extra = {"LOCUST_BENCH_PROMPTS": str(prompts), "LOCUST_BENCH_TOKENS": str(args.new_tokens),
             "LOCUST_BENCH_REQUESTS": str(args.rounds if args.seconds <= 0 else 0),
             "LOCUST_LOOP_BODY": json.dumps(body or {})}
    commands.add(cmd, " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items()))
    run_dir.mkdir(parents=True, exist_ok=True)
    with LocustProcess(cmd, locust_env(api_key, **extra), log_path=run_dir / "locust.log") as lc:
        code = lc.wait()
    if not (run_dir / "requests.csv").exists():
        raise SystemExit(f"row {row.name}: no requests.csv (Locust exit {code}); see "
                         f"{run_dir / 'locust.log'}")
    return from_run_folder(row, run_dir, args.new_tokens)


def ours_env(args: argparse.Namespace, key: str, request_log: str,
             extra: dict[str, str]) -> dict[str, str]:
    """Our server's environment for a yardstick: the preset, exact lengths (``IGNORE_EOS``),
    one key, no rate limits, every prompt read (no prefix cache), then ``extra``."""
    return {"MODEL": f"synthetic:{args.preset}", "MODELS_DIR": args.models_dir,
            "IGNORE_EOS": "1", "API_KEYS": key, "REQUEST_LOG": request_log,
            "GUNICORN_ACCESSLOG": "", "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "",
            "PREFIX_CACHE_ROWS": "0", **extra}


def add_gunicorn(commands: Commands, workers: int, env: dict[str, str]) -> None:
    """Record our server's command line with its environment (the key left out)."""
    commands.add(["gunicorn", "-c", "gunicorn.conf.py", "--workers", str(workers)],
                 " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "API_KEYS"))


def llama_command(args: argparse.Namespace, quant: str, parallel: int) -> list[str] | str:
    """llama-server's command for ``quant`` with ``parallel`` slots of the prompt and answer
    rounded up to 256 tokens (or ``--slot-ctx``), or why it cannot run (not built)."""
    binary, gguf = server_binary(args.llama_dir), gguf_path(args.llama_dir, args.preset, quant)
    absent = [str(p) for p in (binary, gguf) if not p.is_file()]
    if absent:
        return (f"llama.cpp not built (missing {', '.join(absent)}); build it with: "
                f"LLAMA_DIR={args.llama_dir} bash bench/build_llama_reference.sh {args.preset}")
    slot = args.slot_ctx or -(-(args.prompt_tokens + args.new_tokens) // 256) * 256
    settings = LlamaSettings(args.threads, parallel, parallel * slot)
    return server_command(binary, gguf, free_port(), f"synthetic-{args.preset}-{quant}",
                          settings)


def run_ours(args: argparse.Namespace, rows: list[EngineRow], out: Path, commands: Commands,
             prompts: Path, index: dict[str, int]) -> list[EngineResult]:
    """One Gunicorn for a variant's rows (they share its environment), each row loaded."""
    key = secrets.token_urlsafe(32)
    workdir = out / f"ours-{rows[0].variant}"
    # The request log names each refusal's check (its "error": overloaded:forecast, ...).
    env = ours_env(args, key, str((workdir / "server_requests.jsonl").resolve()),
                   dict(rows[0].env))
    workdir.mkdir(parents=True, exist_ok=True)
    add_gunicorn(commands, args.workers, env)
    with GunicornServer(workdir, env, args.workers) as server:
        return [locust_row(args, row, out / f"{index[row.name]:02d}-{row.name}", server.url,
                           server.pidfile, key, commands, prompts) for row in rows]


def run_llama(args: argparse.Namespace, row: EngineRow, run_dir: Path, commands: Commands,
              prompts: Path) -> EngineResult:
    """llama-server with --parallel c slots, loaded by the closed-loop user."""
    command = llama_command(args, row.variant, row.concurrency)
    if isinstance(command, str):
        return skipped(row, command)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    commands.add(command, "LLAMA_API_KEY=<random>")
    with LlamaServer(command, run_dir, key) as server:
        return locust_row(args, row, run_dir, server.url, server.pidfile, key, commands,
                          prompts, body={"cache_prompt": False})


def run_openvino(args: argparse.Namespace, row: EngineRow, run_dir: Path, commands: Commands,
                 ids: Path) -> EngineResult:
    """The in-process driver under OpenVINO's venv; its result JSON."""
    reason = ov.missing(args.ov_dir, args.preset, row.variant)
    if reason:
        return skipped(row, reason)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run_dir / "result.json"
    cmd = ov.driver_command(args.ov_dir, args.preset, row.variant, ids, row.concurrency,
                            args.rounds, args.seconds, args.new_tokens, args.threads, result)
    commands.add(cmd)
    with open(run_dir / "driver.log", "wb") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code or not result.exists():
        raise SystemExit(f"row {row.name}: driver exit {code}; see {run_dir / 'driver.log'}")
    return from_driver(row, json.loads(result.read_text()))
