"""Our load generator against guidellm 0.8.1 (issue 32): the same server, rate and request shape,
one after the other, and whether they agree on TTFT p50 and output tok/s.

    python -m bench crosscheck --preset gpt2 --rate 0.4 --duration 180
    python -m bench crosscheck --preset tiny --rate 1 --duration 20 --profile poisson
    CROSSCHECK_API_KEY=... python -m bench crosscheck --url http://127.0.0.1:8000 --preset gpt2

Starts one Gunicorn (synthetic:<preset>, --workers, IGNORE_EOS=1, no prefix cache, no rate
limits) or uses the running server at --url (its key in $CROSSCHECK_API_KEY; the preset then
only names the tokenizer that cuts the prompts). Against it, in turn:

1. ours: Locust's streamed fixed-length user, open-loop ``--arrival PROFILE --rate R`` for
   --duration s, prompts of exactly --prompt-tokens tokens, --output-tokens new tokens;
2. guidellm: ``guidellm run`` with ``--profile kind=PROFILE,rate=R``, ``max_duration``, its
   synthetic prompts of the same length and the same answer length (bench/crosscheck_runs.py).

How each figure is computed, the same way for both: bench/crosscheck_compare.py. Prefer
``--profile constant``: both sides then send the same number of requests, while two Poisson
schedules drawn by different generators differ by about 1/sqrt(rate x duration) in count.

Writes results/crosscheck-<UTC>/: ours/ (the run folder: requests.csv, run.json ...),
guidellm/ (guidellm.json, guidellm.log), prompts.jsonl, comparison.json, comparison.md and
commands.sh. Measure on a quiet box; never in CI.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.command_log import Commands
from bench.crosscheck_compare import NAN, Side, compare, render, summarize, to_json
from bench.crosscheck_read import guidellm_headline, read_guidellm, read_ours
from bench.crosscheck_runs import Load, Target, run_guidellm, run_ours, served_model
from bench.options import add_preset_options
from bench.prompts import write_prompts
from bench.reference_record import host_record
from harness.gunicorn_process import GunicornServer
from harness.provenance import git_commit
from harness.run_folder import RESULTS, utc_stamp
from locustfiles.box_load import BoxWindow
from locustfiles.inputs import DATA_DIR

GUIDELLM = Path(os.environ.get("GUIDELLM_BIN", "/work/cache/guidellm-venv/bin/guidellm"))
GUIDELLM_VERSION = "0.8.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: the issue's shape on synthetic:gpt2, a quiet box's run)."""
    p = argparse.ArgumentParser(prog="python -m bench crosscheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_options(p, "synthetic preset served (and whose tokenizer cuts the prompts)")
    p.add_argument("--profile", choices=["constant", "poisson"], default="constant",
                   help="arrival process of both sides (default constant: see above)")
    p.add_argument("--rate", type=float, default=0.4, help="requests per second, both sides")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load per side")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="arrival schedule seed (both sides)")
    p.add_argument("--pool", type=int, default=32, help="our open-loop pool (-u): the most "
                   "requests in flight; guidellm's is unbounded")
    # Off by default: guidellm samples no memory, and on the 2-core Zen 3 our 1 s sampler
    # (the server tree's PSS from smaps_rollup) cost the client 6.5 of 11.3 CPU seconds
    # and moved our TTFT p50 to 1.23x guidellm's; off, 0.93x (results/load-generation).
    p.add_argument("--memory-sample-s", type=float, default=0.0, help="our suite's server "
                   "memory sampling (memory.csv; reads /proc each interval); default 0: off, "
                   "as guidellm's side samples nothing")
    p.add_argument("--workers", type=int, default=1, help="our server's Gunicorn workers")
    p.add_argument("--guidellm-workers", type=int, default=1, help="guidellm's worker "
                   "processes (GUIDELLM__MAX_WORKER_PROCESSES; its default 10 would crowd a "
                   "2-core box); ours runs one Locust process")
    p.add_argument("--tolerance", type=float, default=0.10, help="agreement band (0.10: 10%%)")
    p.add_argument("--url", default="", help="a running server instead of starting one "
                   "(its API key in $CROSSCHECK_API_KEY)")
    p.add_argument("--guidellm", type=Path, default=GUIDELLM, help="the guidellm executable")
    p.add_argument("--out", type=Path, help="default: results/crosscheck-<UTC timestamp>/")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        p.error("--rate and --duration must be > 0")
    if not args.guidellm.is_file():
        p.error(f"no guidellm at {args.guidellm}: install guidellm=={GUIDELLM_VERSION} in "
                f"its own venv, or give --guidellm / $GUIDELLM_BIN")
    if args.url and not os.environ.get("CROSSCHECK_API_KEY"):
        p.error("--url needs the server's API key in $CROSSCHECK_API_KEY")
    return args


@contextmanager
def target(args: argparse.Namespace, out: Path, commands: Commands) -> Iterator[Target]:
    """The server both sides load: the one at --url, or a Gunicorn started (and stopped) here."""
    if args.url:
        key = os.environ["CROSSCHECK_API_KEY"]
        yield Target(args.url.rstrip("/"), key, served_model(args.url.rstrip("/"), key))
        return
    key = secrets.token_urlsafe(32)
    env = {"MODEL": f"synthetic:{args.preset}", "MODELS_DIR": args.models_dir,
           "IGNORE_EOS": "1", "API_KEYS": key, "REQUEST_LOG": "", "GUNICORN_ACCESSLOG": "",
           "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "PREFIX_CACHE_ROWS": "0"}
    (out / "server").mkdir(parents=True, exist_ok=True)
    commands.add(["gunicorn", "-c", "gunicorn.conf.py", "--workers", str(args.workers)],
                 " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "API_KEYS"))
    with GunicornServer(out / "server", env, args.workers) as server:
        yield Target(server.url, key, served_model(server.url, key), server.pidfile,
                     server.operator_key)


def settings(args: argparse.Namespace, model: str) -> dict:
    """comparison.json's settings: what ran, where, on which commit."""
    load = {k: v for k, v in vars(args).items() if k not in ("guidellm", "out")}
    return {**load, "model": model, "guidellm": str(args.guidellm),
            "guidellm_version": GUIDELLM_VERSION, "git_commit": git_commit(),
            "host": host_record()}


def run_sides(args: argparse.Namespace, out: Path, commands: Commands,
              prompts: Path) -> tuple[Side, Side, str]:
    """Ours, then guidellm, against one server; each side summed up, and the model served."""
    tokenizer = str(Path(args.models_dir, f"synthetic-{args.preset}").resolve())
    load = Load(args.profile, args.rate, args.duration, args.prompt_tokens,
                args.output_tokens, args.seed)
    with target(args, out, commands) as server:
        box, reaped = BoxWindow(), reaped_cpu_s()
        ours_dir = run_ours(load, server, out / "ours", prompts, args.pool,
                            args.memory_sample_s, commands)
        ours_box = {**box_shares(box, args), "client_cpu_s": reaped_cpu_s() - reaped}
        box, reaped = BoxWindow(), reaped_cpu_s()
        guidellm_json = run_guidellm(args.guidellm, load, server, tokenizer, out / "guidellm",
                                     args.guidellm_workers, commands)
        theirs_box = {**box_shares(box, args), "client_cpu_s": reaped_cpu_s() - reaped}
    ours = summarize("ours (Locust)", *read_ours(ours_dir), **ours_box)
    theirs = summarize(f"guidellm {GUIDELLM_VERSION}", *read_guidellm(guidellm_json),
                       **guidellm_headline(guidellm_json), **theirs_box)
    return ours, theirs, server.model


def reaped_cpu_s() -> float:
    """CPU seconds of this process's children that ended and were waited for: a side's
    load generator once it ended (our server is still running, so not in it)."""
    times = psutil.Process().cpu_times()
    return times.children_user + times.children_system


def box_shares(box: BoxWindow, args: argparse.Namespace) -> dict[str, float]:
    """The side's busy-box shares; other CPU is not measured for a server given by --url
    (it is outside this command's process tree, so it would count as other)."""
    shares = box.shares()
    if shares is None:
        return {}
    return {"other_cpu_share": NAN if args.url else shares.other_cpu_share,
            "steal_share": shares.steal_share}


def main(argv: list[str] | None = None) -> int:
    """Run ours, then guidellm, against one server; write the comparison."""
    args = parse_args(argv)
    out = (args.out or RESULTS / f"crosscheck-{utc_stamp()}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== crosscheck folder {out}", flush=True)
    commands = Commands(out / "commands.sh", "crosscheck",
                        sys.argv[1:] if argv is None else list(argv))
    prompts = out / "prompts.jsonl"
    write_prompts(f"synthetic:{args.preset}", args.models_dir, DATA_DIR / "prompts.jsonl",
                  prompts, args.prompt_tokens, count=64)
    ours, theirs, model = run_sides(args, out, commands, prompts)
    result = compare(ours, theirs, args.tolerance)
    (out / "comparison.json").write_text(to_json(settings(args, model), ours, theirs, result))
    text = (f"# Cross-check: ours vs guidellm {GUIDELLM_VERSION}, {model}, "
            f"{args.profile} {args.rate:g} req/s for {args.duration:g} s, "
            f"{args.prompt_tokens} -> {args.output_tokens} tokens, streamed\n\n"
            + render(ours, theirs, result) + "\nHow each figure is computed: "
            "bench/crosscheck_compare.py; the commands: commands.sh.\n")
    (out / "comparison.md").write_text(text)
    print("\n" + text + f"== crosscheck done: {out / 'comparison.md'}", flush=True)
    return 0
