"""Closed loop of equal lengths on OpenVINO GenAI's ContinuousBatchingPipeline, in-process.

    OV_DIR/venv/bin/python bench/openvino_driver.py --ir IR_DIR --prompts ids.jsonl \
        --concurrency 8 --rounds 2 --new-tokens 128 --threads 2 --out result.json

Run by OpenVINO's own venv (bench/build_openvino_reference.sh), so it imports only the
standard library, ``psutil``, ``openvino`` and ``openvino_genai``; ``python -m bench
engines`` starts it as a subprocess and reads the JSON it writes (one object, keys in ``result``).

``--concurrency`` streams each keep one request in flight: a stream adds its next request
as soon as its last one finished (``--rounds`` requests each, or until ``--seconds`` passed),
all on one thread that calls ``step()``. Prompts are token ids (one JSON list per line, key
``ids``), fed as an ``ov.Tensor``: the same tokens our server's tokenizer made, with no
tokenizer in between. Every answer is exactly ``--new-tokens`` long (``min_new_tokens`` =
``max_new_tokens``, ``ignore_eos``), greedy. TTFT is from ``add_request`` to the end of the
first ``step()`` after which the request has a token to read. Memory is this process's
(RSS peak from getrusage, PSS sampled from /proc/self/smaps_rollup).

No HTTP, no JSON parsing, no client: that favours these rows against the served ones.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

SCHEMA = "openvino-closed-loop/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="openvino_driver.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ir", type=Path, required=True, help="an optimum-cli OpenVINO IR folder")
    p.add_argument("--prompts", type=Path, required=True,
                   help='JSON lines, each {"ids": [token ids]}; request k uses line k mod n')
    p.add_argument("--concurrency", type=int, default=1, help="streams, one request each")
    p.add_argument("--rounds", type=int, default=2, help="requests per stream (0: --seconds)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="instead of rounds: add requests until this many seconds passed")
    p.add_argument("--new-tokens", type=int, default=128, help="exact answer length")
    p.add_argument("--threads", type=int, default=2, help="INFERENCE_NUM_THREADS")
    p.add_argument("--max-seqs", type=int, default=0,
                   help="SchedulerConfig.max_num_seqs (0: --concurrency)")
    p.add_argument("--cache-gb", type=float, default=0.0,
                   help="SchedulerConfig.cache_size in GB (0: sized from config.json for "
                        "max-seqs x (prompt + new tokens), fp16, plus a quarter)")
    p.add_argument("--device", default="CPU")
    p.add_argument("--no-warmup", action="store_true", help="skip the one short warm-up request")
    p.add_argument("--out", type=Path, help="write the result JSON here (default: stdout)")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.new_tokens < 1 or (args.rounds < 1 and args.seconds <= 0):
        p.error("need --concurrency >= 1, --new-tokens >= 1 and --rounds >= 1 or --seconds > 0")
    return args


def read_prompts(path: Path) -> list[list[int]]:
    """The token ids of every non-empty line of ``path``."""
    with open(path, encoding="utf-8") as f:
        prompts = [list(map(int, json.loads(line)["ids"])) for line in f if line.strip()]
    if not prompts:
        raise SystemExit(f"{path}: no prompts")
    return prompts


def cache_gb(ir: Path, seqs: int, tokens: int) -> float:
    """KV cache GB for ``seqs`` rows of ``tokens`` positions (fp16 K and V, +25%, >= 1 GB)."""
    config = json.loads((ir / "config.json").read_text())
    layers, width = config.get("n_layer", 12), config.get("n_embd", 768)
    need = 2 * layers * width * 2 * seqs * tokens * 1.25 / 2**30
    return float(max(1, math.ceil(need)))


def memory_mb() -> dict[str, float]:
    """This process's RSS and PSS now (psutil, MB) and its peak RSS (getrusage)."""
    fields = {}
    try:
        full = psutil.Process().memory_full_info()
        fields = {"rss_mb": full.rss / 2**20, "pss_mb": full.pss / 2**20}
    except (psutil.Error, AttributeError):  # no PSS on this platform
        pass
    fields["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return fields


@dataclass
class Result:
    """What one closed loop did; times in seconds, memory in MB."""

    schema: str
    engine: str
    ir: str
    concurrency: int
    rounds: int
    seconds: float
    prompt_tokens: int
    new_tokens: int
    threads: int
    requests_served: int = 0
    requests_refused: int = 0
    output_tokens: int = 0
    short_answers: int = 0  # served with fewer than new_tokens tokens
    elapsed_s: float = 0.0
    output_tokens_per_s: float = 0.0
    ttft_p50_s: float | None = None
    latency_p50_s: float | None = None
    load_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    scheduler: str = ""
    versions: dict[str, str] = field(default_factory=dict)


class Loop:
    """The closed loop: ``concurrency`` streams over one pipeline stepped on this thread."""

    def __init__(self, pipe, args: argparse.Namespace, prompts: list[list[int]], ov, genai):
        self.pipe, self.args, self.prompts, self.ov, self.genai = pipe, args, prompts, ov, genai
        self.config = genai.GenerationConfig()
        self.config.max_new_tokens = self.config.min_new_tokens = args.new_tokens
        self.config.ignore_eos = True
        self.config.do_sample = False
        self.next_id = 0
        self.active: dict[int, dict] = {}
        self.ttft_s: list[float] = []
        self.latency_s: list[float] = []
        self.peak_pss_mb = 0.0

    def add(self, stream: int, sent: int) -> None:
        """Add stream ``stream``'s request number ``sent`` (its prompt: the next line)."""
        ids = self.prompts[self.next_id % len(self.prompts)]
        tensor = self.ov.Tensor(self.ov.Type.i64, self.ov.Shape([1, len(ids)]))
        tensor.data[0, :] = ids
        handle = self.pipe.add_request(self.next_id, tensor, self.config)
        self.active[self.next_id] = {"stream": stream, "sent": sent, "handle": handle,
                                     "start": time.perf_counter(), "first": None}
        self.next_id += 1

    def more(self, sent: int, began: float) -> bool:
        """Whether a stream that sent ``sent`` requests sends another."""
        if self.args.seconds > 0:
            return time.perf_counter() - began < self.args.seconds
        return sent < self.args.rounds

    def run(self, result: Result) -> None:
        """Step until every stream is done; fill ``result``'s counts and times."""
        status = self.genai.py_openvino_genai.GenerationStatus
        began = time.perf_counter()
        for stream in range(self.args.concurrency):
            self.add(stream, 1)
        last_sample = 0.0
        while self.active:  # not a wait: each pass runs one step of the pipeline
            self.pipe.step()
            now = time.perf_counter()
            for rid, req in list(self.active.items()):
                handle = req["handle"]
                if req["first"] is None and handle.can_read():
                    req["first"] = now
                state = handle.get_status()
                if state == status.RUNNING:
                    continue
                del self.active[rid]
                if state == status.FINISHED:
                    tokens = sum(len(o.generated_ids) for o in handle.read_all())
                    result.requests_served += 1
                    result.output_tokens += tokens
                    result.short_answers += tokens < self.args.new_tokens
                    self.ttft_s.append((req["first"] or now) - req["start"])
                    self.latency_s.append(now - req["start"])
                else:  # IGNORED (no room), CANCEL, STOP
                    result.requests_refused += 1
                if self.more(req["sent"], began):
                    self.add(req["stream"], req["sent"] + 1)
            if now - last_sample >= 0.5:
                self.peak_pss_mb = max(self.peak_pss_mb, memory_mb().get("pss_mb", 0.0))
                last_sample = now
        result.elapsed_s = time.perf_counter() - began
        result.output_tokens_per_s = result.output_tokens / result.elapsed_s
        result.ttft_p50_s = statistics.median(self.ttft_s) if self.ttft_s else None
        result.latency_p50_s = statistics.median(self.latency_s) if self.latency_s else None


def warm_up(pipe, prompt: list[int], ov, genai) -> None:
    """One short request through ``generate`` (compiles and allocates before the clock)."""
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = 4
    config.ignore_eos = True
    tensor = ov.Tensor(ov.Type.i64, ov.Shape([1, len(prompt)]))
    tensor.data[0, :] = prompt
    pipe.generate([tensor], [config])


def run(args: argparse.Namespace) -> Result:
    """Build the pipeline, warm it up, run the closed loop; the result."""
    import openvino as ov
    import openvino_genai as genai

    prompts = read_prompts(args.prompts)
    seqs = args.max_seqs or args.concurrency
    scheduler = genai.SchedulerConfig()
    scheduler.max_num_seqs = seqs
    scheduler.cache_size = int(args.cache_gb or cache_gb(
        args.ir, seqs, len(prompts[0]) + args.new_tokens))
    scheduler.enable_prefix_caching = False  # every prompt prefilled in full, as elsewhere
    result = Result(SCHEMA, "openvino", str(args.ir), args.concurrency, args.rounds,
                    args.seconds, len(prompts[0]), args.new_tokens, args.threads,
                    scheduler=" ".join(scheduler.to_string().split()),
                    versions={"openvino_genai": genai.__version__,
                              "openvino": ov.get_version()})
    started = time.perf_counter()
    pipe = genai.ContinuousBatchingPipeline(
        str(args.ir), scheduler, args.device, {"INFERENCE_NUM_THREADS": args.threads})
    if not args.no_warmup:
        warm_up(pipe, prompts[0], ov, genai)
    result.load_s = time.perf_counter() - started
    loop = Loop(pipe, args, prompts, ov, genai)
    loop.run(result)
    memory = memory_mb()
    result.peak_rss_mb = memory["peak_rss_mb"]
    result.peak_pss_mb = max(loop.peak_pss_mb, memory.get("pss_mb", 0.0))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run one closed loop and write its result JSON."""
    args = parse_args(argv)
    text = json.dumps(asdict(run(args)), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
