"""The engines on the same work (issue 31): a closed loop of equal lengths for our server,
llama.cpp's server and OpenVINO GenAI, one after the other on this box, in one command.

    python -m bench engines                                  # gpt2-large, c = 1, 8, 32
    python -m bench engines --preset gpt2 --concurrency 1,2 --rounds 1 --new-tokens 16
    python -m bench engines --ours auto= --ours "int8=DTYPE=int8 ALLOW_INT8=1"

At each concurrency c, c streams each send a prompt of exactly --prompt-tokens tokens and get
exactly --new-tokens new tokens (greedy, ignore_eos), the next as soon as the last answer
ended, for --rounds requests each (or until --seconds passed). Rows, in order:

* ours, each --ours variant: one Gunicorn (server defaults plus the variant's environment;
  PREFIX_CACHE_ROWS=0), loaded over HTTP by Locust (bench/closed_loop_user.py: streamed
  /v1/completions with ignore_eos) once per c; memory: the process tree's PSS (memory.csv);
* llama.cpp, each --quants GGUF: llama-server -t THREADS --parallel c -c c x slot context,
  the same Locust user (cache_prompt off); skipped, naming the build command, without a build;
* openvino, each --formats IR: in-process, no HTTP (bench/openvino_driver.py under OpenVINO's
  own venv; ContinuousBatchingPipeline, THREADS threads, max_num_seqs = c), which favours
  it; the same prompts as token ids; skipped, naming the build command, without a build.

Writes results/engines-<UTC>/: NN-<row>/ (Locust run folders or the driver's result.json),
prompts.jsonl and prompt_ids.jsonl, table.md, engines.json (host: lscpu model name, ISA;
versions; settings; rows) and commands.sh. Never in CI; measure on a quiet box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import openvino_reference as ov
from bench.command_log import Commands
from bench.engine_rows import parse_concurrency, plan_rows
from bench.engine_runs import run_llama, run_openvino, run_ours
from bench.engine_table import EngineResult, render, to_json
from bench.llama_reference import llama_dir, server_binary
from bench.options import add_preset_options
from bench.prompts import write_prompts
from bench.reference_record import host_record, llama_version
from harness.provenance import git_commit
from harness.run_folder import RESULTS, utc_stamp
from locustfiles.inputs import DATA_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the issue's closed loop on the default heavy model)."""
    p = argparse.ArgumentParser(prog="python -m bench engines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_options(p, "synthetic preset served by every engine")
    p.add_argument("--concurrency", type=parse_concurrency, default=[1, 8, 32],
                   help="streams per row, comma-separated (default 1,8,32)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="requests per stream")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="instead of --rounds: streams send until this many seconds passed")
    p.add_argument("--ours", action="append", metavar="LABEL=ASSIGNMENTS",
                   help="a variant of our server: a label, then server environment "
                        "(repeatable; default auto=, the server's defaults)")
    p.add_argument("--no-ours", action="store_true", help="no rows of our server")
    p.add_argument("--workers", type=int, default=1, help="our Gunicorn workers")
    p.add_argument("--quants", default="f16", help="llama.cpp GGUF types (f16, q8_0; "
                   "comma-separated; empty: no llama.cpp rows)")
    p.add_argument("--formats", default=",".join(ov.FORMATS), help="OpenVINO IR weight "
                   "formats (fp16, int8; comma-separated; empty: no OpenVINO rows)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="llama-server -t and OpenVINO's INFERENCE_NUM_THREADS (default: "
                        "every core we may use, as our server does)")
    p.add_argument("--slot-ctx", type=int, default=0, help="llama-server context per slot "
                   "(0: prompt + new tokens rounded up to 256)")
    p.add_argument("--llama-dir", type=Path, default=llama_dir())
    p.add_argument("--ov-dir", type=Path, default=ov.ov_dir())
    p.add_argument("--out", type=Path, help="default: results/engines-<UTC timestamp>/")
    args = p.parse_args(argv)
    if args.rounds < 1 and args.seconds <= 0:
        p.error("give --rounds >= 1 or --seconds > 0")
    split = lambda text: [v for v in text.split(",") if v]  # noqa: E731
    args.rows = plan_rows(args.concurrency,
                          [] if args.no_ours else (args.ours or ["auto="]),
                          split(args.quants), split(args.formats))
    return args


def write_prompt_files(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """Prompts of exactly --prompt-tokens tokens as text (HTTP rows) and as our tokenizer's
    ids (OpenVINO rows): the same tokens for every engine."""
    from transformers import AutoTokenizer

    from server.engine.model import resolve_source

    model = f"synthetic:{args.preset}"
    text, ids = out / "prompts.jsonl", out / "prompt_ids.jsonl"
    prompts = write_prompts(model, args.models_dir, DATA_DIR / "prompts.jsonl", text,
                            args.prompt_tokens, count=64)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model, args.models_dir))
    ids.write_text("".join(json.dumps({"ids": tokenizer.encode(p)}) + "\n" for p in prompts))
    return text, ids




def run_rows(args: argparse.Namespace, out: Path, commands: Commands, prompts: Path,
             ids: Path) -> list[EngineResult]:
    """Every planned row, one after the other (ours: one server per variant)."""
    index = {row.name: i for i, row in enumerate(args.rows, 1)}
    results: list[EngineResult] = []
    done: set[str] = set()
    for row in args.rows:
        folder = out / f"{index[row.name]:02d}-{row.name}"
        print(f"\n=== engines row {index[row.name]}/{len(args.rows)}: {row.name}", flush=True)
        if row.engine == "ours":
            if row.variant not in done:
                done.add(row.variant)
                results += run_ours(args, [r for r in args.rows if r.engine == "ours"
                                           and r.variant == row.variant], out, commands,
                                    prompts, index)
        elif row.engine == "llama.cpp":
            results.append(run_llama(args, row, folder, commands, prompts))
        else:
            results.append(run_openvino(args, row, folder, commands, ids))
    return results


def report(args: argparse.Namespace, host: dict, versions: dict[str, str],
           results: list[EngineResult]) -> str:
    """table.md: what ran, on which CPU, the table, and the in-process caveat."""
    length = (f"{args.rounds} round{'s' * (args.rounds != 1)}" if args.seconds <= 0
              else f"{args.seconds:g} s")
    return "\n".join([
        f"# Engines, closed loop: synthetic-{args.preset}, {args.prompt_tokens}-token prompts "
        f"-> exactly {args.new_tokens} new tokens, greedy, {length} per stream",
        "",
        f"CPU: {host['cpu_model']} ({host['cores']} cores, ISA {' '.join(host['isa'])}, "
        f"{host['ram_gb']} GB RAM). Threads: {args.threads} for llama.cpp and OpenVINO; our "
        f"server its defaults. Versions: "
        + "; ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
        "",
        render(results),
        "",
        "OpenVINO's rows are **in-process** (no HTTP, no JSON, no client in the loop: "
        "bench/openvino_driver.py steps its ContinuousBatchingPipeline itself), which favours "
        "them; ours and llama.cpp's are served over HTTP (streamed /v1/completions, Locust). "
        "TTFT: from sending (adding) a request to its first token. Memory: ours the Gunicorn "
        "tree's PSS, llama-server's process, OpenVINO's driver process. c = concurrent "
        "streams; refused = 429/503 (OpenVINO: requests its scheduler ignored).",
        ""])


def main(argv: list[str] | None = None) -> int:
    """Plan the rows, run them one after the other, write the table and the records."""
    args = parse_args(argv)
    out = (args.out or RESULTS / f"engines-{utc_stamp()}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== engines folder {out}", flush=True)
    commands = Commands(out / "commands.sh", "engines",
                        sys.argv[1:] if argv is None else list(argv))
    host = host_record()
    prompts, ids = write_prompt_files(args, out)
    results = run_rows(args, out, commands, prompts, ids)
    versions = {"ours": git_commit()}
    if any(r.engine == "llama.cpp" and not r.skipped for r in results):
        versions["llama.cpp"] = llama_version(server_binary(args.llama_dir))
    for result in sorted(out.glob("*-openvino-*/result.json"))[:1]:
        versions.update(json.loads(result.read_text()).get("versions", {}))
    text = report(args, host, versions, results)
    (out / "table.md").write_text(text)
    settings = {k: v for k, v in vars(args).items() if k != "rows"}
    (out / "engines.json").write_text(json.dumps(
        {"host": host, "versions": versions, "settings": settings, "rows": to_json(results)},
        indent=2, default=str) + "\n")
    print("\n" + text + f"\n== engines done: {out / 'table.md'}", flush=True)
    return 0
