"""One request at a time, the engines alternating request by request, with the box's read
rate measured between them (issue 33's closed loop at c = 1, and its weights-read floor).

    python -m bench alternate --preset qwen2.5-1.5b --rounds 8
    python -m bench alternate --preset tiny --rounds 2 --new-tokens 16 --quants ''

Why: a lone request is bound by how fast the CPU streams the weights, and this VM's read
rate moves between ~30 and ~51 GB/s from one few-second stretch to the next
(results/profile/gemm-layout-and-read-rate-zen4.txt). ``bench engines`` runs each engine's
rows one after the other, minutes apart, so at c = 1 it compares stretches as much as
engines. Here both servers are loaded at once and idle but for the one request being
served: each round sends one request to each side (the side going first alternates), and
after every request the bench itself measures the read rate (``--probe-s`` seconds of
summing a 1 GiB float32 buffer on every core, the median rate: bench.roofline's probe). A
request's floor is then the weights' bytes over the rate measured next to it.

Sides: ours (Gunicorn, the server's defaults, ``--workers`` workers, PREFIX_CACHE_ROWS=0)
and llama.cpp's llama-server with each ``--quants`` GGUF (``--parallel 1``,
``cache_prompt`` off). Every request: the same prompt of exactly ``--prompt-tokens``
tokens, exactly ``--new-tokens`` new tokens (greedy, ``ignore_eos``), streamed
/v1/completions; measured: TTFT, the decode time per token (first token to last, over the
tokens after the first) and the closed loop's tok/s (tokens over the request's latency).

Writes results/alternate-<UTC>/: requests.jsonl (one line per request and per probe),
table.md, alternate.json (host, settings, summary) and commands.sh. Never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from bench.command_log import Commands
from bench.engine_runs import add_gunicorn, llama_command, ours_env
from bench.llama_reference import llama_dir, server_binary
from bench.options import add_preset_options
from bench.prompts import write_prompts
from bench.reference_record import host_record, llama_version
from harness.gunicorn_process import GunicornServer
from harness.llama_server import LlamaServer
from harness.provenance import git_commit
from harness.run_folder import RESULTS, utc_stamp
from locustfiles.inputs import DATA_DIR

PROBE_MB = 1024


@dataclass
class Answer:
    """One streamed request as the client saw it (seconds from sending it)."""

    side: str
    round: int
    status: int
    tokens: int
    ttft_s: float
    latency_s: float
    decode_ms_per_token: float  # (last token - first token) / (tokens - 1)

    @property
    def tok_s(self) -> float:
        """The closed loop's rate: tokens over the whole request."""
        return self.tokens / self.latency_s if self.latency_s > 0 else 0.0


@dataclass(frozen=True)
class Side:
    """A server taking requests: its label, URL, key and body fields of its own."""

    name: str
    url: str
    key: str
    extra: dict


def stream_one(side: Side, prompt: str, new_tokens: int, round_: int) -> Answer:
    """Send one greedy streamed completion; time its first and last content chunks."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            **side.extra}
    sent = time.perf_counter()
    first = last = 0.0
    chunks, usage = 0, {}
    with requests.post(f"{side.url}/v1/completions", json=body, stream=True, timeout=900,
                       headers={"Authorization": f"Bearer {side.key}"}) as response:
        for line in response.iter_lines() if response.status_code == 200 else ():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            if any(choice.get("text") for choice in event.get("choices") or ()):
                last = time.perf_counter() - sent
                first = first or last
                chunks += 1
        status = response.status_code
    latency = time.perf_counter() - sent
    tokens = int(usage.get("completion_tokens") or chunks)
    decode = (last - first) / (tokens - 1) * 1000.0 if tokens > 1 else 0.0
    return Answer(side.name, round_, status, tokens, first, latency, decode)


def probe_gb_s(seconds: float) -> float:
    """The box's streaming read rate right now (bench.roofline's probe, median rate)."""
    from bench.roofline import read_bandwidth_gb_s

    return read_bandwidth_gb_s(PROBE_MB, seconds, median=True)


def schedule(sides: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, side) in sending order: every side once a round, the first side rotating so
    that no side always follows the same one."""
    for r in range(rounds):
        k = r % len(sides)
        for name in sides[k:] + sides[:k]:
            yield r, name


def floor_ms(weight_bytes: float, gb_s: float) -> float:
    """ms to read the weights once at ``gb_s``."""
    return weight_bytes / (gb_s * 1e9) * 1000.0


def summarise(answers: list[Answer], probes: list[float], weight_bytes: float,
              ) -> dict[str, dict]:
    """Per side: medians of tok/s, decode ms/token, TTFT and the floor's share of decode
    (the floor from the probe just after each request); against the first side, each
    round's paired ratio of tok/s and of decode speed (median, min, max)."""
    out: dict[str, dict] = {}
    by_side: dict[str, dict[int, Answer]] = {}
    for answer, gb_s in zip(answers, probes, strict=True):
        if answer.status != 200:
            continue
        by_side.setdefault(answer.side, {})[answer.round] = answer
        share = floor_ms(weight_bytes, gb_s) / answer.decode_ms_per_token \
            if answer.decode_ms_per_token > 0 and gb_s > 0 else 0.0
        out.setdefault(answer.side, {"floor_share": []})["floor_share"].append(share)
    base = next(iter(by_side), None)
    for name, rounds in by_side.items():
        row = out[name]
        got = list(rounds.values())
        row.update(requests=len(got),
                   tok_s=statistics.median(a.tok_s for a in got),
                   decode_ms=statistics.median(a.decode_ms_per_token for a in got),
                   ttft_s=statistics.median(a.ttft_s for a in got),
                   floor_share=statistics.median(row["floor_share"]))
        if name != base:
            paired = [r for r in rounds if r in by_side[base]]
            tok = [by_side[base][r].tok_s / rounds[r].tok_s for r in paired]
            dec = [rounds[r].decode_ms_per_token / by_side[base][r].decode_ms_per_token
                   for r in paired]
            row.update(base=base, base_tok_s_ratio=_spread(tok),
                       base_decode_speed_ratio=_spread(dec))
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} \
        if values else {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench alternate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_options(p, "synthetic preset served by both")
    p.add_argument("--rounds", type=int, default=8, help="requests per side")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--probe-s", type=float, default=2.0, help="read-rate probe after each "
                   "request, seconds (0: none)")
    p.add_argument("--quants", default="f16", help="llama.cpp GGUF types, comma-separated "
                   "(empty: ours alone)")
    p.add_argument("--workers", type=int, default=1, help="our Gunicorn workers")
    p.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for our server (repeatable)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="llama-server -t (default: every core we may use)")
    p.add_argument("--out", type=Path, help="default: results/alternate-<UTC timestamp>/")
    p.add_argument("--llama-dir", type=Path, default=llama_dir())
    p.set_defaults(slot_ctx=0)  # engine_runs.llama_command: the slot fits prompt + answer
    args = p.parse_args(argv)
    if args.rounds < 1 or args.new_tokens < 2:
        p.error("give --rounds >= 1 and --new-tokens >= 2")
    args.quants = [q for q in args.quants.split(",") if q]
    return args


def start_ours(args: argparse.Namespace, out: Path, stack: ExitStack,
               commands: Commands) -> Side:
    """Our Gunicorn on the defaults (every prompt read: no prefix cache)."""
    key = secrets.token_urlsafe(32)
    env = ours_env(args, key, "", dict(item.split("=", 1) for item in args.ours_env))
    workdir = out / "ours"
    workdir.mkdir(parents=True, exist_ok=True)
    add_gunicorn(commands, args.workers, env)
    server = stack.enter_context(GunicornServer(workdir, env, args.workers))
    return Side("ours", server.url, key, {})


def start_llama(args: argparse.Namespace, quant: str, out: Path, stack: ExitStack,
                commands: Commands) -> Side | None:
    """llama-server with one slot; None (said on stdout) when this GGUF is not built."""
    command = llama_command(args, quant, 1)
    if isinstance(command, str):
        print(f"skipping llama.cpp {quant}: {command}", flush=True)
        return None
    key = secrets.token_urlsafe(32)
    run_dir = out / f"llama-{quant}"
    run_dir.mkdir(parents=True, exist_ok=True)
    commands.add(command, "LLAMA_API_KEY=<random>")
    server = stack.enter_context(LlamaServer(command, run_dir, key))
    return Side(f"llama.cpp {quant}", server.url, key, {"cache_prompt": False})


def run_rounds(sides: dict[str, Side], prompt: str, args: argparse.Namespace,
               log: Callable[[dict], None]) -> tuple[list[Answer], list[float]]:
    """Warm each side once, then the schedule: each request followed by a probe."""
    for side in sides.values():
        stream_one(side, prompt, min(args.new_tokens, 8), -1)
    answers, probes = [], []
    for round_, name in schedule(list(sides), args.rounds):
        answer = stream_one(sides[name], prompt, args.new_tokens, round_)
        gb_s = probe_gb_s(args.probe_s) if args.probe_s > 0 else 0.0
        answers.append(answer)
        probes.append(gb_s)
        log({**asdict(answer), "tok_s": answer.tok_s, "probe_gb_s": gb_s})
        print(f"round {round_} {name}: {answer.status} {answer.tokens} tokens, "
              f"{answer.tok_s:.2f} tok/s, decode {answer.decode_ms_per_token:.1f} ms/token, "
              f"read rate after it {gb_s:.1f} GB/s", flush=True)
    return answers, probes


def render(args: argparse.Namespace, host: dict, summary: dict[str, dict],
           weight_bytes: float, probes: list[float]) -> str:
    """table.md: the CPU, the per-side medians, the paired ratios and the floor."""
    lines = [f"# One request at a time, alternating: synthetic-{args.preset}, "
             f"{args.prompt_tokens}-token prompt -> exactly {args.new_tokens} tokens, "
             f"{args.rounds} rounds",
             "", f"CPU: {host['cpu_model']} ({host['cores']} cores, ISA "
             f"{' '.join(host['isa'])}). Weights read per token: {weight_bytes / 1e9:.2f} GB "
             f"(2 bytes a parameter)."]
    if probes and max(probes) > 0:
        lines.append(f"Read rate between requests: median {statistics.median(probes):.1f} "
                     f"GB/s, {min(probes):.1f}-{max(probes):.1f}.")
    lines += ["", "| side | requests | tok/s (p50) | decode ms/token (p50) | TTFT p50 s "
              "| floor / decode (p50) | paired tok/s ratio, first side / this (p50, min-max) |",
              "| :-- | --: | --: | --: | --: | --: | :-- |"]
    for name, row in summary.items():
        ratio = row.get("base_tok_s_ratio") or {}
        paired = (f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
                  if ratio else "—")
        lines.append(f"| {name} | {row['requests']} | {row['tok_s']:.2f} | "
                     f"{row['decode_ms']:.1f} | {row['ttft_s']:.2f} | "
                     f"{row['floor_share']:.0%} | {paired} |")
    lines += ["", "floor / decode: the weights' bytes over the read rate measured right after "
              "the request, against the request's decode time per token (100% = at the "
              "floor). The paired ratio divides the first side's tok/s by this side's in the "
              "same round.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Start both servers, alternate requests and probes, write the records and the table."""
    from bench.roofline import model_params

    args = parse_args(argv)
    out = (args.out or RESULTS / f"alternate-{utc_stamp()}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"== alternate folder {out}", flush=True)
    commands = Commands(out / "commands.sh", "alternate",
                        sys.argv[1:] if argv is None else list(argv))
    model = f"synthetic:{args.preset}"
    prompt = write_prompts(model, args.models_dir, DATA_DIR / "prompts.jsonl",
                           out / "prompts.jsonl", args.prompt_tokens, count=1)[0]
    weight_bytes = 2.0 * model_params(model, args.models_dir)
    host = host_record()
    with ExitStack() as stack, open(out / "requests.jsonl", "w") as log:
        sides = {"ours": start_ours(args, out, stack, commands)}
        for quant in args.quants:
            side = start_llama(args, quant, out, stack, commands)
            if side:
                sides[side.name] = side
        answers, probes = run_rounds(
            sides, prompt, args, lambda rec: log.write(json.dumps(rec) + "\n"))
    summary = summarise(answers, probes, weight_bytes)
    versions = {"ours": git_commit()}
    if len(sides) > 1:
        versions["llama.cpp"] = llama_version(server_binary(args.llama_dir))
    text = render(args, host, summary, weight_bytes, probes)
    (out / "table.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out / "alternate.json").write_text(json.dumps(
        {"host": host, "versions": versions, "settings": settings,
         "weight_bytes": weight_bytes, "summary": summary}, indent=2) + "\n")
    print("\n" + text + f"\n== alternate done: {out / 'table.md'}", flush=True)
    return 0
