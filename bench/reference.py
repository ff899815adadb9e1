"""The yardstick (issue 13): our server and llama.cpp's, one after the other on this box, each
driven by our own Locust suite with the OpenAI mix; run folders, a comparison, one table.

    python -m bench reference                       # synthetic:gpt2-large, 8 users, 150 s
    python -m bench reference --preset gpt2 --duration 30 --lone-user
    python -m bench reference --ours defaults= --ours "int8=--dtype int8"

Rows, in order, for each user count (``--users``, plus 1 with ``--lone-user``): every
``--ours`` variant served by ``scripts/loadtest.py --mix openai`` (Gunicorn, memory read from
/proc), then llama-server (``-t 2 --parallel 8 -c 8192``) with each GGUF of ``--quants``
under ``locust -f locustfiles --headless --target openai --mix openai`` (its memory read
from /proc via its pidfile). Writes results/reference-<UTC stamp>/: NN-<row>/ run folders,
compare-u<N>/ (``python -m analysis compare``), table.md, reference.json (host, CPU model,
llama.cpp version, rows) and commands.sh (every command, in order). The llama.cpp build lives
outside git (bench/llama_reference.py says where and how to build it); never run in CI.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

from bench.llama_reference import (
    QUANTS,
    LlamaSettings,
    check_built,
    gguf_path,
    llama_dir,
    server_binary,
    server_command,
)
from bench.options import add_preset_options
from bench.reference_record import Record, render_report, utc_now
from bench.reference_rows import Row, llama_locust_command, ours_command, parse_variant, plan_rows
from bench.reference_table import read_row, render_rows
from harness.llama_server import LlamaServer
from harness.locust_process import LocustProcess, locust_env
from harness.processes import free_port
from harness.run_folder import RESULTS, utc_stamp

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the issue's comparison on the default heavy model)."""
    p = argparse.ArgumentParser(prog="python -m bench reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_options(p, "synthetic preset served by both (its GGUFs must be built)")
    p.add_argument("--llama-dir", type=Path, default=llama_dir(),
                   help="the llama.cpp build and GGUFs ($LLAMA_DIR, default /work/cache/llama)")
    p.add_argument("--llama-server", type=Path, help="llama-server binary (default: in "
                   "--llama-dir; $LLAMA_SERVER)", default=os.environ.get("LLAMA_SERVER"))
    p.add_argument("--users", type=int, default=8, help="concurrent users (spawned at once)")
    p.add_argument("--lone-user", action="store_true", help="also every row with 1 user")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of load per row")
    p.add_argument("--stop-timeout", type=float, default=120.0,
                   help="seconds in-flight requests get to finish after the load stops")
    p.add_argument("--ours", action="append", metavar="LABEL=ARGS",
                   help="a variant of our server: label, then scripts/loadtest.py options "
                        "(repeatable; default: defaults=, i.e. the server's defaults)")
    p.add_argument("--no-ours", action="store_true", help="only the llama.cpp rows")
    p.add_argument("--quants", default=",".join(QUANTS),
                   help=f"llama.cpp GGUF types, comma-separated ({', '.join(QUANTS)}; "
                        "empty: no llama.cpp rows)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="llama-server -t (default: every core we may use, as our server does; "
                        "2 on the issue's box)")
    p.add_argument("--out", type=Path, help="default: results/reference-<UTC timestamp>/")
    args = p.parse_args(argv)
    variants = [] if args.no_ours else (args.ours or ["defaults="])
    args.rows = plan_rows([args.users, *([1] if args.lone_user else [])],
                               [parse_variant(v) for v in variants],
                               [q for q in args.quants.split(",") if q])
    return args


def check_reference(args: argparse.Namespace) -> Path:
    """The llama-server binary; exits with how-to-build when it or a needed GGUF is absent."""
    binary = args.llama_server or server_binary(args.llama_dir)
    ggufs = {gguf_path(args.llama_dir, args.preset, r.quant) for r in args.rows if r.quant}
    if ggufs:
        check_built([Path(binary), *sorted(ggufs)], args.preset, args.llama_dir)
    return Path(binary)


def run_logged(cmd: list[str], record: Record) -> int:
    """Record ``cmd`` in commands.sh, print it, run it from the repo; its exit code."""
    record.command(cmd)
    return subprocess.run(cmd, cwd=REPO).returncode


def run_ours(args: argparse.Namespace, row: Row, run_dir: Path,
             record: Record) -> None:
    """Serve and load one variant of our server through the run script."""
    code = run_logged(ours_command(args, row, run_dir), record)
    require_requests(row, run_dir, code, "gunicorn.log")
    record.annotate_run(run_dir, row, {"server_kind": "ours"})


def require_requests(row: Row, run_dir: Path, code: int, log: str) -> None:
    """Stop the reference when a row recorded no requests: a table without it would mislead."""
    if not (run_dir / "requests.csv").exists():
        raise SystemExit(f"row {row.name} produced no requests.csv (exit {code}); "
                         f"see {run_dir / log}")


def run_llama(args: argparse.Namespace, row: Row, run_dir: Path, binary: Path,
              record: Record) -> None:
    """Serve one GGUF with llama-server and load it with the suite (--target openai)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = LlamaSettings(threads=args.threads)
    gguf = gguf_path(args.llama_dir, args.preset, row.quant)
    command = server_command(binary, gguf, free_port(), f"synthetic-{args.preset}-{row.quant}",
                             settings)
    api_key = secrets.token_urlsafe(32)
    started_at = utc_now()
    with LlamaServer(command, run_dir, api_key) as server:
        record.command(command, env_note="LLAMA_API_KEY=<random>")
        record.write_llama_run(args, row, run_dir, command, settings, started_at, None)
        locust = llama_locust_command(args, row, run_dir, server.url, server.pidfile)
        record.command(locust)
        with LocustProcess(locust, locust_env(api_key)) as load:
            code = load.wait()
    require_requests(row, run_dir, code, "llama-server.log")
    record.write_llama_run(args, row, run_dir, command, settings, started_at, utc_now())
    run_logged([sys.executable, "-m", "analysis", str(run_dir)], record)


def write_outputs(args: argparse.Namespace, out: Path, runs: list[tuple[Row, Path]],
                  record: Record) -> str:
    """Compare the runs of each user count, then write and return table.md."""
    for users in sorted({row.users for row, _ in runs}, reverse=True):
        folders = [str(path) for row, path in runs if row.users == users]
        if len(folders) > 1:
            run_logged([sys.executable, "-m", "analysis", "compare", *folders,
                        "--out", str(out / f"compare-u{users}")], record)
    rows = [read_row(path) for _, path in runs if (path / "requests.csv").exists()]
    text = render_report(args, record.host, record.llama_version, render_rows(rows),
                         record.loads)
    (out / "table.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Run every row one after the other, then the comparisons and the table."""
    args = parse_args(argv)
    binary = check_reference(args)
    # Absolute: the run script's Gunicorn runs from the repo root, the paths must not move.
    out = (args.out or RESULTS / f"reference-{utc_stamp()}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== reference folder {out}", flush=True)
    record = Record(out, args, binary, sys.argv[1:] if argv is None else argv)
    runs = []
    for i, row in enumerate(args.rows, 1):
        run_dir = out / f"{i:02d}-{row.name}"
        print(f"\n=== reference row {i}/{len(args.rows)}: {row.name}", flush=True)
        record.row_started(row)
        if row.server == "ours":
            run_ours(args, row, run_dir, record)
        else:
            run_llama(args, row, run_dir, binary, record)
        runs.append((row, run_dir))
    text = write_outputs(args, out, runs, record)
    record.save()
    print("\n" + text + f"\n== reference done: {out / 'table.md'}", flush=True)
    return 0
