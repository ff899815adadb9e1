"""Run the benchmark matrix and write results/bench-<UTC timestamp>/.

    python -m bench matrix                              # every row, synthetic:gpt2-large
    python -m bench matrix --model synthetic:tiny --rows naive,batch-bf16 --warmup 2 --seconds 5

Steps: measure the roofline (``python -m bench roofline``) while no server runs; write
prompts of exactly ``--prompt-tokens`` tokens; for each row start the project's run script
(``scripts/loadtest.py``) with the benchmark user (``locustfiles/_bench.py``), the row's
settings, the same users and the same duration, into ``<NN>-<row>/``; add the row to its
run.json under
"bench"; then ``python -m analysis compare`` all runs into ``comparison/`` and print and
save the table (table.md, table.csv) with bench.json (what ran). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from bench import roofline as roofline_probe
from bench.matrix import ROWS, Row, select
from bench.prompts import write_prompts
from bench.table import bench_frame, bench_row, notes, render_table
from harness.run_folder import RESULTS, update_record, utc_stamp
from locustfiles.inputs import DATA_DIR
from server.engine.hardware import describe, fingerprint_subprocess

REPO = Path(__file__).resolve().parent.parent
BENCH_LOCUSTFILE = "locustfiles/_bench.py"
BENCH_NEW_TOKENS = 64  # BenchUser.max_new_tokens in that file (not imported: it loads gevent)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the issue's load on the default heavy model)."""
    p = argparse.ArgumentParser(prog="python -m bench matrix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("MODEL", "synthetic:gpt2-large"))
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--rows", default="", help="comma-separated row names (default: all: "
                   + ", ".join(r.name for r in ROWS) + ")")
    p.add_argument("--users", type=int, default=10, help="closed-loop users, no think time")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--warmup", type=float, default=180.0,
                   help="seconds of load before the measured window (the naive row needs one "
                        "full cycle: 10 users x ~17 s)")
    p.add_argument("--seconds", type=float, default=120.0, help="measured window, seconds")
    p.add_argument("--stop-timeout", type=float, default=600.0,
                   help="seconds in-flight requests get to finish after the load stops")
    p.add_argument("--roofline", type=Path, help="reuse this roofline.json (default: measure)")
    p.add_argument("--roofline-args", default="",
                   help="extra options of python -m bench roofline, e.g. '--seconds 0.5'")
    p.add_argument("--run-analysis", action=argparse.BooleanOptionalAction, default=True,
                   help="per-run charts and report.md (python -m analysis RUN)")
    p.add_argument("--out", type=Path, help="default: results/bench-<UTC timestamp>/")
    args = p.parse_args(argv)
    args.selected = select([n for n in args.rows.split(",") if n])
    return args


def measure_roofline(args: argparse.Namespace, out: Path) -> roofline_probe.Roofline:
    """Copy the given roofline.json, or measure one now (before any server starts)."""
    target = out / "roofline.json"
    if args.roofline:
        target.write_text(Path(args.roofline).read_text())
    else:
        subprocess.run([sys.executable, "-m", "bench", "roofline", "--model", args.model,
                        "--models-dir", args.models_dir, "--out", str(target),
                        *args.roofline_args.split()], cwd=REPO, check=True)
    return roofline_probe.load(target)


def run_row(args: argparse.Namespace, index: int, row: Row, out: Path, prompts: Path) -> Path:
    """Serve and load one row through the run script; return its run folder."""
    run_dir = out / f"{index:02d}-{row.name}"
    cmd = [sys.executable, "scripts/loadtest.py", "--model", args.model,
           "--models-dir", args.models_dir, *row.loadtest_args(),
           "--users", str(args.users), "--spawn-rate", str(args.users),
           "--duration", f"{args.warmup + args.seconds:g}",
           "--stop-timeout", f"{args.stop_timeout:g}", "--locustfile", BENCH_LOCUSTFILE,
           "--user-classes", "BenchUser",
           "--label", row.name, "--run-dir", str(run_dir),
           *([] if args.run_analysis else ["--no-analysis"])]
    env = {**os.environ, **row.server_env(), "LOCUST_BENCH_PROMPTS": str(prompts)}
    print(f"\n=== bench row {index}/{len(args.selected)}: {row.name} ({row.setup()})", flush=True)
    code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if not (run_dir / "requests.csv").exists():
        raise SystemExit(f"row {row.name} produced no requests.csv (exit {code}); "
                         f"see {run_dir / 'gunicorn.log'}")
    update_record(run_dir, bench={"row": row.name, **asdict(row),
                                  "server_env": row.server_env(), "warmup_s": args.warmup,
                                  "measure_s": args.seconds, "prompt_tokens": args.prompt_tokens})
    return run_dir


def write_outputs(args: argparse.Namespace, out: Path, runs: list[Path],
                  roofline: roofline_probe.Roofline) -> str:
    """Compare the runs, then build, save and return the table (Markdown)."""
    if len(runs) > 1:
        subprocess.run([sys.executable, "-m", "analysis", "compare", *map(str, runs),
                        "--out", str(out / "comparison")], cwd=REPO, check=False)
    frame = bench_frame([bench_row(r, args.warmup, args.seconds) for r in runs], roofline)
    frame.to_csv(out / "table.csv")
    setups = {row.name: row.setup() for row in args.selected}
    caveats = notes(frame, args.warmup)
    text = "\n".join([
        f"# Benchmark: {args.model}, {args.users} users, {args.prompt_tokens} prompt tokens -> "
        f"{BENCH_NEW_TOKENS} new tokens, greedy",
        "",
        f"Host: {describe(fingerprint_subprocess())}.",
        "",
        f"Steady-state window: {args.seconds:g} s after a {args.warmup:g} s warm-up. "
        "Ratios are against the first row. Limit = roofline decode limit at the row's mean "
        "batch (roofline.md).",
        "",
        render_table(frame, setups),
        *(["Notes:", "", *(f"- {n}" for n in caveats), ""] if caveats else []),
    ])
    (out / "table.md").write_text(text)
    (out / "roofline.md").write_text(roofline_probe.render(roofline))
    return text


def main(argv: list[str] | None = None) -> int:
    """Run every selected row, then write the comparison and the table."""
    args = parse_args(argv)
    out = args.out or RESULTS / f"bench-{utc_stamp()}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"== bench folder {out}", flush=True)
    roofline = measure_roofline(args, out)
    prompts = out / "prompts.jsonl"
    write_prompts(args.model, args.models_dir, DATA_DIR / "prompts.jsonl", prompts,
                  args.prompt_tokens)
    (out / "bench.json").write_text(json.dumps(
        {"model": args.model, "users": args.users, "warmup_s": args.warmup,
         "measure_s": args.seconds, "prompt_tokens": args.prompt_tokens,
         "new_tokens": BENCH_NEW_TOKENS, "rows": [asdict(r) for r in args.selected],
         "host": fingerprint_subprocess()},
        indent=2) + "\n")
    runs = [run_row(args, i, row, out, prompts) for i, row in enumerate(args.selected, 1)]
    text = write_outputs(args, out, runs, roofline)
    print("\n" + text + f"\n== bench done: {out / 'table.md'}", flush=True)
    return 0
